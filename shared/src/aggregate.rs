//! The command side: loading one aggregate (a product in a warehouse) from its own events,
//! and making a publish conditional on the aggregate not having moved since.
//!
//! `Nats-Expected-Last-Subject-Sequence` with `Nats-Expected-Last-Subject-Sequence-Subject:
//! warehouse.{w}.product.{sku}.*` makes JetStream refuse the event if any event of the
//! aggregate was stored after the one the decision was made on.

use std::collections::HashMap;

use async_nats::jetstream::Context;

use crate::domain::{evolve, Locations, Sku, WarehouseId};
use crate::envelope::{Envelope, Outbound};
use crate::read::{ReadError, Reader};
use crate::subjects;

/// What one aggregate's events say, and where they end.
#[derive(Debug, Default)]
pub struct Aggregate {
    pub locations: Locations,
    /// The stream sequence of its last event (0: none).
    pub last_seq: u64,
    msg_ids: HashMap<String, u64>,
}

impl Aggregate {
    /// Where an event with this msg id is stored, if it is (a command whose PubAck was lost).
    pub fn stored(&self, msg_id: &str) -> Option<u64> {
        self.msg_ids.get(msg_id).copied()
    }
}

/// Folds every event of one aggregate, oldest first. Messages that are not valid events
/// change nothing but still count for `last_seq`.
pub async fn load(
    js: &Context,
    envelope: &Envelope,
    warehouse: &WarehouseId,
    sku: &Sku,
) -> Result<Aggregate, ReadError> {
    let filter = subjects::aggregate(warehouse, sku);
    let mut reader = Reader::open(js, subjects::INVENTORY_STREAM, &filter, 1).await?;
    let mut aggregate = Aggregate::default();
    while let Some(stored) = reader.next().await {
        let stored = stored?;
        aggregate.last_seq = stored.sequence;
        if let Ok(rec) = envelope.decode_stored(&stored) {
            aggregate.locations = evolve(std::mem::take(&mut aggregate.locations), &rec.event);
            aggregate.msg_ids.insert(rec.meta.msg_id, stored.sequence);
        }
    }
    Ok(aggregate)
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
