//! Thresholds people set, and the pure decision of the low-stock watcher: given what was
//! last announced for a product and what it holds now, what (if anything) to announce.

use serde::{Deserialize, Serialize};

use super::ids::{Sku, WarehouseId};

/// Low-stock threshold when none is set.
pub const DEFAULT_LOW_STOCK_BELOW: i64 = 10;
/// Stockout forecast horizon when none is set, in days.
pub const DEFAULT_STOCKOUT_DAYS: f64 = 3.0;

/// The value of a key of the `thresholds` bucket (`default` or `{warehouse}.{sku}`).
/// A field left out falls back to the next level (`default`, then the built-in value).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_stock_below: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stockout_days: Option<f64>,
}

impl Thresholds {
    /// This product's setting, else the default's, else the built-in value.
    pub fn low_stock_below(product: Option<&Thresholds>, default: Option<&Thresholds>) -> i64 {
        product
            .and_then(|t| t.low_stock_below)
            .or_else(|| default.and_then(|t| t.low_stock_below))
            .unwrap_or(DEFAULT_LOW_STOCK_BELOW)
    }

    /// This product's setting, else the default's, else the built-in value.
    pub fn stockout_days(product: Option<&Thresholds>, default: Option<&Thresholds>) -> f64 {
        product
            .and_then(|t| t.stockout_days)
            .or_else(|| default.and_then(|t| t.stockout_days))
            .unwrap_or(DEFAULT_STOCKOUT_DAYS)
    }
}

/// What the last low-stock alert of a product said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LowStock {
    /// `stock.low`: below the threshold.
    Low,
    /// `stock.recovered` (or nothing announced yet): at or above it.
    Fine,
}

/// A low-stock alert to announce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LowStockAlert {
    pub warehouse: WarehouseId,
    pub sku: Sku,
    pub on_hand: i64,
    pub threshold: i64,
}

impl LowStockAlert {
    pub const LOW: &'static str = "stock.low";
    pub const RECOVERED: &'static str = "stock.recovered";
}

/// Edge-triggered: announce `stock.low` when the product is below the threshold and the
/// last announcement was not `stock.low`, and `stock.recovered` when it is back at or above
/// it after a `stock.low`. Nothing announced yet counts as fine, so a product first seen
/// below its threshold is announced once. Returns the alert's type and the new state.
pub fn react(last: LowStock, on_hand: i64, threshold: i64) -> Option<(&'static str, LowStock)> {
    match (last, on_hand < threshold) {
        (LowStock::Fine, true) => Some((LowStockAlert::LOW, LowStock::Low)),
        (LowStock::Low, false) => Some((LowStockAlert::RECOVERED, LowStock::Fine)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crossing_down_then_up_announces_twice() {
        // Threshold 10: 12 -> 11 -> 9 (low) -> 8 -> 7 -> 17 (recovered).
        let mut state = LowStock::Fine;
        let mut said = Vec::new();
        for on_hand in [12, 11, 9, 8, 7, 17] {
            if let Some((kind, next)) = react(state, on_hand, 10) {
                said.push((kind, on_hand));
                state = next;
            }
        }
        assert_eq!(said, vec![("stock.low", 9), ("stock.recovered", 17)]);
    }

    #[test]
    fn exactly_at_the_threshold_is_not_low() {
        assert_eq!(react(LowStock::Fine, 10, 10), None);
        assert_eq!(
            react(LowStock::Low, 10, 10),
            Some(("stock.recovered", LowStock::Fine))
        );
    }

    #[test]
    fn first_seen_below_and_negative_stock_are_low() {
        assert_eq!(
            react(LowStock::Fine, 3, 10),
            Some(("stock.low", LowStock::Low))
        );
        assert_eq!(
            react(LowStock::Fine, -4, 1),
            Some(("stock.low", LowStock::Low))
        );
        assert_eq!(react(LowStock::Low, -4, 1), None);
    }

    #[test]
    fn thresholds_fall_back_level_by_level() {
        let product = Thresholds {
            low_stock_below: Some(5),
            stockout_days: None,
        };
        let default = Thresholds {
            low_stock_below: Some(20),
            stockout_days: Some(7.0),
        };
        assert_eq!(
            Thresholds::low_stock_below(Some(&product), Some(&default)),
            5
        );
        assert_eq!(
            Thresholds::stockout_days(Some(&product), Some(&default)),
            7.0
        );
        assert_eq!(Thresholds::low_stock_below(None, Some(&default)), 20);
        assert_eq!(Thresholds::low_stock_below(None, None), 10);
        assert_eq!(Thresholds::stockout_days(None, None), 3.0);
        let json: Thresholds = serde_json::from_str(r#"{"low_stock_below":5}"#).unwrap();
        assert_eq!(json, product);
    }
}
