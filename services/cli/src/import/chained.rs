//! The import's second write method: pipelined single publishes, chained. The first
//! expects the stream's last sequence to be where the stream ended; each one after it
//! expects the stream's last message to be the one before it (`Nats-Expected-Last-Msg-Id`).
//! So they land in file order and back to back, or not at all: once one is not stored,
//! none after it is, whoever else writes meanwhile. Faster than atomic batches when the
//! server does not fsync before each acknowledgement: a batch costs a few milliseconds of
//! staging whatever its size, a single publish a fraction of one.
//!
//! When an answer is anything but "stored", every publish in flight is taken stock of:
//! those stored count, repeats count as duplicates, and the rest are published again as
//! atomic batches ([`batches::publish_chunk`]) in file order, wherever the stream then
//! ends, before a new chain starts from there.
//!
//! Only for a stream of one replica: on a replicated stream nats-server (2.15) checks
//! `Nats-Expected-Last-Msg-Id` only as it applies a message, and a check that fails there
//! stalls the stream (`publish_all` keeps singles off such streams).

use std::collections::VecDeque;

use async_nats::jetstream::context::{PublishAckFuture, PublishError};
use async_nats::jetstream::publish::PublishAck;
use stockwire::batch::MAX_BATCH;
use stockwire::retry::{AppendError, Next};
use stockwire::subjects;

use super::{batches, encode, stored_at, stream_end, Checked, Lines, Summary, Writer};
use crate::failure::{Failure, Outcome};

/// Unacknowledged publishes in flight.
const WINDOW: usize = 1024;

/// A publish in flight: its index, the sequence it lands at if stored, and its answer.
struct Sent {
    index: usize,
    at: u64,
    ack: PublishAckFuture,
}

/// Publishes the lines in `range`, in order, each encoded as it goes out.
pub(super) async fn publish(
    w: &Writer<'_>,
    lines: &Lines,
    range: std::ops::Range<usize>,
    summary: &mut Summary,
    last_line_stored: &mut Option<usize>,
) -> Outcome {
    let (events, numbers) = (&lines.events[range.clone()], &lines.numbers[range]);
    if events.is_empty() {
        return Ok(());
    }
    let mut end = stream_end(w.js).await?;
    let mut in_flight: VecDeque<Sent> = VecDeque::with_capacity(WINDOW);
    let mut next = 0;
    // The msg id of the publish before `next` in the chain (none: `next` starts one).
    let mut chained_to: Option<&str> = None;
    loop {
        while in_flight.len() < WINDOW && next < events.len() {
            let (event, meta) = &events[next];
            let mut out = w.envelope.encode(event, meta);
            match chained_to {
                Some(before) => out
                    .headers
                    .insert(subjects::NATS_EXPECTED_LAST_MSG_ID, before),
                None => out.headers.insert(
                    subjects::NATS_EXPECTED_LAST_SEQUENCE,
                    end.to_string().as_str(),
                ),
            }
            let line = numbers[next];
            let ack = w
                .js
                .publish_with_headers(out.subject, out.headers, out.payload)
                .await
                .map_err(|e| {
                    Failure::from(AppendError::from(e).context(format!("publishing line {line}")))
                })?;
            end += 1;
            in_flight.push_back(Sent {
                index: next,
                at: end,
                ack,
            });
            chained_to = Some(&meta.msg_id);
            next += 1;
        }
        let Some(sent) = in_flight.pop_front() else {
            return Ok(());
        };
        let (index, at) = (sent.index, sent.at);
        match sent.ack.await {
            Ok(ack) if !ack.duplicate && ack.sequence == at => {
                summary.stored_run(at, at);
                *last_line_stored = Some(numbers[index]);
                continue;
            }
            first => {
                // The chain broke here: take stock of everything in flight.
                let mut again = Vec::new();
                settle(w, events, (index, at), first, summary, &mut again).await?;
                while let Some(sent) = in_flight.pop_front() {
                    let answer = sent.ack.await;
                    settle(
                        w,
                        events,
                        (sent.index, sent.at),
                        answer,
                        summary,
                        &mut again,
                    )
                    .await?;
                }
                tracing::debug!(
                    line = numbers[index],
                    again = again.len(),
                    "a publish was not stored in turn; publishing the rest of the window again"
                );
                for piece in again.chunks(MAX_BATCH) {
                    let chunk: Vec<Checked> = piece.iter().map(|&k| events[k].clone()).collect();
                    let lines: Vec<usize> = piece.iter().map(|&k| numbers[k]).collect();
                    let messages = encode(w.envelope, &chunk);
                    // Single publishes run on a stream of one replica: these may land
                    // wherever the stream ends, after every line before them.
                    let (client, js, timeout) = (w.client, w.js, w.timeout);
                    batches::publish_chunk(client, js, messages, &lines, timeout, false, summary)
                        .await?;
                }
                *last_line_stored = Some(numbers[next - 1]);
                end = stream_end(w.js).await?;
                chained_to = None;
            }
        }
    }
}

/// Takes stock of one answer: stored, a repeat, or (pushed to `again`) not stored. An
/// answer that was lost may hide a publish that was stored: if so it is where the chain
/// put it, so the message at `at` says.
async fn settle(
    w: &Writer<'_>,
    events: &[Checked],
    (index, at): (usize, u64),
    answer: Result<PublishAck, PublishError>,
    summary: &mut Summary,
    again: &mut Vec<usize>,
) -> Outcome {
    match answer {
        Ok(ack) if ack.duplicate => summary.duplicates += 1,
        Ok(ack) => summary.stored_run(ack.sequence, ack.sequence),
        Err(e) => {
            let e = AppendError::from(e);
            let msg_id = &events[index].1.msg_id;
            if e.kind().next() != Next::Decide && stored_at(w.js, at, msg_id).await? {
                summary.stored_run(at, at);
            } else {
                tracing::debug!(error = %e, "not stored in turn");
                again.push(index);
            }
        }
    }
    Ok(())
}
