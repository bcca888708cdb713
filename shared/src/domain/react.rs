//! What the watchers decide, purely: given the last alert on a product's subject and what
//! the views say of the product now, the alert to announce, if any.
//!
//! Every rule is edge-triggered: it announces a change of state, never a state again, so
//! an update that changes nothing that matters says nothing. Nothing announced yet (or a
//! last alert that cannot be read) counts as the quiet state: `stock.recovered`, no band,
//! no forecast. The rules need every value they judge: a watcher that does not know a
//! product's stock does not call them.

use super::alert::{
    Alert, AlertBody, Basis, LastAlert, LowStockPayload, StockoutPayload, VelocityPayload,
};
use super::stock::StockView;
use super::velocity::{days_of_cover, Band, BandLimits, VelocityView};

/// `stock.low` when the product is below `low_stock_below` and the last alert was not
/// `stock.low` (so a product first seen below is announced once); `stock.recovered` when
/// it is back at or above it after a `stock.low`.
pub fn react_low_stock(
    last: Option<&LastAlert>,
    stock: &StockView,
    low_stock_below: i64,
) -> Option<Alert> {
    let low = stock.on_hand < low_stock_below;
    if low == last.is_some_and(LastAlert::says_low) {
        return None;
    }
    let payload = LowStockPayload {
        warehouse: stock.warehouse.clone(),
        sku: stock.sku.clone(),
        on_hand: stock.on_hand,
        threshold: low_stock_below,
    };
    Some(Alert {
        body: if low {
            AlertBody::Low(payload)
        } else {
            AlertBody::Recovered(payload)
        },
        basis: Basis::Stock {
            stock_seq: stock.last_seq,
        },
        follows: follows(last),
    })
}

/// `sales.velocity` when the product's band (by units sold in the last day, and whether
/// it has stock) differs from the last one announced; the first has no previous band.
pub fn react_band(
    last: Option<&LastAlert>,
    velocity: &VelocityView,
    stock: &StockView,
    limits: BandLimits,
) -> Option<Alert> {
    let band = Band::of(velocity.sold_last_day, stock.on_hand, limits);
    let previous_band = last.and_then(LastAlert::band);
    if previous_band == Some(band) {
        return None;
    }
    Some(Alert {
        body: AlertBody::Velocity(VelocityPayload {
            warehouse: velocity.warehouse.clone(),
            sku: velocity.sku.clone(),
            band,
            previous_band,
            sold_last_hour: velocity.sold_last_hour,
            sold_last_day: velocity.sold_last_day,
            sold_last_week: velocity.sold_last_week,
        }),
        basis: basis(velocity, stock),
        follows: follows(last),
    })
}

/// `stock.stockout_forecast` when the days of cover (on hand / units per day) are below
/// `stockout_days` and the last alert was not a forecast; `stock.stockout_cleared` after
/// a forecast when they are back at or above it, or nothing sells. The payload's days of
/// cover are rounded to 2 decimals; the comparison uses them unrounded.
pub fn react_stockout(
    last: Option<&LastAlert>,
    velocity: &VelocityView,
    stock: &StockView,
    stockout_days: f64,
) -> Option<Alert> {
    let days = days_of_cover(stock.on_hand, velocity.units_per_day);
    let short = days.is_some_and(|d| d < stockout_days);
    if short == last.is_some_and(LastAlert::says_stockout) {
        return None;
    }
    let payload = StockoutPayload {
        warehouse: velocity.warehouse.clone(),
        sku: velocity.sku.clone(),
        on_hand: stock.on_hand,
        units_per_day: velocity.units_per_day,
        days_of_cover: days.map(|d| (d * 100.0).round() / 100.0),
    };
    Some(Alert {
        body: if short {
            AlertBody::StockoutForecast(payload)
        } else {
            AlertBody::StockoutCleared(payload)
        },
        basis: basis(velocity, stock),
        follows: follows(last),
    })
}

fn follows(last: Option<&LastAlert>) -> u64 {
    last.map_or(0, |l| l.sequence)
}

fn basis(velocity: &VelocityView, stock: &StockView) -> Basis {
    Basis::VelocityAndStock {
        velocity_seq: velocity.last_seq,
        stock_seq: stock.last_seq,
        as_of_ms: velocity.as_of_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Sku, WarehouseId};

    const T: i64 = 1_795_176_000_000; // 2026-11-20T12:00:00Z

    fn stock(on_hand: i64, last_seq: u64) -> StockView {
        let mut view = StockView::new(
            WarehouseId::parse("ams1").unwrap(),
            Sku::parse("apple").unwrap(),
        );
        view.on_hand = on_hand;
        view.last_seq = last_seq;
        view
    }

    fn velocity(sold_last_day: u64, units_per_day: f64) -> VelocityView {
        let mut view = VelocityView::new(
            WarehouseId::parse("ams1").unwrap(),
            Sku::parse("apple").unwrap(),
        );
        view.sold_last_day = sold_last_day;
        view.sold_last_week = sold_last_day * 7;
        view.units_per_day = units_per_day;
        view.last_seq = 40;
        view.as_of_ms = T;
        view
    }

    /// Runs a rule over successive values, as a watcher does: each alert it announces is
    /// stored (at sequences 1, 2, ...) and becomes the last one. Returns what was announced.
    fn announced<V>(
        values: &[V],
        rule: impl Fn(Option<&LastAlert>, &V) -> Option<Alert>,
    ) -> Vec<Alert> {
        let mut last: Option<LastAlert> = None;
        let mut said = Vec::new();
        for value in values {
            if let Some(alert) = rule(last.as_ref(), value) {
                said.push(alert.clone());
                last = Some(alert.stored_at(said.len() as u64));
            }
        }
        said
    }

    fn types(alerts: &[Alert]) -> Vec<&'static str> {
        alerts.iter().map(Alert::event_type).collect()
    }

    #[test]
    fn low_stock_crossing_down_then_up_announces_twice() {
        // Given threshold 10, when stock goes 12 -> 11 -> 9 -> 8 -> 7 -> 17,
        let values: Vec<StockView> = [12, 11, 9, 8, 7, 17]
            .iter()
            .zip(1..)
            .map(|(&n, seq)| stock(n, seq))
            .collect();
        let said = announced(&values, |last, s| react_low_stock(last, s, 10));
        // then it is low once at 9 and recovered once at 17.
        assert_eq!(types(&said), ["stock.low", "stock.recovered"]);
        assert_eq!(said[0].msg_id(), "stock.low:ams1.apple:3:0");
        assert_eq!(said[1].msg_id(), "stock.recovered:ams1.apple:6:1");
        let AlertBody::Recovered(p) = &said[1].body else {
            panic!("{said:?}")
        };
        assert_eq!((p.on_hand, p.threshold), (17, 10));
    }

    #[test]
    fn exactly_at_the_threshold_is_not_low() {
        let was_low = react_low_stock(None, &stock(3, 1), 10).map(|a| a.stored_at(4));
        assert_eq!(react_low_stock(None, &stock(10, 2), 10), None);
        let back = react_low_stock(was_low.as_ref(), &stock(10, 2), 10);
        assert_eq!(back.map(|a| a.event_type()), Some("stock.recovered"));
    }

    #[test]
    fn first_seen_below_and_negative_stock_are_low() {
        let first = react_low_stock(None, &stock(3, 1), 10);
        assert_eq!(first.as_ref().map(Alert::event_type), Some("stock.low"));
        let negative = react_low_stock(None, &stock(-4, 2), 1);
        assert_eq!(negative.as_ref().map(Alert::event_type), Some("stock.low"));
        let last = negative.map(|a| a.stored_at(9));
        assert_eq!(react_low_stock(last.as_ref(), &stock(-5, 3), 1), None);
    }

    #[test]
    fn a_last_alert_that_cannot_be_read_counts_as_nothing_said_but_is_followed() {
        let unreadable = LastAlert {
            sequence: 8,
            said: None,
        };
        let alert = react_low_stock(Some(&unreadable), &stock(3, 5), 10).unwrap();
        assert_eq!(alert.follows, 8);
        assert_eq!(alert.msg_id(), "stock.low:ams1.apple:5:8");
        assert_eq!(
            react_stockout(Some(&unreadable), &velocity(1, 1.0), &stock(30, 5), 3.0),
            None
        );
    }

    #[test]
    fn a_band_is_announced_when_it_changes() {
        let limits = BandLimits::default();
        // Given 1000 on hand, when the day's sales go 20 -> 25 -> 60 -> 0,
        let values: Vec<(VelocityView, StockView)> = [20, 25, 60, 0]
            .iter()
            .map(|&n| (velocity(n, n as f64), stock(1000, 1)))
            .collect();
        let said = announced(&values, |last, (v, s)| react_band(last, v, s, limits));
        // then normal (first: no previous band), fast, stalled.
        let bands: Vec<(Option<Band>, Band)> = said
            .iter()
            .map(|a| match &a.body {
                AlertBody::Velocity(p) => (p.previous_band, p.band),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            bands,
            [
                (None, Band::Normal),
                (Some(Band::Normal), Band::Fast),
                (Some(Band::Fast), Band::Stalled)
            ]
        );
        assert_eq!(
            said[0].msg_id(),
            format!("sales.velocity:ams1.apple:40:1:{T}:0")
        );
        assert_eq!(said[2].follows, 2);
    }

    #[test]
    fn a_stockout_is_forecast_once_and_cleared_once() {
        // Given stockout_days 3 and 20 sold a day, when stock goes 30 (1.5 days) -> 20 (1)
        // -> 60 (3 days) -> 40 (2) -> 40 with nothing selling,
        let values = [
            (velocity(20, 20.0), stock(30, 1)),
            (velocity(20, 20.0), stock(20, 2)),
            (velocity(20, 20.0), stock(60, 3)),
            (velocity(20, 20.0), stock(40, 4)),
            (velocity(0, 0.0), stock(40, 4)),
        ];
        let said = announced(&values, |last, (v, s)| react_stockout(last, v, s, 3.0));
        // then forecast, cleared, forecast, cleared (days of cover unknown).
        assert_eq!(
            types(&said),
            [
                "stock.stockout_forecast",
                "stock.stockout_cleared",
                "stock.stockout_forecast",
                "stock.stockout_cleared"
            ]
        );
        let cover: Vec<Option<f64>> = said
            .iter()
            .map(|a| match &a.body {
                AlertBody::StockoutForecast(p) | AlertBody::StockoutCleared(p) => p.days_of_cover,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(cover, [Some(1.5), Some(3.0), Some(2.0), None]);
        assert_eq!(
            said[0].msg_id(),
            format!("stock.stockout_forecast:ams1.apple:40:1:{T}:0")
        );
        // Nothing selling and no forecast before: nothing to say.
        assert_eq!(
            react_stockout(None, &velocity(0, 0.0), &stock(5, 1), 3.0),
            None
        );
    }

    #[test]
    fn days_of_cover_are_compared_unrounded_and_announced_rounded() {
        // 2999 / 1000 = 2.999 days: short of 3, shown as 3.0.
        let alert = react_stockout(None, &velocity(1000, 1000.0), &stock(2999, 1), 3.0).unwrap();
        let AlertBody::StockoutForecast(p) = &alert.body else {
            panic!("{alert:?}")
        };
        assert_eq!(p.days_of_cover, Some(3.0));
        // Negative stock has no cover at all.
        let alert = react_stockout(None, &velocity(2, 2.0), &stock(-3, 1), 3.0).unwrap();
        let AlertBody::StockoutForecast(p) = &alert.body else {
            panic!("{alert:?}")
        };
        assert_eq!((p.on_hand, p.days_of_cover), (-3, Some(0.0)));
    }
}
