//! Sales velocity of one product: units sold in the last hour, day and week by EVENT time,
//! kept in time buckets that slide as the clock moves.
//!
//! Resolution: the hour is counted in minute buckets (so "the last hour" is the current
//! minute and the 59 before it), the day and the week in hour buckets (the current hour
//! and the 23, or 167, before it). Only non-empty buckets are kept, and nothing older than
//! a week: at most 60 + 168 numbers per product. The buckets are part of the value, so a
//! restarted projector goes on from them. The clock (`now_ms`) is passed in.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::event::Event;
use super::ids::{Sku, WarehouseId};

pub const MINUTE_MS: i64 = 60_000;
pub const HOUR_MS: i64 = 60 * MINUTE_MS;
pub const DAY_MS: i64 = 24 * HOUR_MS;
pub const WEEK_MS: i64 = 7 * DAY_MS;

/// The value of a key of the `sales_velocity` view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VelocityView {
    pub warehouse: WarehouseId,
    pub sku: Sku,
    pub sold_last_hour: u64,
    pub sold_last_day: u64,
    pub sold_last_week: u64,
    /// The week's average: `sold_last_week / 7`.
    pub units_per_day: f64,
    /// The clock time these numbers are for.
    pub as_of_ms: i64,
    /// Stream sequence of the last sale applied.
    pub last_seq: u64,
    /// Units per minute (start of the minute, ms) within the last hour.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub minutes: BTreeMap<i64, u64>,
    /// Units per hour (start of the hour, ms) within the last week.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hours: BTreeMap<i64, u64>,
}

fn floor(ms: i64, unit: i64) -> i64 {
    ms.div_euclid(unit) * unit
}

impl VelocityView {
    pub fn new(warehouse: WarehouseId, sku: Sku) -> Self {
        Self {
            warehouse,
            sku,
            sold_last_hour: 0,
            sold_last_day: 0,
            sold_last_week: 0,
            units_per_day: 0.0,
            as_of_ms: 0,
            last_seq: 0,
            minutes: BTreeMap::new(),
            hours: BTreeMap::new(),
        }
    }

    /// Counts a sale stored at `seq` that happened at `at_ms`, unless this view already
    /// holds it; other events are not sales and change nothing. A sale older than a week
    /// (by `now_ms`) counts in no window. Returns whether the view changed.
    pub fn apply(&mut self, event: &Event, seq: u64, at_ms: i64, now_ms: i64) -> bool {
        if seq <= self.last_seq {
            return false;
        }
        if let Event::Sold { quantity, .. } = event {
            let units = u64::from(quantity.get());
            if at_ms > floor(now_ms, HOUR_MS) - WEEK_MS {
                *self.hours.entry(floor(at_ms, HOUR_MS)).or_default() += units;
            }
            if at_ms > floor(now_ms, MINUTE_MS) - HOUR_MS {
                *self.minutes.entry(floor(at_ms, MINUTE_MS)).or_default() += units;
            }
        }
        self.last_seq = seq;
        self.slide(now_ms);
        true
    }

    /// Moves the windows to `now_ms`: drops buckets that left them and recounts. Returns
    /// whether any of the numbers changed (`as_of_ms` moves only with them).
    pub fn tick(&mut self, now_ms: i64) -> bool {
        let before = (self.sold_last_hour, self.sold_last_day, self.sold_last_week);
        let mut next = self.clone();
        next.slide(now_ms);
        if (next.sold_last_hour, next.sold_last_day, next.sold_last_week) == before {
            // Still drop what left the windows, without a write for it.
            self.minutes = next.minutes;
            self.hours = next.hours;
            return false;
        }
        *self = next;
        true
    }

    fn slide(&mut self, now_ms: i64) {
        let hour_start = floor(now_ms, MINUTE_MS) - HOUR_MS;
        let week_start = floor(now_ms, HOUR_MS) - WEEK_MS;
        let day_start = floor(now_ms, HOUR_MS) - DAY_MS;
        self.minutes.retain(|&m, _| m > hour_start);
        self.hours.retain(|&h, _| h > week_start);
        self.sold_last_hour = self.minutes.values().sum();
        self.sold_last_day = self.hours.range(day_start + 1..).map(|(_, u)| u).sum();
        self.sold_last_week = self.hours.values().sum();
        self.units_per_day = self.sold_last_week as f64 / 7.0;
        self.as_of_ms = now_ms;
    }
}

/// How fast a product sells, by units sold in the last day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Band {
    /// Nothing sold in a day while there is stock.
    Stalled,
    Slow,
    Normal,
    Fast,
}

/// Where the bands start, in units sold per day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BandLimits {
    /// At least this many a day is `normal`.
    pub normal_from: u64,
    /// At least this many a day is `fast`.
    pub fast_from: u64,
}

impl Default for BandLimits {
    fn default() -> Self {
        Self {
            normal_from: 10,
            fast_from: 50,
        }
    }
}

impl Band {
    /// The band of a product that sold `sold_last_day` with `on_hand` in stock.
    pub fn of(sold_last_day: u64, on_hand: i64, limits: BandLimits) -> Band {
        match sold_last_day {
            0 if on_hand > 0 => Band::Stalled,
            n if n >= limits.fast_from => Band::Fast,
            n if n >= limits.normal_from => Band::Normal,
            _ => Band::Slow,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Band::Stalled => "stalled",
            Band::Slow => "slow",
            Band::Normal => "normal",
            Band::Fast => "fast",
        }
    }
}

/// Days the stock lasts at the current rate; `None` when nothing sells.
pub fn days_of_cover(on_hand: i64, units_per_day: f64) -> Option<f64> {
    (units_per_day > 0.0).then(|| on_hand.max(0) as f64 / units_per_day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Location, Quantity};

    const T: i64 = 1_795_176_000_000; // 2026-11-20T12:00:00Z

    fn sold(n: u64) -> Event {
        Event::Sold {
            warehouse: WarehouseId::parse("ams1").unwrap(),
            sku: Sku::parse("apple").unwrap(),
            location: Location::parse("A1").unwrap(),
            quantity: Quantity::new(n).unwrap(),
        }
    }

    fn view() -> VelocityView {
        VelocityView::new(
            WarehouseId::parse("ams1").unwrap(),
            Sku::parse("apple").unwrap(),
        )
    }

    #[test]
    fn hour_day_and_week_by_event_time() {
        let mut v = view();
        v.apply(&sold(3), 1, T - 30 * MINUTE_MS, T);
        v.apply(&sold(5), 2, T - 5 * HOUR_MS, T);
        v.apply(&sold(10), 3, T - 3 * DAY_MS, T);
        v.apply(&sold(7), 4, T - 8 * DAY_MS, T);
        assert_eq!(
            (v.sold_last_hour, v.sold_last_day, v.sold_last_week),
            (3, 8, 18)
        );
        assert_eq!(v.last_seq, 4);
        assert!((v.units_per_day - 18.0 / 7.0).abs() < 1e-9);

        // An hour later, with no sale: the hour is empty, the day still holds both.
        assert!(v.tick(T + HOUR_MS));
        assert_eq!(
            (v.sold_last_hour, v.sold_last_day, v.sold_last_week),
            (0, 8, 18)
        );
        assert_eq!(v.as_of_ms, T + HOUR_MS);
        // Nothing changes a minute later: no write, as_of stays.
        assert!(!v.tick(T + HOUR_MS + MINUTE_MS));
        assert_eq!(v.as_of_ms, T + HOUR_MS);
        // A week later, nothing is left and nothing is kept.
        assert!(v.tick(T + 8 * DAY_MS));
        assert_eq!(
            (v.sold_last_week, v.minutes.len(), v.hours.len()),
            (0, 0, 0)
        );
    }

    #[test]
    fn a_sale_counts_once_and_other_events_count_nothing() {
        let mut v = view();
        assert!(v.apply(&sold(2), 5, T, T));
        assert!(!v.apply(&sold(2), 5, T, T));
        assert!(!v.apply(&sold(2), 4, T, T));
        let moved = Event::moved(
            WarehouseId::parse("ams1").unwrap(),
            Sku::parse("apple").unwrap(),
            Location::parse("A1").unwrap(),
            Location::parse("B1").unwrap(),
            Quantity::new(9).unwrap(),
        )
        .unwrap();
        v.apply(&moved, 6, T, T);
        assert_eq!((v.sold_last_hour, v.last_seq), (2, 6));
    }

    #[test]
    fn bands_and_cover() {
        let limits = BandLimits::default();
        assert_eq!(Band::of(0, 5, limits), Band::Stalled);
        assert_eq!(Band::of(0, 0, limits), Band::Slow);
        assert_eq!(Band::of(9, 5, limits), Band::Slow);
        assert_eq!(Band::of(10, 5, limits), Band::Normal);
        assert_eq!(Band::of(50, 5, limits), Band::Fast);
        assert_eq!(days_of_cover(30, 20.0), Some(1.5));
        assert_eq!(days_of_cover(30, 0.0), None);
        assert_eq!(days_of_cover(-3, 2.0), Some(0.0));
    }
}
