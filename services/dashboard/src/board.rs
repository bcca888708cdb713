//! What the dashboard knows: every product's stock, sales and thresholds joined into one
//! row, kept in order of urgency, and the alerts of the last 24 hours.
//!
//! Memory: per product, its stock value (locations included), two numbers of its sales
//! velocity, its own thresholds if set, and its place in the order: about 0.5 KB, so
//! 50 MB for 100,000 products. The velocity windows (per minute and per hour) are not
//! kept; a product page reads them when it is opened. Alerts: at most [`MAX_ALERTS`].

use std::collections::{BTreeSet, HashMap, VecDeque};

use serde::Serialize;
use stockwire::domain::{days_of_cover, Band, BandLimits, StockView, Thresholds, VelocityView};
use stockwire::subjects;

/// Alerts kept for the feed, newest last: those of the last 24 hours, at most this many.
pub const MAX_ALERTS: usize = 2_000;

/// How long an alert stays in the feed.
pub const ALERTS_FOR_MS: i64 = 24 * 60 * 60 * 1000;

/// What the dashboard keeps of a product's sales velocity.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sales {
    sold_last_day: u64,
    units_per_day: f64,
}

/// One row of the stock table: a product in a warehouse.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub key: String,
    pub warehouse: String,
    pub sku: String,
    pub on_hand: i64,
    pub locations: serde_json::Value,
    pub threshold: i64,
    pub stockout_days: f64,
    pub days_of_cover: Option<f64>,
    pub band: Option<&'static str>,
    pub sold_last_day: Option<u64>,
    pub units_per_day: Option<f64>,
    /// The time of its last event, ms since the epoch.
    pub last_event_ms: i64,
    pub last_seq: u64,
    /// Below its low-stock threshold.
    pub low: bool,
    /// Fewer days of cover than its stockout threshold.
    pub stockout: bool,
}

/// An alert as the feed shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertItem {
    pub seq: u64,
    #[serde(rename = "type")]
    pub kind: String,
    pub key: String,
    pub warehouse: String,
    pub sku: String,
    pub at_ms: i64,
    pub payload: serde_json::Value,
}

/// The place of a row in the table: nothing on hand first, then fewest days of cover,
/// then low, then by key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Urgency {
    stocked: bool,
    /// Days of cover in hundredths (none: nothing sells, last).
    cover: u64,
    not_low: bool,
    key: String,
}

/// What a page asks for: a warehouse, a piece of SKU, how many rows.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
pub struct Query {
    #[serde(default)]
    pub warehouse: Option<String>,
    #[serde(default)]
    pub q: Option<String>,
    #[serde(default)]
    pub limit: Option<usize>,
}

/// Rows a page gets unless it asks for fewer (or more, up to [`MAX_ROWS`]).
pub const DEFAULT_ROWS: usize = 200;
pub const MAX_ROWS: usize = 5_000;

impl Query {
    pub fn limit(&self) -> usize {
        self.limit.unwrap_or(DEFAULT_ROWS).clamp(1, MAX_ROWS)
    }

    fn matches(&self, row: &Row) -> bool {
        let warehouse = self
            .warehouse
            .as_deref()
            .filter(|w| !w.is_empty())
            .is_none_or(|w| row.warehouse == w);
        let sku = self
            .q
            .as_deref()
            .map(str::trim)
            .filter(|q| !q.is_empty())
            .is_none_or(|q| {
                row.sku
                    .to_ascii_lowercase()
                    .contains(&q.to_ascii_lowercase())
            });
        warehouse && sku
    }
}

/// The page's first rows for a query, and how many rows match it in all.
#[derive(Debug, Clone, Serialize)]
pub struct Page {
    pub rows: Vec<Row>,
    pub total: usize,
}

#[derive(Default)]
pub struct Board {
    stock: HashMap<String, StockView>,
    sales: HashMap<String, Sales>,
    thresholds: HashMap<String, Thresholds>,
    rows: HashMap<String, Row>,
    order: BTreeSet<Urgency>,
    /// The same order, per warehouse: a page filtered by warehouse reads only its own.
    by_warehouse: HashMap<String, BTreeSet<Urgency>>,
    alerts: VecDeque<AlertItem>,
    limits: BandLimits,
    /// The latest event time among the products.
    pub last_event_ms: i64,
}

impl Board {
    pub fn new(limits: BandLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// A stock value changed (`None`: the key was deleted). Returns whether a row changed.
    pub fn set_stock(&mut self, key: &str, value: Option<StockView>) -> bool {
        match value {
            Some(v) => {
                self.last_event_ms = self.last_event_ms.max(v.updated_ms);
                self.stock.insert(key.to_string(), v);
            }
            None => {
                self.stock.remove(key);
            }
        }
        self.refresh(key)
    }

    /// A sales velocity value changed.
    pub fn set_velocity(&mut self, key: &str, value: Option<VelocityView>) -> bool {
        match value {
            Some(v) => {
                self.sales.insert(
                    key.to_string(),
                    Sales {
                        sold_last_day: v.sold_last_day,
                        units_per_day: v.units_per_day,
                    },
                );
            }
            None => {
                self.sales.remove(key);
            }
        }
        self.refresh(key)
    }

    /// A threshold changed: the default changes every row without its own.
    pub fn set_threshold(&mut self, key: &str, value: Option<Thresholds>) -> bool {
        match value {
            Some(t) => self.thresholds.insert(key.to_string(), t),
            None => self.thresholds.remove(key),
        };
        if key == subjects::DEFAULT_THRESHOLD_KEY {
            let keys: Vec<String> = self.stock.keys().cloned().collect();
            keys.iter()
                .fold(false, |changed, k| self.refresh(k) | changed)
        } else {
            self.refresh(key)
        }
    }

    /// Adds an alert to the feed (in stream order), forgetting those older than a day.
    pub fn add_alert(&mut self, alert: AlertItem, now_ms: i64) {
        self.alerts.push_back(alert);
        while self.alerts.len() > MAX_ALERTS
            || self
                .alerts
                .front()
                .is_some_and(|a| a.at_ms < now_ms - ALERTS_FOR_MS)
        {
            self.alerts.pop_front();
        }
    }

    /// The alerts of the feed, newest first, at most `n`.
    pub fn alerts(&self, n: usize) -> Vec<AlertItem> {
        self.alerts.iter().rev().take(n).cloned().collect()
    }

    pub fn row(&self, key: &str) -> Option<&Row> {
        self.rows.get(key)
    }

    pub fn products(&self) -> usize {
        self.rows.len()
    }

    /// The warehouses that hold products, by name.
    pub fn warehouses(&self) -> Vec<String> {
        let mut names: Vec<String> = self.by_warehouse.keys().cloned().collect();
        names.sort();
        names
    }

    /// The first rows for `query` in order of urgency, and how many match in all.
    pub fn page(&self, query: &Query) -> Page {
        let limit = query.limit();
        let mut rows = Vec::with_capacity(limit.min(self.rows.len()));
        let mut total = 0;
        for place in self.ordered(query) {
            let Some(row) = self.rows.get(&place.key) else {
                continue;
            };
            if query.matches(row) {
                total += 1;
                if rows.len() < limit {
                    rows.push(row.clone());
                }
            }
        }
        Page { rows, total }
    }

    /// Every row for `query`, in order (the CSV download).
    pub fn all(&self, query: &Query) -> Vec<Row> {
        self.ordered(query)
            .filter_map(|place| self.rows.get(&place.key))
            .filter(|row| query.matches(row))
            .cloned()
            .collect()
    }

    /// The rows in order of urgency that a query may match: its warehouse's, or all.
    fn ordered(&self, query: &Query) -> Box<dyn Iterator<Item = &Urgency> + '_> {
        match query.warehouse.as_deref().filter(|w| !w.is_empty()) {
            Some(w) => match self.by_warehouse.get(w) {
                Some(set) => Box::new(set.iter()),
                None => Box::new(std::iter::empty()),
            },
            None => Box::new(self.order.iter()),
        }
    }

    /// Recomputes the row of `key` from what is known; whether it changed.
    fn refresh(&mut self, key: &str) -> bool {
        let row = self.stock.get(key).map(|stock| self.join(key, stock));
        let before = self.rows.remove(key);
        if let Some(before) = &before {
            let place = urgency(before);
            if let Some(set) = self.by_warehouse.get_mut(&before.warehouse) {
                set.remove(&place);
                if set.is_empty() {
                    self.by_warehouse.remove(&before.warehouse);
                }
            }
            self.order.remove(&place);
        }
        let changed = before != row;
        if let Some(row) = row {
            let place = urgency(&row);
            self.by_warehouse
                .entry(row.warehouse.clone())
                .or_default()
                .insert(place.clone());
            self.order.insert(place);
            self.rows.insert(key.to_string(), row);
        }
        changed
    }

    fn join(&self, key: &str, stock: &StockView) -> Row {
        let own = self.thresholds.get(key);
        let default = self.thresholds.get(subjects::DEFAULT_THRESHOLD_KEY);
        let threshold = Thresholds::low_stock_below(own, default);
        let stockout_days = Thresholds::stockout_days(own, default);
        let sales = self.sales.get(key);
        let cover = sales.and_then(|s| days_of_cover(stock.on_hand, s.units_per_day));
        let cover = cover.map(|c| (c * 100.0).round() / 100.0);
        Row {
            key: key.to_string(),
            warehouse: stock.warehouse.to_string(),
            sku: stock.sku.to_string(),
            on_hand: stock.on_hand,
            locations: serde_json::to_value(&stock.locations).unwrap_or_default(),
            threshold,
            stockout_days,
            days_of_cover: cover,
            band: sales.map(|s| Band::of(s.sold_last_day, stock.on_hand, self.limits).as_str()),
            sold_last_day: sales.map(|s| s.sold_last_day),
            units_per_day: sales.map(|s| (s.units_per_day * 100.0).round() / 100.0),
            last_event_ms: stock.updated_ms,
            last_seq: stock.last_seq,
            low: stock.on_hand < threshold,
            stockout: cover.is_some_and(|c| c < stockout_days),
        }
    }
}

fn urgency(row: &Row) -> Urgency {
    Urgency {
        stocked: row.on_hand > 0,
        cover: row
            .days_of_cover
            .map_or(u64::MAX, |c| (c.max(0.0) * 100.0).round() as u64),
        not_low: !row.low,
        key: row.key.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stockwire::domain::{Sku, WarehouseId};

    fn stock(w: &str, s: &str, on_hand: i64) -> StockView {
        let mut v = StockView::new(
            WarehouseId::parse(w).expect("warehouse"),
            Sku::parse(s).expect("sku"),
        );
        v.on_hand = on_hand;
        v.updated_ms = 1_000;
        v
    }

    fn velocity(w: &str, s: &str, per_day: f64) -> VelocityView {
        let mut v = VelocityView::new(
            WarehouseId::parse(w).expect("warehouse"),
            Sku::parse(s).expect("sku"),
        );
        v.units_per_day = per_day;
        v.sold_last_day = per_day as u64;
        v
    }

    #[test]
    fn rows_come_in_order_of_urgency_and_filter_by_warehouse_and_sku() {
        let mut board = Board::new(BandLimits::default());
        board.set_stock("ams1.apple", Some(stock("ams1", "apple", 100)));
        board.set_stock("ams1.pear", Some(stock("ams1", "pear", 0)));
        board.set_stock("nyc1.apple", Some(stock("nyc1", "apple", 20)));
        board.set_stock("nyc1.fig", Some(stock("nyc1", "fig", 5)));
        board.set_velocity("ams1.apple", Some(velocity("ams1", "apple", 50.0)));
        board.set_velocity("nyc1.apple", Some(velocity("nyc1", "apple", 1.0)));
        let keys = |page: Page| page.rows.into_iter().map(|r| r.key).collect::<Vec<_>>();
        // Nothing on hand, then 2 days of cover, then 20 days, then nothing sells (low).
        assert_eq!(
            keys(board.page(&Query::default())),
            ["ams1.pear", "ams1.apple", "nyc1.apple", "nyc1.fig"]
        );
        let ams = Query {
            warehouse: Some("ams1".into()),
            ..Query::default()
        };
        assert_eq!(keys(board.page(&ams)), ["ams1.pear", "ams1.apple"]);
        let apple = Query {
            q: Some("APP".into()),
            limit: Some(1),
            ..Query::default()
        };
        let page = board.page(&apple);
        assert_eq!(page.total, 2);
        assert_eq!(keys(page), ["ams1.apple"]);
    }

    #[test]
    fn a_row_is_low_below_its_threshold_and_stockout_short_of_cover() {
        let mut board = Board::new(BandLimits::default());
        board.set_stock("ams1.apple", Some(stock("ams1", "apple", 12)));
        board.set_velocity("ams1.apple", Some(velocity("ams1", "apple", 10.0)));
        let row = board.row("ams1.apple").expect("a row").clone();
        assert!(!row.low && row.stockout, "{row:?}");
        assert_eq!(row.days_of_cover, Some(1.2));
        assert_eq!(row.band, Some("normal"));
        let raised = Thresholds {
            low_stock_below: Some(20),
            stockout_days: None,
        };
        assert!(board.set_threshold(subjects::DEFAULT_THRESHOLD_KEY, Some(raised)));
        assert!(board.row("ams1.apple").expect("a row").low);
        assert!(board.set_stock("ams1.apple", None));
        assert!(board.row("ams1.apple").is_none());
        assert_eq!(board.products(), 0);
    }

    #[test]
    fn the_feed_keeps_a_day_of_alerts_newest_first() {
        let mut board = Board::new(BandLimits::default());
        let alert = |seq, at_ms| AlertItem {
            seq,
            kind: "stock.low".into(),
            key: "ams1.apple".into(),
            warehouse: "ams1".into(),
            sku: "apple".into(),
            at_ms,
            payload: serde_json::Value::Null,
        };
        let now = 10 * ALERTS_FOR_MS;
        board.add_alert(alert(1, now - ALERTS_FOR_MS - 1), now);
        board.add_alert(alert(2, now - 5), now);
        board.add_alert(alert(3, now), now);
        let seqs: Vec<u64> = board.alerts(10).iter().map(|a| a.seq).collect();
        assert_eq!(seqs, [3, 2]);
    }
}
