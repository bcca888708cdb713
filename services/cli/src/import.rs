//! `stockwire publish --file FILE|-`: bulk import of facts recorded elsewhere.
//!
//! Every line is validated first; one bad line and nothing is published (exit 2, each bad
//! line named with its field). Then the events go out in file order, by one of two write
//! methods ([`WriteMethod`]): atomic batches of up to 1,000 (`batches`), or pipelined
//! single publishes chained to each other (`chained`). By default the import times both
//! on its first lines and keeps the faster for the rest. Either way each event is stored
//! once and in file order, whatever is retried. A line without `msg_id` gets one derived
//! from its line number and content, so re-running a file inside the duplicate window
//! stores nothing twice.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use serde::Serialize;
use stockwire::batch::MAX_BATCH;
use stockwire::connect::{connect_with, Startup};
use stockwire::domain::{Event, WarehouseId};
use stockwire::envelope::{Envelope, EventMeta, Outbound};
use stockwire::event_line::{self, LineError};
use stockwire::execute::UNAVAILABLE_FOR;
use stockwire::sites::Home;
use stockwire::subjects;

use crate::failure::{Failure, Outcome};
use crate::meta::{check_server_clock, now_ms, server_now_ms};
use crate::{output, Ctx};

mod batches;
mod chained;

/// At most this many bad lines are printed; the rest are counted.
const MAX_REPORTED: usize = 50;

/// A file at least this long is written both ways on its first lines, to pick the faster.
const PROBE_FROM: usize = 8 * MAX_BATCH;

/// Lines the probe writes by single publishes (between two batches of [`MAX_BATCH`]).
const PROBE_SINGLES: usize = MAX_BATCH / 2;

/// A line checked: its event, and the id and time it is recorded with.
pub(crate) type Checked = (Event, EventMeta);

/// The valid lines, ready to publish: each event with its line number. They are
/// encoded as they go out, so encoding overlaps the server storing the ones before.
#[derive(Default)]
struct Lines {
    events: Vec<Checked>,
    numbers: Vec<usize>,
}

/// How the import writes its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WriteMethod {
    /// Time both on the first 4,000 lines (of a file of 8,000 or more) and keep the faster.
    Auto,
    /// Atomic batches of 1,000, three in flight: fastest when the server fsyncs each
    /// acknowledgement (`sync_interval: always`).
    Batches,
    /// Pipelined single publishes, each expecting the one before it to be the stream's
    /// last message: fastest when the server syncs lazily.
    Singles,
}

impl WriteMethod {
    fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Batches => "batches",
            Self::Singles => "singles",
        }
    }
}

/// What each write method needs: the connection, and how events are encoded.
struct Writer<'a> {
    client: &'a async_nats::Client,
    js: &'a async_nats::jetstream::Context,
    envelope: &'a Envelope,
    timeout: Duration,
    /// Replicas of `INVENTORY`.
    replicas: usize,
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
    write_method: &'static str,
}

impl Summary {
    /// Counts the events stored as `first..=last`.
    fn stored_run(&mut self, first: u64, last: u64) {
        self.stored += (last + 1 - first) as usize;
        self.first_seq = Some(self.first_seq.map_or(first, |s| s.min(first)));
        self.last_seq = Some(self.last_seq.map_or(last, |s| s.max(last)));
    }
}

/// Returns the sequence of the last event the file stored, if any.
pub(crate) async fn run(
    ctx: &Ctx,
    file: &Path,
    method: WriteMethod,
) -> Result<Option<u64>, Failure> {
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
    check_homes(&js, &lines, file).await?;
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
    let writer = Writer {
        client: &client,
        js: &js,
        envelope: &ctx.envelope,
        timeout: ctx.connect.request_timeout(),
        replicas: inventory(&js).await?.config.num_replicas,
    };
    if let Err(failure) =
        publish_all(&writer, &lines, method, &mut summary, &mut last_line_stored).await
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
            "stored {} events{seqs}, {} duplicates not stored again, from {} lines in {:.2} s ({:.0} events/s, {})",
            summary.stored,
            summary.duplicates,
            summary.lines,
            summary.seconds,
            summary.events_per_s,
            summary.write_method
        ));
    }
    Ok(summary.last_seq)
}

/// Refuses the whole file when a line's warehouse records elsewhere (a site's events at
/// the hub, another warehouse's at a site), naming the lines.
async fn check_homes(
    js: &async_nats::jetstream::Context,
    lines: &Lines,
    file: &Path,
) -> Result<(), Failure> {
    let home = Home::of(js).await.map_err(anyhow::Error::new)?;
    let mut verdicts: HashMap<&WarehouseId, Option<String>> = HashMap::new();
    let mut refused: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for ((event, _), number) in lines.events.iter().zip(&lines.numbers) {
        let warehouse = event.warehouse();
        if !verdicts.contains_key(warehouse) {
            let why = home.refuses(warehouse).await.map_err(anyhow::Error::new)?;
            verdicts.insert(warehouse, why);
        }
        if let Some(Some(why)) = verdicts.get(warehouse) {
            refused.entry(why.clone()).or_default().push(*number);
        }
    }
    if refused.is_empty() {
        return Ok(());
    }
    let count: usize = refused.values().map(Vec::len).sum();
    let reasons: Vec<String> = refused
        .iter()
        .map(|(why, numbers)| {
            let shown: Vec<String> = numbers.iter().take(10).map(|n| n.to_string()).collect();
            let more = if numbers.len() > 10 {
                format!(" and {} more", numbers.len() - 10)
            } else {
                String::new()
            };
            format!("line {}{more}: {why}", shown.join(", "))
        })
        .collect();
    Err(Failure::invalid(format!(
        "{}: {count} lines record events this server does not keep, so nothing was \
         published: {}",
        file.display(),
        reasons.join("; ")
    )))
}

/// Writes events decided elsewhere (the simulator's backfill) the way an import writes
/// a file: in atomic batches, in order, each stored once. Returns the sequence of the
/// last one stored.
pub(crate) async fn write_events(
    client: &async_nats::Client,
    js: &async_nats::jetstream::Context,
    envelope: &Envelope,
    timeout: Duration,
    events: &[Checked],
) -> Result<Option<u64>, Failure> {
    let writer = Writer {
        client,
        js,
        envelope,
        timeout,
        replicas: inventory(js).await?.config.num_replicas,
    };
    let numbers: Vec<usize> = (1..=events.len()).collect();
    let mut summary = Summary::default();
    let mut last_stored = None;
    batches::publish(&writer, events, &numbers, &mut summary, &mut last_stored).await?;
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
    let mut events = Vec::with_capacity(checked);
    let mut numbers = Vec::with_capacity(checked);
    let mut errors: Vec<(usize, String)> = Vec::new();
    for Parsed { number, result } in parsed.into_iter().flatten() {
        match result {
            Ok(event) => {
                events.push(event);
                numbers.push(number);
            }
            Err(e) => errors.push((number, format!("line {number}: {e}"))),
        }
    }
    let mut seen_ids: HashMap<&str, usize> = HashMap::with_capacity(events.len());
    for ((_, meta), &number) in events.iter().zip(&numbers) {
        if let Some(first) = seen_ids.insert(&meta.msg_id, number) {
            errors.push((
                number,
                format!("line {number}: msg_id: repeats the msg_id of line {first}"),
            ));
        }
    }
    if errors.is_empty() {
        return Ok(Lines { events, numbers });
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

/// Publishes every line in file order by `method`; `Auto` writes the first lines both
/// ways, a thousand at a time and in turns, and keeps the faster for the rest (shorter
/// files go in batches). The
/// guarantees are the same either way (each event stored once, in file order; a re-run
/// stores nothing twice); only a failed import differs, by how much of it is stored:
/// whole batches, or single events.
async fn publish_all(
    w: &Writer<'_>,
    lines: &Lines,
    method: WriteMethod,
    summary: &mut Summary,
    last_line_stored: &mut Option<usize>,
) -> Outcome {
    let events = &lines.events[..];
    let mut from = 0;
    // On a replicated stream, nats-server (2.15) checks `Nats-Expected-Last-Msg-Id` only
    // as it applies a message, and a check that fails there stalls the stream: chained
    // singles are for streams of one replica.
    let replicas = w.replicas;
    let method = match method {
        WriteMethod::Singles if replicas > 1 => {
            return Err(Failure::invalid(format!(
                "--write-method singles needs INVENTORY at 1 replica, it has {replicas}: \
                 use batches (the default picks them); nothing was published"
            )))
        }
        WriteMethod::Auto if replicas > 1 => WriteMethod::Batches,
        method => method,
    };
    let method = match method {
        WriteMethod::Auto if events.len() >= PROBE_FROM => {
            // An untimed batch first (a cold connection), then each way in turn. Singles
            // go half as many at a time: where the server fsyncs each of them, a few
            // hundred show it, and a clear difference after one turn each decides.
            use WriteMethod::{Batches, Singles};
            let turns = [
                (Batches, MAX_BATCH),
                (Batches, MAX_BATCH),
                (Singles, PROBE_SINGLES),
                (Batches, MAX_BATCH),
                (Singles, PROBE_SINGLES),
            ];
            // How long a thousand lines took, each way.
            let (mut batches, mut singles) = (Duration::ZERO, Duration::ZERO);
            for (turn, (method, count)) in turns.into_iter().enumerate() {
                let range = from..from + count;
                let started = Instant::now();
                write(w, method, lines, range, summary, last_line_stored).await?;
                let took = started.elapsed() * (MAX_BATCH / count) as u32;
                from += count;
                match (turn, method) {
                    (0, _) => {}
                    (_, Batches) => batches += took,
                    (_, _) => singles += took,
                }
                if turn == 2 && (singles > batches * 3 || singles < batches) {
                    break;
                }
            }
            tracing::debug!(?batches, ?singles, "a thousand lines, each way");
            // The two differ by far more than a probe this short can measure: where the
            // server fsyncs each single publish they are ten times slower or more, and
            // where it does not, they beat batches once past the probe's first window
            // (1,024 in flight). So singles win unless clearly slower.
            if singles < batches * 3 / 2 {
                Singles
            } else {
                Batches
            }
        }
        WriteMethod::Auto => WriteMethod::Batches,
        chosen => chosen,
    };
    summary.write_method = method.name();
    let rest = from..events.len();
    write(w, method, lines, rest, summary, last_line_stored).await
}

/// Writes the lines in `range` by `method` (`Auto` writes batches).
async fn write(
    w: &Writer<'_>,
    method: WriteMethod,
    lines: &Lines,
    range: std::ops::Range<usize>,
    summary: &mut Summary,
    last_line_stored: &mut Option<usize>,
) -> Outcome {
    match method {
        WriteMethod::Singles => chained::publish(w, lines, range, summary, last_line_stored).await,
        WriteMethod::Auto | WriteMethod::Batches => {
            let (events, numbers) = (&lines.events[range.clone()], &lines.numbers[range]);
            batches::publish(w, events, numbers, summary, last_line_stored).await
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

/// The sequence of the last message of `INVENTORY`.
async fn stream_end(js: &async_nats::jetstream::Context) -> Result<u64, Failure> {
    Ok(inventory(js).await?.state.last_sequence)
}

/// What `INVENTORY` says of itself; asked again for a while when the stream does not
/// answer (a leader election).
async fn inventory(
    js: &async_nats::jetstream::Context,
) -> Result<async_nats::jetstream::stream::Info, Failure> {
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
                    .clone(),
            )
        }
        .await;
        match answer {
            Ok(info) => return Ok(info),
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
