//! The import's first write method: atomic batches of up to [`MAX_BATCH`] events, a few
//! in flight, each expecting the stream to end where the one before it does. Fastest when
//! the server fsyncs before each acknowledgement: a batch is stored and synced at once.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use stockwire::batch::{self, MAX_BATCH};
use stockwire::envelope::Outbound;
use stockwire::execute::UNAVAILABLE_FOR;
use stockwire::retry::{AppendError, AppendErrorKind, Backoff, Next};
use stockwire::subjects;

use super::{encode, stored_at, stream_end, Checked, Summary, Writer};
use crate::failure::{Failure, Outcome};

/// Batches sent before the oldest one is acknowledged.
const IN_FLIGHT: usize = 3;

/// Unacknowledged single publishes in flight, when a batch falls back to them.
const WINDOW: usize = 256;

/// Publishes `events` in file order: atomic batches, up to [`IN_FLIGHT`] of them sent
/// before the oldest is acknowledged. Each batch expects the stream's last sequence to be
/// where the previous batch ends, so batches land in order and back to back, or not at
/// all. When one is refused (a repeated id, or another writer got in between), the ones
/// sent after it are refused too; that chunk is then published on its own
/// ([`publish_chunk`]) and pipelining resumes from the stream's new end.
pub(super) async fn publish(
    w: &Writer<'_>,
    events: &[Checked],
    numbers: &[usize],
    summary: &mut Summary,
    last_line_stored: &mut Option<usize>,
) -> Outcome {
    let (client, js, envelope, timeout) = (w.client, w.js, w.envelope, w.timeout);
    let chunks: Vec<(&[Checked], &[usize])> = events
        .chunks(MAX_BATCH)
        .zip(numbers.chunks(MAX_BATCH))
        .collect();
    let mut pipeline =
        batch::Pipeline::new(client, timeout, IN_FLIGHT, Some(stream_end(js).await?));
    let mut next = 0;
    loop {
        while pipeline.has_room() && next < chunks.len() {
            let (events, _) = chunks[next];
            let after = pipeline.expected();
            pipeline
                .send((next, after), encode(envelope, events))
                .await
                .context("sending a batch")?;
            next += 1;
        }
        let Some(((index, after), acked)) = pipeline.next().await else {
            return Ok(());
        };
        let (events, numbers) = chunks[index];
        // A batch whose answer was lost may have been stored: it would be right after the
        // end it expected.
        let acked = match (acked, after) {
            (Err(e), Some(after)) if e.kind().next() == Next::Retry => {
                let first_id = events.first().map_or("", |(_, meta)| meta.msg_id.as_str());
                if stored_at(js, after + 1, first_id).await? {
                    Ok(batch::BatchAck {
                        stream: subjects::INVENTORY_STREAM.to_string(),
                        sequence: after + events.len() as u64,
                        batch_id: String::new(),
                        count: events.len() as u64,
                    })
                } else {
                    Err(e)
                }
            }
            (acked, _) => acked,
        };
        match acked {
            Ok(ack) => {
                summary.stored_run(ack.first_sequence(), ack.sequence);
                *last_line_stored = numbers.last().copied();
            }
            Err(e)
                if e.kind() == AppendErrorKind::BatchDuplicate
                    || matches!(e.kind().next(), Next::Decide | Next::Retry) =>
            {
                // A repeated id, another writer (on a replicated stream, 10164 while the
                // batch before is still being stored), or a leader election: the
                // batches sent after this one expected it to be stored, so they are
                // refused (or their fate is as unknown as its own); this chunk is
                // published on its own, then the pipeline resumes from the stream's end.
                tracing::debug!(batch = index, error = %e, "batch not stored in turn; publishing it alone");
                while let Some(((later, _), acked)) = pipeline.next().await {
                    if let Ok(ack) = acked {
                        tracing::warn!(
                            batch = later,
                            seq = ack.sequence,
                            "a later batch was stored out of turn"
                        );
                        summary.stored_run(ack.first_sequence(), ack.sequence);
                    }
                }
                let messages = encode(envelope, events);
                publish_chunk(client, js, messages, numbers, timeout, true, summary).await?;
                *last_line_stored = numbers.last().copied();
                next = index + 1;
                pipeline.expect(Some(stream_end(js).await?));
            }
            Err(e) => {
                return Err(Failure::from(anyhow::Error::new(e).context(format!(
                    "publishing lines {}..{}",
                    numbers.first().copied().unwrap_or(0),
                    numbers.last().copied().unwrap_or(0)
                ))))
            }
        }
    }
}

/// Publishes one chunk as an atomic batch; on a repeated id, one event at a time. While
/// the stream cannot take it (no leader during an election, an incomplete batch, a lost
/// acknowledgement), it is sent again for up to `UNAVAILABLE_FOR`.
///
/// With `at_end`, the batch expects the stream's end, and before it is sent again the
/// message where it would have landed says whether an attempt whose answer was lost had
/// in fact been stored: a stream's new leader may not yet know the msg ids its
/// predecessor was storing, so on a replicated stream the duplicate window alone would
/// let such a batch in twice. Without it (a stream of one replica, where the duplicate
/// window is the stream's own), the batch lands wherever the stream ends, however busy.
pub(super) async fn publish_chunk(
    client: &async_nats::Client,
    js: &async_nats::jetstream::Context,
    messages: Vec<Outbound>,
    numbers: &[usize],
    timeout: Duration,
    at_end: bool,
    summary: &mut Summary,
) -> Outcome {
    let count = messages.len();
    let first_id = msg_id_of(&messages);
    let started = Instant::now();
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
    loop {
        let end = if at_end {
            Some(stream_end(js).await?)
        } else {
            None
        };
        let sent = batch::send_atomic(client, messages.clone(), end, timeout).await;
        let acked = match sent {
            Ok(sent) => sent.ack().await,
            Err(e) => Err(e),
        };
        match (acked, end) {
            (Ok(ack), _) => {
                summary.stored_run(ack.first_sequence(), ack.sequence);
                return Ok(());
            }
            (Err(e), _) if e.kind() == AppendErrorKind::BatchDuplicate => {
                tracing::debug!(
                    lines = count,
                    "batch holds a stored msg id; publishing one by one"
                );
                return publish_singly(js, messages, summary).await;
            }
            (Err(e), Some(end))
                if e.kind().next() == Next::Retry && stored_at(js, end + 1, &first_id).await? =>
            {
                tracing::debug!(error = %e, "the batch was stored although its answer was lost");
                summary.stored_run(end + 1, end + count as u64);
                return Ok(());
            }
            (Err(e), _)
                if (e.kind().next() == Next::Retry || e.kind().next() == Next::Decide)
                    && started.elapsed() < UNAVAILABLE_FOR =>
            {
                tracing::debug!(error = %e, "the stream cannot take the batch yet; sending it again");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            (Err(e), _) => {
                return Err(Failure::from(anyhow::Error::new(e).context(format!(
                    "publishing lines {}..{}",
                    numbers.first().copied().unwrap_or(0),
                    numbers.last().copied().unwrap_or(0)
                ))))
            }
        }
    }
}

/// The msg id of the first message (empty if none).
fn msg_id_of(messages: &[Outbound]) -> String {
    messages
        .first()
        .and_then(|m| m.headers.get(subjects::NATS_MSG_ID))
        .map(|v| v.to_string())
        .unwrap_or_default()
}

/// Publishes in order with a window of unacknowledged publishes. One that the stream
/// could not take is published again, alone and with the same msg id, until it is
/// stored: it may then land after the ones sent behind it in its window.
async fn publish_singly(
    js: &async_nats::jetstream::Context,
    messages: Vec<Outbound>,
    summary: &mut Summary,
) -> Outcome {
    let mut messages = messages.into_iter().peekable();
    while messages.peek().is_some() {
        let window: Vec<Outbound> = messages.by_ref().take(WINDOW).collect();
        let mut pending = Vec::with_capacity(window.len());
        for out in &window {
            let ack = js
                .publish_with_headers(
                    out.subject.clone(),
                    out.headers.clone(),
                    out.payload.clone(),
                )
                .await;
            pending.push(async move {
                match ack {
                    Ok(ack) => ack.await,
                    Err(e) => Err(e),
                }
            });
        }
        let acks = futures::future::join_all(pending).await;
        for (out, ack) in window.into_iter().zip(acks) {
            let ack = match ack {
                Ok(ack) => ack,
                Err(e) => match AppendError::from(e) {
                    e if e.kind().next() == Next::Retry => publish_again(js, out).await?,
                    e => {
                        return Err(Failure::from(
                            e.context(format!("publishing to {}", out.subject)),
                        ))
                    }
                },
            };
            if ack.duplicate {
                summary.duplicates += 1;
            } else {
                summary.stored_run(ack.sequence, ack.sequence);
            }
        }
    }
    Ok(())
}

/// Publishes one message until it is stored (or found stored: same msg id), for up to
/// `UNAVAILABLE_FOR`.
async fn publish_again(
    js: &async_nats::jetstream::Context,
    out: Outbound,
) -> Result<async_nats::jetstream::publish::PublishAck, Failure> {
    let started = Instant::now();
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
    loop {
        tokio::time::sleep(backoff.next_delay()).await;
        let result = batch::publish_acked(js, out.clone()).await;
        match result {
            Ok(ack) => return Ok(ack),
            Err(e) if e.kind().next() == Next::Retry && started.elapsed() < UNAVAILABLE_FOR => {}
            Err(e) => return Err(Failure::from(e)),
        }
    }
}
