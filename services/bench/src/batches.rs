//! Atomic batches kept in flight: the raw batch loop, the publish of each projection
//! workload's events, and the ceiling loop's writes all send theirs this way, through the
//! same `stockwire::batch::Pipeline` the import and the view commits use.

use std::time::Duration;

use stockwire::batch::Pipeline;
use stockwire::envelope::Outbound;
use stockwire::retry::AppendError;

use crate::BATCHES_IN_FLIGHT;

/// Sends `batches` as atomic batches in order, up to [`BATCHES_IN_FLIGHT`] before the
/// oldest is acknowledged; returns the first and last sequence stored (none if no batch).
pub(crate) async fn send_batches(
    client: &async_nats::Client,
    batches: impl IntoIterator<Item = Vec<Outbound>>,
    timeout: Duration,
) -> Result<Option<(u64, u64)>, AppendError> {
    let mut stored: Option<(u64, u64)> = None;
    let mut pipeline = Pipeline::new(client, timeout, BATCHES_IN_FLIGHT, None);
    let mut batches = batches.into_iter();
    loop {
        while pipeline.has_room() {
            let Some(batch) = batches.next() else { break };
            pipeline.send((), batch).await?;
        }
        let Some((_, acked)) = pipeline.next().await else {
            return Ok(stored);
        };
        let ack = acked?;
        let first = stored.map_or(ack.first_sequence(), |(first, _)| first);
        stored = Some((first, ack.sequence));
    }
}
