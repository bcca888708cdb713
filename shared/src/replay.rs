//! Replaying the log into memory: the stock of every product as the events say, computed
//! with the same `apply` the projector uses. `stockwire verify` compares it with the view,
//! `stockwire stock --as-of` shows it for a moment in the past.

use async_nats::jetstream::Context;

use crate::domain::StockBook;
use crate::envelope::Envelope;
use crate::read::{ReadError, Reader};
use crate::subjects;

/// The outcome of a replay.
#[derive(Debug, Default)]
pub struct Replay {
    pub book: StockBook,
    /// Events applied.
    pub applied: u64,
    /// Messages that are not valid events (the projector dead-letters them).
    pub invalid: u64,
    /// The sequence of the last message read (0 for an empty log).
    pub last_seq: u64,
}

/// Replays every event of `INVENTORY` in stream order; with `as_of_ms`, only those whose
/// event time is at or before it.
pub async fn stock(
    js: &Context,
    envelope: &Envelope,
    as_of_ms: Option<i64>,
) -> Result<Replay, ReadError> {
    let mut reader = Reader::open(
        js,
        subjects::INVENTORY_STREAM,
        subjects::INVENTORY_SUBJECTS,
        1,
    )
    .await?;
    let mut replay = Replay::default();
    while let Some(stored) = reader.next().await {
        let stored = stored?;
        replay.last_seq = stored.sequence;
        match envelope.decode_stored(&stored) {
            Ok(rec) => {
                if as_of_ms.is_some_and(|t| rec.meta.timestamp_ms > t) {
                    continue;
                }
                replay
                    .book
                    .apply(&rec.event, stored.sequence, rec.meta.timestamp_ms);
                replay.applied += 1;
            }
            Err(_) => replay.invalid += 1,
        }
    }
    Ok(replay)
}
