//! Atomic batches kept in flight: the raw batch loop, the publish of each projection
//! workload's events, and the ceiling loop's writes all send theirs this way.

use std::collections::VecDeque;
use std::time::Duration;

use stockwire::batch::{send_atomic, BatchAck, SentBatch};
use stockwire::envelope::Outbound;

use crate::BATCHES_IN_FLIGHT;

/// Sends `batches` as atomic batches in order, up to [`BATCHES_IN_FLIGHT`] before the
/// oldest is acknowledged; returns the first and last sequence stored (none if no batch).
pub(crate) async fn send_batches(
    client: &async_nats::Client,
    batches: impl IntoIterator<Item = Vec<Outbound>>,
    timeout: Duration,
) -> Result<Option<(u64, u64)>, stockwire::retry::AppendError> {
    let mut stored: Option<(u64, u64)> = None;
    let mut note = |ack: BatchAck| {
        let first = stored.map_or(ack.first_sequence(), |(first, _)| first);
        stored = Some((first, ack.sequence));
    };
    let mut in_flight: VecDeque<SentBatch> = VecDeque::with_capacity(BATCHES_IN_FLIGHT);
    for batch in batches {
        if in_flight.len() == BATCHES_IN_FLIGHT {
            if let Some(sent) = in_flight.pop_front() {
                note(sent.ack().await?);
            }
        }
        in_flight.push_back(send_atomic(client, batch, None, timeout).await?);
    }
    for sent in in_flight {
        note(sent.ack().await?);
    }
    Ok(stored)
}
