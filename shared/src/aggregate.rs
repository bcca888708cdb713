//! The command side's read: one aggregate (a product in a warehouse) as the log says it
//! is now, and the expectation that makes an append conditional on it not having moved.
//!
//! Loading starts from the `stock` view's value for the product (its `last_seq` says which
//! events it holds) and reads only the product's events after it, so a decision costs the
//! same on a product with 10 events of history as on one with 100,000; when the view is
//! current, one direct get of the product's last events says so and nothing is read. The view is only a
//! shortcut: the expectation is on the log (`Nats-Expected-Last-Subject-Sequence` with
//! `Nats-Expected-Last-Subject-Sequence-Subject: warehouse.{w}.product.{sku}.*`), so JetStream
//! refuses the append if any event of the product was stored after the one decided on.

use std::collections::HashMap;

use async_nats::jetstream::Context;

use crate::direct;
use crate::domain::{evolve, Locations, Sku, StockView, WarehouseId};
use crate::envelope::{Envelope, Outbound};
use crate::read::{ReadError, Reader, StoredMessage};
use crate::subjects;

/// What one aggregate's events say, and where they end.
#[derive(Debug, Default)]
pub struct Aggregate {
    pub locations: Locations,
    /// The stream sequence of its last event (0: none).
    pub last_seq: u64,
    /// The msg ids of the events read (those after the view's value, or all of them).
    msg_ids: HashMap<String, u64>,
}

impl Aggregate {
    /// Where an event with this msg id is stored, if it is among the events read.
    pub fn stored(&self, msg_id: &str) -> Option<u64> {
        self.msg_ids.get(msg_id).copied()
    }
}

/// The aggregate as it is now: the stock view's value, then the events after it.
pub async fn load(
    js: &Context,
    envelope: &Envelope,
    warehouse: &WarehouseId,
    sku: &Sku,
) -> Result<Aggregate, ReadError> {
    let start = match from_view(js, warehouse, sku).await {
        Some(view) => Aggregate {
            locations: view.locations,
            last_seq: view.last_seq,
            msg_ids: HashMap::new(),
        },
        None => Aggregate::default(),
    };
    read_after(js, envelope, warehouse, sku, start).await
}

/// The aggregate folded from its first event, with every msg id it holds: for the rare
/// question "is this id stored at all?", asked when a command is refused.
pub async fn load_all(
    js: &Context,
    envelope: &Envelope,
    warehouse: &WarehouseId,
    sku: &Sku,
) -> Result<Aggregate, ReadError> {
    read_after(js, envelope, warehouse, sku, Aggregate::default()).await
}

/// Folds the product's events after `start.last_seq` into `start`. Messages that are not
/// valid events change nothing but still count for `last_seq`.
async fn read_after(
    js: &Context,
    envelope: &Envelope,
    warehouse: &WarehouseId,
    sku: &Sku,
    mut aggregate: Aggregate,
) -> Result<Aggregate, ReadError> {
    let filter = subjects::aggregate(warehouse, sku);
    // The usual case: nothing or a few events after the view's value, read with one
    // direct get, so that no consumer is made (and none is left on the server for its
    // idle time). A long history, or any doubt, is read with a consumer.
    match events_after(js, &filter, aggregate.last_seq).await {
        Ok(events) => {
            for stored in &events {
                fold(&mut aggregate, envelope, stored);
            }
            return Ok(aggregate);
        }
        Err(e) => {
            tracing::debug!(filter, error = %e, "reading the product's events with a consumer")
        }
    }
    let mut reader = Reader::open(
        js,
        subjects::INVENTORY_STREAM,
        &filter,
        aggregate.last_seq + 1,
    )
    .await?;
    while let Some(stored) = reader.next().await {
        fold(&mut aggregate, envelope, &stored?);
    }
    Ok(aggregate)
}

fn fold(aggregate: &mut Aggregate, envelope: &Envelope, stored: &StoredMessage) {
    aggregate.last_seq = stored.sequence;
    if let Ok(rec) = envelope.decode_stored(stored) {
        aggregate.locations = evolve(std::mem::take(&mut aggregate.locations), &rec.event);
        aggregate.msg_ids.insert(rec.meta.msg_id, stored.sequence);
    }
}

/// Events a direct get reads at once after the view's value; more are read with a
/// consumer.
const AFTER_BATCH: usize = 64;

/// The events under `filter` after `last_seq`, from one batched direct get: an error when
/// there are more than [`AFTER_BATCH`], or one comes without the time it was stored.
async fn events_after(
    js: &Context,
    filter: &str,
    last_seq: u64,
) -> Result<Vec<StoredMessage>, String> {
    let found = direct::after(
        &js.client(),
        subjects::INVENTORY_STREAM,
        filter,
        last_seq,
        AFTER_BATCH,
        LAST_TIMEOUT,
    )
    .await
    .map_err(|e| e.to_string())?;
    found
        .into_iter()
        .map(|m| {
            let stored_ms = m
                .headers
                .get("Nats-Time-Stamp")
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t.as_str()).ok())
                .map(|t| t.timestamp_millis())
                .ok_or_else(|| format!("message #{} came without Nats-Time-Stamp", m.sequence))?;
            Ok(StoredMessage {
                sequence: m.sequence,
                stored_ms,
                subject: m.subject,
                headers: Some(m.headers),
                payload: m.payload,
            })
        })
        .collect()
}

/// Time allowed for the direct get of a product's last events.
const LAST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The stock view's value for the product, if there is a readable one. Anything else
/// (no bucket, no key, a deleted key, a value that does not parse) means: read the log
/// from the start, which is always right, only slower.
async fn from_view(js: &Context, warehouse: &WarehouseId, sku: &Sku) -> Option<StockView> {
    let stream = js
        .get_stream_no_info(subjects::kv_stream(subjects::STOCK_BUCKET))
        .await
        .ok()?;
    let key = subjects::view_key(warehouse, sku);
    let msg = stream
        .direct_get_last_for_subject(subjects::kv_subject(subjects::STOCK_BUCKET, &key))
        .await
        .ok()?;
    let deleted = msg
        .headers
        .get(subjects::KV_OPERATION)
        .is_some_and(|op| op.as_str() != "PUT");
    if deleted {
        return None;
    }
    let view: StockView = serde_json::from_slice(&msg.payload).ok()?;
    (view.warehouse == *warehouse && view.sku == *sku).then_some(view)
}

/// Makes `out` conditional: stored only if the aggregate's last event is still `last_seq`.
pub fn expect_at(out: &mut Outbound, warehouse: &WarehouseId, sku: &Sku, last_seq: u64) {
    out.headers.insert(
        subjects::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
        last_seq.to_string().as_str(),
    );
    out.headers.insert(
        subjects::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT,
        subjects::aggregate(warehouse, sku).as_str(),
    );
}
