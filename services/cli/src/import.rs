//! `stockwire publish --file FILE|-`: bulk import of facts recorded elsewhere.
//!
//! Every line is validated first; one bad line and nothing is published (exit 2, each bad
//! line named with its field). Then the events go out in file order as atomic batches of
//! up to 1,000, each committed with one PubAck. A line without `msg_id` gets one derived
//! from its line number and content, so re-running a file inside the duplicate window
//! stores nothing twice: a batch that repeats a stored id is refused whole by the server,
//! and is then published one event at a time (pipelined), each deduplicated on its own.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use serde::Serialize;
use stockwire::batch::{self, MAX_BATCH};
use stockwire::domain::Event;
use stockwire::envelope::{Envelope, EventMeta, Outbound};
use stockwire::event_line::{self, LineError};
use stockwire::execute::UNAVAILABLE_FOR;
use stockwire::retry::{AppendErrorKind, Backoff, Next};
use stockwire::subjects;

use crate::failure::{Failure, Outcome};
use crate::meta::{check_server_clock, now_ms, server_now_ms};
use crate::{output, Ctx};
use stockwire::connect::{connect_with, Startup};
use stockwire::retry::AppendError;

/// At most this many bad lines are printed; the rest are counted.
const MAX_REPORTED: usize = 50;

/// Batches sent before the oldest one is acknowledged.
const IN_FLIGHT: usize = 3;

/// Unacknowledged single publishes in flight, when a batch falls back to them.
const WINDOW: usize = 256;

/// A line checked: its event, and the id and time it is recorded with.
type Checked = (Event, EventMeta);

/// The valid lines, ready to publish: each event with its line number. They are
/// encoded batch by batch as they go out, so encoding overlaps the server storing the
/// batches before.
#[derive(Default)]
struct Lines {
    events: Vec<Checked>,
    numbers: Vec<usize>,
}

#[derive(Debug, Default, Serialize)]
struct Summary {
    lines: usize,
    stored: usize,
    duplicates: usize,
    first_seq: Option<u64>,
    last_seq: Option<u64>,
    seconds: f64,
    events_per_s: f64,
}

/// Returns the sequence of the last event the file stored, if any.
pub(crate) async fn run(ctx: &Ctx, file: &Path) -> Result<Option<u64>, Failure> {
    let started = Instant::now();
    // Connect while the file is read and checked; nothing is sent before every line is valid.
    let connecting = {
        let (args, signals) = (ctx.connect.clone(), ctx.signals.clone());
        tokio::spawn(async move {
            connect_with(&args, "stockwire-cli", Startup::FailFast, &signals).await
        })
    };
    let text = read_input(file)?;
    let lines = parse_all(&text, file)?;
    drop(text);
    tracing::debug!(lines = lines.numbers.len(), elapsed = ?started.elapsed(), "file checked");
    let client = connecting
        .await
        .map_err(|e| anyhow::anyhow!("connecting: {e}"))?
        .map_err(anyhow::Error::new)?;
    let js = async_nats::jetstream::new(client.clone());
    let timeout = ctx.connect.request_timeout();
    let latest = lines
        .events
        .iter()
        .zip(&lines.numbers)
        .max_by_key(|((_, meta), _)| meta.timestamp_ms);
    if let Some(((_, meta), number)) = latest {
        let server_now = server_now_ms(&js).await?;
        check_server_clock(&format!("line {number}"), meta.timestamp_ms, server_now)?;
    }

    let mut summary = Summary {
        lines: lines.numbers.len(),
        ..Summary::default()
    };
    let mut last_line_stored: Option<usize> = None;
    if let Err(failure) = publish_all(
        &client,
        &js,
        &ctx.envelope,
        &lines,
        timeout,
        &mut summary,
        &mut last_line_stored,
    )
    .await
    {
        let where_ = match last_line_stored {
            Some(n) => format!("every line up to line {n} is stored"),
            None => "no line was stored".to_string(),
        };
        return Err(Failure {
            kind: failure.kind,
            error: failure
                .error
                .context(format!("importing {}: {where_}", file.display())),
        });
    }
    summary.seconds = started.elapsed().as_secs_f64();
    summary.events_per_s = if summary.seconds > 0.0 {
        summary.lines as f64 / summary.seconds
    } else {
        0.0
    };
    tracing::debug!(elapsed = ?started.elapsed(), "file published");
    if ctx.json {
        output::json_line(&summary);
    } else {
        let seqs = match (summary.first_seq, summary.last_seq) {
            (Some(a), Some(b)) => format!(" as #{a}..#{b}"),
            _ => String::new(),
        };
        output::line(format!(
            "stored {} events{seqs}, {} duplicates not stored again, from {} lines in {:.2} s ({:.0} events/s)",
            summary.stored, summary.duplicates, summary.lines, summary.seconds, summary.events_per_s
        ));
    }
    Ok(summary.last_seq)
}

fn read_input(file: &Path) -> Result<String, Failure> {
    let mut text = String::new();
    if file.as_os_str() == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| Failure::invalid(format!("reading standard input: {e}")))?;
    } else {
        text = std::fs::read_to_string(file)
            .map_err(|e| Failure::invalid(format!("reading {}: {e}", file.display())))?;
    }
    Ok(text)
}

/// Validates every line; returns them all, or a failure that lists each bad line.
fn parse_all(text: &str, file: &Path) -> Result<Lines, Failure> {
    let now = now_ms();
    let raw: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| (i + 1, l))
        .collect();
    // Lines are independent: check them on every core, then merge in file order.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    let per_thread = raw.len().div_ceil(threads).max(1);
    let parsed: Vec<Vec<Parsed>> = std::thread::scope(|scope| {
        let workers: Vec<_> = raw
            .chunks(per_thread)
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|&(number, line)| Parsed {
                            number,
                            result: event_line::parse(line, number, now),
                        })
                        .collect()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_default())
            .collect()
    });

    let checked: usize = parsed.iter().map(Vec::len).sum();
    if checked != raw.len() {
        return Err(Failure::invalid(format!(
            "{}: checking the lines failed; nothing was published",
            file.display()
        )));
    }
    let mut lines = Lines {
        events: Vec::with_capacity(checked),
        numbers: Vec::with_capacity(checked),
    };
    let mut errors: Vec<(usize, String)> = Vec::new();
    for Parsed { number, result } in parsed.into_iter().flatten() {
        match result {
            Ok(event) => {
                lines.events.push(event);
                lines.numbers.push(number);
            }
            Err(e) => errors.push((number, format!("line {number}: {e}"))),
        }
    }
    let mut seen_ids: HashMap<&str, usize> = HashMap::with_capacity(lines.events.len());
    for ((_, meta), &number) in lines.events.iter().zip(&lines.numbers) {
        if let Some(first) = seen_ids.insert(&meta.msg_id, number) {
            errors.push((
                number,
                format!("line {number}: msg_id: repeats the msg_id of line {first}"),
            ));
        }
    }
    if errors.is_empty() {
        return Ok(lines);
    }
    errors.sort_by_key(|(number, _)| *number);
    for (_, e) in errors.iter().take(MAX_REPORTED) {
        eprintln!("{e}");
    }
    if errors.len() > MAX_REPORTED {
        eprintln!("... and {} more", errors.len() - MAX_REPORTED);
    }
    Err(Failure::invalid(format!(
        "{}: {} invalid line{}; nothing was published",
        file.display(),
        errors.len(),
        if errors.len() == 1 { "" } else { "s" }
    )))
}

/// One line, checked and encoded (or what is wrong with it).
struct Parsed {
    number: usize,
    result: Result<Checked, LineError>,
}

/// Publishes every line in file order: atomic batches, up to [`IN_FLIGHT`] of them sent
/// before the oldest is acknowledged. Each batch expects the stream's last sequence to be
/// where the previous batch ends, so batches land in order and back to back, or not at
/// all. When one is refused (a repeated id, or another writer got in between), the ones
/// sent after it are refused too; that chunk is then published on its own
/// ([`publish_chunk`]) and pipelining resumes from the stream's new end.
async fn publish_all(
    client: &async_nats::Client,
    js: &async_nats::jetstream::Context,
    envelope: &Envelope,
    lines: &Lines,
    timeout: Duration,
    summary: &mut Summary,
    last_line_stored: &mut Option<usize>,
) -> Outcome {
    let chunks: Vec<(&[Checked], &[usize])> = lines
        .events
        .chunks(MAX_BATCH)
        .zip(lines.numbers.chunks(MAX_BATCH))
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
                summary.stored += events.len();
                summary.first_seq.get_or_insert(ack.first_sequence());
                summary.last_seq = Some(ack.sequence);
                *last_line_stored = numbers.last().copied();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    AppendErrorKind::BatchDuplicate | AppendErrorKind::WrongLastSequence
                ) || e.kind().next() == Next::Retry =>
            {
                // A repeated id, another writer, or (in a cluster) a leader election: the
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
                        summary.stored += chunks[later].0.len();
                    }
                }
                let messages = encode(envelope, events);
                publish_chunk(client, js, messages, numbers, timeout, summary).await?;
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

/// The messages of `events`, in order.
fn encode(envelope: &Envelope, events: &[Checked]) -> Vec<Outbound> {
    events
        .iter()
        .map(|(event, meta)| envelope.encode(event, meta))
        .collect()
}

/// The sequence of the last message of `INVENTORY`; asked again for a while when the
/// stream does not answer (a leader election).
async fn stream_end(js: &async_nats::jetstream::Context) -> Result<u64, Failure> {
    let started = Instant::now();
    loop {
        let answer = async {
            let mut stream = js
                .get_stream(stockwire::subjects::INVENTORY_STREAM)
                .await
                .context("finding stream INVENTORY (run `stockwire setup` first)")?;
            Ok::<_, anyhow::Error>(
                stream
                    .info()
                    .await
                    .context("reading stream INVENTORY")?
                    .state
                    .last_sequence,
            )
        }
        .await;
        match answer {
            Ok(last) => return Ok(last),
            Err(e)
                if started.elapsed() < UNAVAILABLE_FOR && !e.to_string().contains("not found") =>
            {
                tracing::debug!(error = %e, "INVENTORY does not answer yet; asking again");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Publishes one chunk as an atomic batch, expecting the stream's end; on a repeated id,
/// one event at a time. While the stream cannot take it (no leader during an election,
/// an incomplete batch, a lost acknowledgement), it is sent again for up to
/// `UNAVAILABLE_FOR`, but only after looking where it would have landed: a batch is
/// stored whole right after the end it expected, or not at all, so the message there says
/// whether an attempt whose answer was lost had in fact been stored. (A stream's new
/// leader may not yet know the msg ids its predecessor was storing, so the duplicate
/// window alone would let such a batch in twice.)
async fn publish_chunk(
    client: &async_nats::Client,
    js: &async_nats::jetstream::Context,
    messages: Vec<Outbound>,
    numbers: &[usize],
    timeout: Duration,
    summary: &mut Summary,
) -> Outcome {
    let count = messages.len();
    let first_id = msg_id_of(&messages);
    let started = Instant::now();
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
    loop {
        let end = stream_end(js).await?;
        let sent = batch::send_atomic(client, messages.clone(), Some(end), timeout).await;
        let acked = match sent {
            Ok(sent) => sent.ack().await,
            Err(e) => Err(e),
        };
        match acked {
            Ok(ack) => {
                summary.stored += count;
                summary.first_seq.get_or_insert(ack.first_sequence());
                summary.last_seq = Some(ack.sequence);
                return Ok(());
            }
            Err(e) if e.kind() == AppendErrorKind::BatchDuplicate => {
                tracing::debug!(
                    lines = count,
                    "batch holds a stored msg id; publishing one by one"
                );
                return publish_singly(js, messages, summary).await;
            }
            Err(e)
                if e.kind().next() == Next::Retry && stored_at(js, end + 1, &first_id).await? =>
            {
                tracing::debug!(error = %e, "the batch was stored although its answer was lost");
                summary.stored += count;
                summary.first_seq.get_or_insert(end + 1);
                summary.last_seq = Some(end + count as u64);
                return Ok(());
            }
            Err(e)
                if (e.kind().next() == Next::Retry
                    || e.kind() == AppendErrorKind::WrongLastSequence)
                    && started.elapsed() < UNAVAILABLE_FOR =>
            {
                tracing::debug!(error = %e, "the stream cannot take the batch yet; sending it again");
                tokio::time::sleep(backoff.next_delay()).await;
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

/// The msg id of the first message (empty if none).
fn msg_id_of(messages: &[Outbound]) -> String {
    messages
        .first()
        .and_then(|m| m.headers.get(subjects::NATS_MSG_ID))
        .map(|v| v.to_string())
        .unwrap_or_default()
}

/// Whether the message stored at `seq` in `INVENTORY` carries `msg_id` (asked of the
/// stream's leader; asked again while it has none).
async fn stored_at(
    js: &async_nats::jetstream::Context,
    seq: u64,
    msg_id: &str,
) -> Result<bool, Failure> {
    let started = Instant::now();
    loop {
        let stream = js
            .get_stream_no_info(subjects::INVENTORY_STREAM)
            .await
            .context("finding stream INVENTORY")?;
        match stream.get_raw_message(seq).await {
            Ok(msg) => {
                return Ok(msg
                    .headers
                    .get(subjects::NATS_MSG_ID)
                    .is_some_and(|id| id.as_str() == msg_id))
            }
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(false),
            Err(e) if started.elapsed() < UNAVAILABLE_FOR => {
                tracing::debug!(error = %e, seq, "cannot read the message yet; asking again");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => {
                return Err(Failure::from(
                    anyhow::Error::new(e).context(format!("reading INVENTORY #{seq}")),
                ))
            }
        }
    }
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
                summary.stored += 1;
                summary.first_seq.get_or_insert(ack.sequence);
                summary.last_seq = Some(ack.sequence);
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
