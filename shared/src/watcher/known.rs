//! What a watcher knows: the latest value of every product in each view it follows, and
//! every threshold, as the buckets last said; and which products a change puts up for
//! judging again.

use std::collections::{BTreeSet, HashMap};

use serde::de::DeserializeOwned;

use crate::domain::{Sku, StockView, Thresholds, VelocityView, WarehouseId};
use crate::subjects;

/// Everything a watcher knows of one product when it judges it.
#[derive(Debug, Clone, Copy)]
pub struct Product<'a> {
    pub warehouse: &'a WarehouseId,
    pub sku: &'a Sku,
    /// Its value in the `stock` view; `None` while not known (not seen, or deleted).
    pub stock: Option<&'a StockView>,
    /// Its value in the `sales_velocity` view; `None` while not known.
    pub velocity: Option<&'a VelocityView>,
    thresholds: Option<&'a Thresholds>,
    default: Option<&'a Thresholds>,
}

impl Product<'_> {
    /// Its low-stock threshold: its own, else the default's, else the built-in one.
    pub fn low_stock_below(&self) -> i64 {
        Thresholds::low_stock_below(self.thresholds, self.default)
    }

    /// Its stockout horizon in days: its own, else the default's, else the built-in one.
    pub fn stockout_days(&self) -> f64 {
        Thresholds::stockout_days(self.thresholds, self.default)
    }
}

/// The values of the thresholds and of the views, by key.
#[derive(Debug, Default)]
pub(super) struct Known {
    thresholds: HashMap<String, Thresholds>,
    stock: HashMap<String, StockView>,
    velocity: HashMap<String, VelocityView>,
}

impl Known {
    /// Takes in the new value of `key` in `bucket` (`None`: deleted or purged). Returns the
    /// products to judge again: the key's own for a view or a product's threshold, every
    /// product for the default threshold. A value that cannot be read changes nothing.
    pub(super) fn update(
        &mut self,
        bucket: &str,
        key: &str,
        value: Option<&[u8]>,
    ) -> Result<Vec<String>, serde_json::Error> {
        if bucket == subjects::THRESHOLDS_BUCKET {
            take(&mut self.thresholds, key, value)?;
            if key == subjects::DEFAULT_THRESHOLD_KEY {
                return Ok(self.products());
            }
        } else if bucket == subjects::STOCK_BUCKET {
            take(&mut self.stock, key, value)?;
        } else if bucket == subjects::VELOCITY_BUCKET {
            take(&mut self.velocity, key, value)?;
        } else {
            return Ok(vec![]);
        }
        Ok(self
            .product(key)
            .map(|_| key.to_string())
            .into_iter()
            .collect())
    }

    /// Every product a view holds, in key order.
    pub(super) fn products(&self) -> Vec<String> {
        let keys: BTreeSet<&String> = self.stock.keys().chain(self.velocity.keys()).collect();
        keys.into_iter().cloned().collect()
    }

    /// What is known of the product `key`, if a view holds it.
    pub(super) fn product(&self, key: &str) -> Option<Product<'_>> {
        let stock = self.stock.get(key);
        let velocity = self.velocity.get(key);
        let (warehouse, sku) = match (stock, velocity) {
            (Some(s), _) => (&s.warehouse, &s.sku),
            (None, Some(v)) => (&v.warehouse, &v.sku),
            (None, None) => return None,
        };
        Some(Product {
            warehouse,
            sku,
            stock,
            velocity,
            thresholds: self.thresholds.get(key),
            default: self.thresholds.get(subjects::DEFAULT_THRESHOLD_KEY),
        })
    }
}

fn take<T: DeserializeOwned>(
    values: &mut HashMap<String, T>,
    key: &str,
    value: Option<&[u8]>,
) -> Result<(), serde_json::Error> {
    match value {
        Some(bytes) => {
            values.insert(key.to_string(), serde_json::from_slice(bytes)?);
        }
        None => {
            values.remove(key);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const STOCK: &str = subjects::STOCK_BUCKET;
    const VELOCITY: &str = subjects::VELOCITY_BUCKET;
    const THRESHOLDS: &str = subjects::THRESHOLDS_BUCKET;

    fn stock(sku: &str, on_hand: i64) -> Vec<u8> {
        json!({"warehouse":"ams1","sku":sku,"on_hand":on_hand,"locations":{"A1":on_hand},
               "last_seq":3,"updated_ms":0})
        .to_string()
        .into_bytes()
    }

    fn velocity(sku: &str) -> Vec<u8> {
        json!({"warehouse":"ams1","sku":sku,"sold_last_hour":0,"sold_last_day":4,
               "sold_last_week":7,"units_per_day":1.0,"as_of_ms":0,"last_seq":5})
        .to_string()
        .into_bytes()
    }

    fn set(known: &mut Known, bucket: &str, key: &str, value: &[u8]) -> Vec<String> {
        known.update(bucket, key, Some(value)).unwrap()
    }

    #[test]
    fn a_change_of_a_view_puts_its_product_up_for_judging() {
        let mut known = Known::default();
        assert_eq!(
            set(&mut known, STOCK, "ams1.apple", &stock("apple", 4)),
            ["ams1.apple"]
        );
        assert_eq!(
            set(&mut known, VELOCITY, "ams1.pear", &velocity("pear")),
            ["ams1.pear"]
        );
        let apple = known.product("ams1.apple").unwrap();
        assert_eq!(
            (apple.stock.map(|s| s.on_hand), apple.velocity),
            (Some(4), None)
        );
        assert_eq!(apple.sku.as_str(), "apple");
        let pear = known.product("ams1.pear").unwrap();
        assert!(pear.stock.is_none() && pear.velocity.is_some());
        assert_eq!(known.products(), ["ams1.apple", "ams1.pear"]);
    }

    #[test]
    fn a_deleted_value_is_forgotten() {
        let mut known = Known::default();
        set(&mut known, STOCK, "ams1.apple", &stock("apple", 4));
        set(&mut known, VELOCITY, "ams1.apple", &velocity("apple"));
        // Stock deleted: the product is still judged, without its stock.
        assert_eq!(
            known.update(STOCK, "ams1.apple", None).unwrap(),
            ["ams1.apple"]
        );
        assert!(known.product("ams1.apple").unwrap().stock.is_none());
        // Nothing left of it: nothing to judge.
        assert!(known
            .update(VELOCITY, "ams1.apple", None)
            .unwrap()
            .is_empty());
        assert!(known.product("ams1.apple").is_none());
        assert!(known.products().is_empty());
    }

    #[test]
    fn a_threshold_change_puts_up_the_products_it_covers() {
        let mut known = Known::default();
        set(&mut known, STOCK, "ams1.apple", &stock("apple", 4));
        set(&mut known, STOCK, "ams1.pear", &stock("pear", 40));
        let below = |n: i64| json!({"low_stock_below": n}).to_string().into_bytes();
        assert_eq!(
            set(&mut known, THRESHOLDS, "ams1.pear", &below(50)),
            ["ams1.pear"]
        );
        assert!(set(&mut known, THRESHOLDS, "ams1.kiwi", &below(5)).is_empty());
        let all = set(
            &mut known,
            THRESHOLDS,
            subjects::DEFAULT_THRESHOLD_KEY,
            &below(3),
        );
        assert_eq!(all, ["ams1.apple", "ams1.pear"]);
        let limits = |known: &Known, key| {
            let p = known.product(key).unwrap();
            (p.low_stock_below(), p.stockout_days())
        };
        assert_eq!(limits(&known, "ams1.pear"), (50, 3.0));
        assert_eq!(limits(&known, "ams1.apple"), (3, 3.0));
        known.update(THRESHOLDS, "ams1.pear", None).unwrap();
        assert_eq!(limits(&known, "ams1.pear"), (3, 3.0));
    }

    #[test]
    fn an_unreadable_value_changes_nothing() {
        let mut known = Known::default();
        set(&mut known, STOCK, "ams1.apple", &stock("apple", 4));
        assert!(known
            .update(STOCK, "ams1.apple", Some(b"{not json"))
            .is_err());
        assert_eq!(
            known
                .product("ams1.apple")
                .unwrap()
                .stock
                .map(|s| s.on_hand),
            Some(4)
        );
        assert!(known.update(THRESHOLDS, "default", Some(b"7")).is_err());
        assert!(known
            .update("elsewhere", "ams1.apple", None)
            .unwrap()
            .is_empty());
    }
}
