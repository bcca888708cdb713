//! Stock of one product in one warehouse, and how each event changes it (`evolve`).
//!
//! [`StockView`] is the value of a key of the `stock` view: units per location, `on_hand`
//! (their sum), the stream sequence of the last event applied (`last_seq`) and that
//! event's time (`updated_ms`). Applying is deterministic, so a replay of the log gives
//! the same view, byte for byte, as the live projector.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::event::Event;
use super::ids::{Location, Sku, WarehouseId};

/// Units per location; a location at 0 is not listed. Counts may be negative when the
/// facts say so (a sale recorded with `--force`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Locations(BTreeMap<Location, i64>);

impl Locations {
    pub fn at(&self, location: &Location) -> i64 {
        self.0.get(location).copied().unwrap_or(0)
    }

    pub fn on_hand(&self) -> i64 {
        self.0.values().sum()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Location, i64)> {
        self.0.iter().map(|(l, q)| (l, *q))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn set(&mut self, location: &Location, quantity: i64) {
        if quantity == 0 {
            self.0.remove(location);
        } else {
            self.0.insert(location.clone(), quantity);
        }
    }

    fn add(&mut self, location: &Location, delta: i64) {
        let now = self.at(location) + delta;
        self.set(location, now);
    }
}

/// The effect of one event on a product's locations.
pub fn evolve(mut locations: Locations, event: &Event) -> Locations {
    match event {
        Event::Received {
            location, quantity, ..
        } => locations.add(location, quantity.get().into()),
        Event::Sold {
            location, quantity, ..
        }
        | Event::Destroyed {
            location, quantity, ..
        }
        | Event::TransferredOut {
            location, quantity, ..
        } => locations.add(location, -i64::from(quantity.get())),
        Event::TransferredIn {
            location, quantity, ..
        } => locations.add(location, quantity.get().into()),
        Event::Moved {
            from, to, quantity, ..
        } => {
            locations.add(from, -i64::from(quantity.get()));
            locations.add(to, quantity.get().into());
        }
        Event::Corrected {
            location, quantity, ..
        } => locations.set(location, (*quantity).into()),
    }
    locations
}

/// The value of one key (`{warehouse}.{sku}`) of the `stock` view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockView {
    pub warehouse: WarehouseId,
    pub sku: Sku,
    pub on_hand: i64,
    pub locations: Locations,
    /// Stream sequence of the last event applied.
    pub last_seq: u64,
    /// Event time of the last event applied, ms since the epoch.
    pub updated_ms: i64,
}

impl StockView {
    pub fn new(warehouse: WarehouseId, sku: Sku) -> Self {
        Self {
            warehouse,
            sku,
            on_hand: 0,
            locations: Locations::default(),
            last_seq: 0,
            updated_ms: 0,
        }
    }

    /// Applies the event stored at `seq` unless this view already holds it (`seq <=
    /// last_seq`): that rule is what makes a redelivered event count once. Returns
    /// whether it was applied.
    pub fn apply(&mut self, event: &Event, seq: u64, at_ms: i64) -> bool {
        if seq <= self.last_seq {
            return false;
        }
        self.locations = evolve(std::mem::take(&mut self.locations), event);
        self.on_hand = self.locations.on_hand();
        self.last_seq = seq;
        self.updated_ms = at_ms;
        true
    }
}

/// Many products' views, keyed by (warehouse, sku): a replay of the log in memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StockBook(BTreeMap<(WarehouseId, Sku), StockView>);

impl StockBook {
    /// Applies one event to its product's view.
    pub fn apply(&mut self, event: &Event, seq: u64, at_ms: i64) -> bool {
        let key = (event.warehouse().clone(), event.sku().clone());
        self.0
            .entry(key)
            .or_insert_with(|| StockView::new(event.warehouse().clone(), event.sku().clone()))
            .apply(event, seq, at_ms)
    }

    pub fn get(&self, warehouse: &WarehouseId, sku: &Sku) -> Option<&StockView> {
        self.0.get(&(warehouse.clone(), sku.clone()))
    }

    pub fn views(&self) -> impl Iterator<Item = &StockView> {
        self.0.values()
    }

    pub fn into_views(self) -> impl Iterator<Item = StockView> {
        self.0.into_values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Quantity, Reason};

    fn w() -> WarehouseId {
        WarehouseId::parse("ams1").unwrap()
    }
    fn apple() -> Sku {
        Sku::parse("apple").unwrap()
    }
    fn loc(l: &str) -> Location {
        Location::parse(l).unwrap()
    }
    fn q(n: u64) -> Quantity {
        Quantity::new(n).unwrap()
    }

    #[test]
    fn the_articles_apples() {
        // Given 5 apples counted at A43, when 3 move to G15 and 2 are sold there:
        let mut view = StockView::new(w(), apple());
        let events = [
            Event::Corrected {
                warehouse: w(),
                sku: apple(),
                location: loc("A43"),
                quantity: 5,
            },
            Event::moved(w(), apple(), loc("A43"), loc("G15"), q(3)).unwrap(),
        ];
        for (i, e) in events.iter().enumerate() {
            assert!(view.apply(e, i as u64 + 1, 1000 + i as i64));
        }
        assert_eq!(
            (
                view.locations.at(&loc("A43")),
                view.locations.at(&loc("G15"))
            ),
            (2, 3)
        );
        assert_eq!(view.on_hand, 5);
        let sold = Event::Sold {
            warehouse: w(),
            sku: apple(),
            location: loc("G15"),
            quantity: q(2),
        };
        view.apply(&sold, 3, 2000);
        assert_eq!(view.locations.at(&loc("G15")), 1);
        assert_eq!((view.on_hand, view.last_seq, view.updated_ms), (3, 3, 2000));
    }

    #[test]
    fn an_event_already_applied_is_skipped() {
        let mut view = StockView::new(w(), apple());
        let received = Event::Received {
            warehouse: w(),
            sku: apple(),
            location: loc("A1"),
            quantity: q(4),
        };
        assert!(view.apply(&received, 7, 0));
        assert!(!view.apply(&received, 7, 0));
        assert!(!view.apply(&received, 3, 0));
        assert_eq!(view.on_hand, 4);
    }

    #[test]
    fn empty_locations_disappear_and_negative_stock_shows() {
        let mut view = StockView::new(w(), apple());
        view.apply(
            &Event::Received {
                warehouse: w(),
                sku: apple(),
                location: loc("A1"),
                quantity: q(2),
            },
            1,
            0,
        );
        view.apply(
            &Event::Destroyed {
                warehouse: w(),
                sku: apple(),
                location: loc("A1"),
                quantity: q(2),
                reason: Reason::parse("rotten").unwrap(),
            },
            2,
            0,
        );
        assert!(view.locations.is_empty());
        view.apply(
            &Event::Sold {
                warehouse: w(),
                sku: apple(),
                location: loc("B1"),
                quantity: q(3),
            },
            3,
            0,
        );
        assert_eq!((view.on_hand, view.locations.at(&loc("B1"))), (-3, -3));
    }

    #[test]
    fn the_view_has_the_documented_json() {
        let mut view = StockView::new(w(), apple());
        view.apply(
            &Event::Received {
                warehouse: w(),
                sku: apple(),
                location: loc("A43"),
                quantity: q(5),
            },
            9,
            1_795_176_000_000,
        );
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"warehouse":"ams1","sku":"apple","on_hand":5,"locations":{"A43":5},
                               "last_seq":9,"updated_ms":1_795_176_000_000i64})
        );
        let back: StockView = serde_json::from_value(json).unwrap();
        assert_eq!(back, view);
    }
}
