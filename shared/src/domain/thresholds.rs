//! Thresholds people set (the `thresholds` bucket), and how a product's setting falls
//! back to the default's, then to the built-in value.

use serde::{Deserialize, Serialize};

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

#[cfg(test)]
mod tests {
    use super::*;

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
