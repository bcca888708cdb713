//! Every subject, stream, bucket, key and header name of Stockwire, built in one place.
//!
//! Services never spell a subject themselves; they call these builders, so a rename
//! happens here or nowhere.

use crate::domain::{Alert, AlertTopic, EventKind, Sku, WarehouseId};

/// The log of record: every event of every warehouse.
pub const INVENTORY_STREAM: &str = "INVENTORY";
/// Subjects of `INVENTORY`: `warehouse.{warehouse}.product.{sku}.{kind}`.
pub const INVENTORY_SUBJECTS: &str = "warehouse.*.product.*.*";

/// Derived events (low stock, velocity, stockout forecasts).
pub const ALERTS_STREAM: &str = "ALERTS";
pub const ALERTS_SUBJECTS: &str = "alerts.>";

/// Copies of events a projector could not apply, with the reason.
pub const DEADLETTER_STREAM: &str = "DEADLETTER";
pub const DEADLETTER_SUBJECTS: &str = "deadletter.>";

/// The warehouses that run their own server (edge sites), one key per warehouse, kept
/// at the hub; each site holds a mirror of it.
pub const SITES_BUCKET: &str = "sites";
/// The hub's JetStream domain: a site reaches the hub's API at `$JS.hub.API`.
pub const HUB_DOMAIN: &str = "hub";

/// The JetStream API of another domain, as a stream source's `external.api` names it:
/// `$JS.{domain}.API`.
pub fn domain_api(domain: &str) -> String {
    format!("$JS.{domain}.API")
}

/// Stock per product and location.
pub const STOCK_BUCKET: &str = "stock";
/// Units sold over the last hour, day and week.
pub const VELOCITY_BUCKET: &str = "sales_velocity";
/// Low-stock and stockout thresholds, set by people.
pub const THRESHOLDS_BUCKET: &str = "thresholds";
/// The in-transit view: one key per transfer id.
pub const TRANSIT_BUCKET: &str = "transit";
/// The key of a view that records how far its projector has read the log.
pub const CHECKPOINT_KEY: &str = "_checkpoint";
/// The key in `thresholds` that holds the default for every product.
pub const DEFAULT_THRESHOLD_KEY: &str = "default";

/// Standard header suffixes; the full name is `{prefix}_{suffix}`.
pub const HEADER_FORMAT: &str = "format";
pub const HEADER_TYPE: &str = "type";
pub const HEADER_MSG_ID: &str = "msg_id";
pub const HEADER_TIMESTAMP_MS: &str = "timestamp_ms";
pub const HEADER_VERSION: &str = "version";
/// The default header prefix (`myorg_type`, ...).
pub const DEFAULT_HEADER_PREFIX: &str = "myorg";

/// JetStream headers Stockwire sets itself.
pub const NATS_MSG_ID: &str = "Nats-Msg-Id";
/// Set by JetStream on a message a stream took from one of its sources.
pub const NATS_STREAM_SOURCE: &str = "Nats-Stream-Source";
pub const NATS_EXPECTED_LAST_SEQUENCE: &str = "Nats-Expected-Last-Sequence";
pub const NATS_EXPECTED_LAST_MSG_ID: &str = "Nats-Expected-Last-Msg-Id";
pub const NATS_EXPECTED_LAST_SUBJECT_SEQUENCE: &str = "Nats-Expected-Last-Subject-Sequence";
pub const NATS_EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT: &str =
    "Nats-Expected-Last-Subject-Sequence-Subject";

/// The JetStream API request for a stream's info (its answer carries the server's time),
/// after the context's `$JS.API.` prefix.
pub fn stream_info_api(stream: &str) -> String {
    format!("STREAM.INFO.{stream}")
}

/// The JetStream API request that deletes a consumer (`.{stream}.{consumer}` follows).
pub const CONSUMER_DELETE_API: &str = "$JS.API.CONSUMER.DELETE.";

/// KV's operation header, and its value for a delete marker.
pub const KV_OPERATION: &str = "KV-Operation";
pub const KV_OPERATION_DELETE: &str = "DEL";

/// Every header JetStream reads begins with this.
pub const NATS_HEADER_PREFIX: &str = "Nats-";
/// Every header Stockwire adds to a dead letter begins with this.
pub const DEADLETTER_HEADER_PREFIX: &str = "Stockwire-";

/// Headers of a dead letter: why, and where the original is.
pub const DEADLETTER_REASON: &str = "Stockwire-Reason";
pub const DEADLETTER_ERROR: &str = "Stockwire-Error";
pub const DEADLETTER_VIEW: &str = "Stockwire-View";
pub const DEADLETTER_SOURCE_SUBJECT: &str = "Stockwire-Source-Subject";
pub const DEADLETTER_SOURCE_SEQUENCE: &str = "Stockwire-Source-Sequence";
pub const DEADLETTER_TRUNCATED: &str = "Stockwire-Truncated";

/// Low-stock alerts of one product: `stock.low` and `stock.recovered`.
pub fn low_stock_alert(warehouse: &WarehouseId, sku: &Sku) -> String {
    format!("alerts.low_stock.{warehouse}.{sku}")
}

/// Every low-stock alert subject.
pub const LOW_STOCK_ALERTS: &str = "alerts.low_stock.>";

/// Velocity band changes of one product: `sales.velocity`.
pub fn velocity_alert(warehouse: &WarehouseId, sku: &Sku) -> String {
    format!("alerts.velocity.{warehouse}.{sku}")
}

/// Every velocity alert subject.
pub const VELOCITY_ALERTS: &str = "alerts.velocity.>";

/// Stockout forecasts of one product: `stock.stockout_forecast` / `stock.stockout_cleared`.
pub fn stockout_alert(warehouse: &WarehouseId, sku: &Sku) -> String {
    format!("alerts.stockout.{warehouse}.{sku}")
}

/// Every stockout alert subject.
pub const STOCKOUT_ALERTS: &str = "alerts.stockout.>";

impl AlertTopic {
    /// The subject of this line of alerts of one product.
    pub fn subject(self, warehouse: &WarehouseId, sku: &Sku) -> String {
        match self {
            Self::LowStock => low_stock_alert(warehouse, sku),
            Self::Velocity => velocity_alert(warehouse, sku),
            Self::Stockout => stockout_alert(warehouse, sku),
        }
    }

    /// The subjects of this line of alerts of every product.
    pub fn every_subject(self) -> &'static str {
        match self {
            Self::LowStock => LOW_STOCK_ALERTS,
            Self::Velocity => VELOCITY_ALERTS,
            Self::Stockout => STOCKOUT_ALERTS,
        }
    }
}

impl Alert {
    /// The subject it is announced on.
    pub fn subject(&self) -> String {
        let (warehouse, sku) = self.body.product();
        self.body.topic().subject(warehouse, sku)
    }
}

/// The dead letter of the event at `seq` of `INVENTORY`, as seen by the projector of `view`:
/// one subject per event and view, written at most once.
pub fn deadletter(view: &str, seq: u64) -> String {
    format!("deadletter.{view}.{seq}")
}

/// Where a view's projector takes rebuild requests (core NATS request/reply).
pub fn rebuild_requests(view: &str) -> String {
    format!("stockwire.rebuild.{view}")
}

/// Leases: which instance of each job (a service name, e.g. `stock-projector`) does its
/// work now. One key per job; the value is the holder's instance id.
pub const LEASES_BUCKET: &str = "leases";

/// Where one running instance of a service answers with its state (its NATS service API
/// endpoint; `$SRV.*` finds it).
pub fn instance_requests(service: &str, instance: &str) -> String {
    format!("stockwire.instance.{service}.{instance}")
}

/// Where every instance of `service` answers with its stats (the NATS service API).
pub fn service_stats(service: &str) -> String {
    format!("$SRV.STATS.{service}")
}

/// A message's time to live, whole seconds (nats-server 2.11+, streams with `allow_msg_ttl`).
pub const NATS_TTL: &str = "Nats-TTL";

/// The subject of one event: `warehouse.{warehouse}.product.{sku}.{kind}`.
pub fn event(warehouse: &WarehouseId, sku: &Sku, kind: EventKind) -> String {
    format!(
        "warehouse.{warehouse}.product.{sku}.{}",
        kind.subject_token()
    )
}

/// Every event of one kind, of every product: `warehouse.*.product.*.{kind}`.
pub fn events_of_kind(kind: EventKind) -> String {
    format!("warehouse.*.product.*.{}", kind.subject_token())
}

/// One kind of event of one warehouse: `warehouse.{warehouse}.product.*.{kind}`.
pub fn warehouse_events_of_kind(warehouse: &WarehouseId, kind: EventKind) -> String {
    format!("warehouse.{warehouse}.product.*.{}", kind.subject_token())
}

/// Every event of one warehouse: `warehouse.{warehouse}.product.*.*`.
pub fn warehouse_events(warehouse: &WarehouseId) -> String {
    format!("warehouse.{warehouse}.product.*.*")
}

/// Every event of one aggregate (one product in one warehouse).
pub fn aggregate(warehouse: &WarehouseId, sku: &Sku) -> String {
    format!("warehouse.{warehouse}.product.{sku}.*")
}

/// The tokens of an event subject, as written: `(warehouse, sku, kind)`.
/// `None` when the subject does not have the shape of an event subject.
pub fn split_event(subject: &str) -> Option<(&str, &str, &str)> {
    let mut tokens = subject.split('.');
    match (
        tokens.next(),
        tokens.next(),
        tokens.next(),
        tokens.next(),
        tokens.next(),
        tokens.next(),
    ) {
        (Some("warehouse"), Some(w), Some("product"), Some(sku), Some(kind), None) => {
            Some((w, sku, kind))
        }
        _ => None,
    }
}

/// The tokens of an alert subject, as written: `(line, warehouse, sku)`, e.g.
/// `("low_stock", "ams1", "apple")`. `None` when it does not have that shape.
pub fn split_alert(subject: &str) -> Option<(&str, &str, &str)> {
    let mut tokens = subject.split('.');
    match (
        tokens.next(),
        tokens.next(),
        tokens.next(),
        tokens.next(),
        tokens.next(),
    ) {
        (Some("alerts"), Some(line), Some(w), Some(sku), None) => Some((line, w, sku)),
        _ => None,
    }
}

/// The key of a product in a view: `{warehouse}.{sku}`.
pub fn view_key(warehouse: &WarehouseId, sku: &Sku) -> String {
    format!("{warehouse}.{sku}")
}

/// The stream behind a KV bucket.
pub fn kv_stream(bucket: &str) -> String {
    format!("KV_{bucket}")
}

/// The subject of one key of a KV bucket.
pub fn kv_subject(bucket: &str, key: &str) -> String {
    format!("$KV.{bucket}.{key}")
}

/// Every subject of a KV bucket.
pub fn kv_subjects(bucket: &str) -> String {
    format!("$KV.{bucket}.>")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_subjects_round_trip() {
        let w = WarehouseId::parse("ams1").unwrap();
        let s = Sku::parse("apple").unwrap();
        let subject = event(&w, &s, EventKind::Sold);
        assert_eq!(subject, "warehouse.ams1.product.apple.sold");
        assert_eq!(split_event(&subject), Some(("ams1", "apple", "sold")));
        assert_eq!(aggregate(&w, &s), "warehouse.ams1.product.apple.*");
        assert_eq!(
            events_of_kind(EventKind::Sold),
            "warehouse.*.product.*.sold"
        );
        assert_eq!(split_event("warehouse.ams1.product.apple"), None);
        assert_eq!(split_event("warehouse.ams1.product.apple.sold.x"), None);
        assert_eq!(
            split_alert(&low_stock_alert(&w, &s)),
            Some(("low_stock", "ams1", "apple"))
        );
        assert_eq!(split_alert("alerts.low_stock.ams1"), None);
        assert_eq!(split_alert(&subject), None);
        assert_eq!(view_key(&w, &s), "ams1.apple");
        assert_eq!(
            kv_subject(STOCK_BUCKET, "ams1.apple"),
            "$KV.stock.ams1.apple"
        );
    }
}
