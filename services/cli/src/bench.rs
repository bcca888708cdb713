//! `stockwire bench`: Stockwire's figures next to the raw JetStream ceiling, measured in
//! the same run against the same server, so a noisy machine cancels out of the ratios.
//!
//! Ingest: `stockwire publish --file` (this binary, run as a user runs it) against two
//! plain loops over the same events: pipelined single publishes with a window of
//! unacknowledged ones, and atomic batches of 1,000 (three in flight, as the import
//! keeps). The faster loop is the ceiling.
//!
//! It writes events into `INVENTORY` (warehouse `bench`), so it refuses a server whose
//! log already holds events unless told otherwise; `scripts/bench` runs it on a fresh one.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use serde::Serialize;
use stockwire::batch::{self, MAX_BATCH};
use stockwire::domain::{Event, Location, Quantity, Sku, WarehouseId};
use stockwire::envelope::{EventMeta, Outbound};
use stockwire::subjects;

use crate::failure::{Failure, Outcome};
use crate::publish::now_ms;
use crate::{output, Ctx};

/// Unacknowledged publishes in flight in the pipelined loop.
const WINDOW: usize = 1024;

/// Atomic batches in flight in the batch loop (as many as `publish --file` keeps).
const BATCHES_IN_FLIGHT: usize = 3;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A short run: 20,000 events per figure instead of 100,000.
    #[arg(long)]
    quick: bool,
    /// Events per figure (overrides the default of the mode).
    #[arg(long)]
    events: Option<usize>,
    /// Products the events are spread over.
    #[arg(long, default_value_t = 100)]
    products: usize,
    /// Also write the figures as JSON to this file.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// How the server syncs to disk, for the report (scripts/bench sets it).
    #[arg(long, env = "STOCKWIRE_BENCH_FSYNC", default_value = "unknown")]
    fsync: String,
    /// Run even though INVENTORY already holds events (the bench adds its own).
    #[arg(long)]
    allow_existing: bool,
}

#[derive(Debug, Serialize)]
struct Machine {
    cores: usize,
    nats_server_version: String,
}

#[derive(Debug, Serialize)]
struct Report {
    events: usize,
    products: usize,
    fsync: String,
    machine: Machine,
    raw_pipelined_per_s: f64,
    raw_batch_per_s: f64,
    raw_publish_per_s: f64,
    ingest_events_per_s: f64,
    ingest_ratio: f64,
}

pub(crate) async fn run(ctx: &Ctx, args: BenchArgs) -> Outcome {
    let events = args
        .events
        .unwrap_or(if args.quick { 20_000 } else { 100_000 });
    if events == 0 || args.products == 0 {
        return Err(Failure::invalid(
            "--events and --products must be at least 1",
        ));
    }
    let client = ctx.client().await?;
    let js = async_nats::jetstream::new(client.clone());
    let mut inventory = js
        .get_stream(subjects::INVENTORY_STREAM)
        .await
        .context("finding stream INVENTORY (run `stockwire setup` first)")?;
    let held = inventory
        .info()
        .await
        .context("reading INVENTORY")?
        .state
        .messages;
    if held > 0 && !args.allow_existing {
        return Err(Failure::invalid(format!(
            "INVENTORY already holds {held} events and the bench would add {} more; \
             run it on a fresh server (scripts/bench) or pass --allow-existing",
            3 * events
        )));
    }
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let sample = sample_events(events, args.products);
    let timeout = ctx.connect.request_timeout().max(Duration::from_secs(10));

    eprintln!(
        "bench: {events} events over {} products per figure",
        args.products
    );
    let pipelined = rate(events, raw_pipelined(&js, ctx, &sample, &run_id).await?);
    eprintln!("bench: raw pipelined publishes   {pipelined:>10.0} events/s");
    let batched = rate(
        events,
        raw_batches(&client, ctx, &sample, &run_id, timeout).await?,
    );
    eprintln!("bench: raw atomic batches        {batched:>10.0} events/s");
    let ingest = rate(events, import_file(ctx, &sample, &run_id).await?);
    eprintln!("bench: stockwire publish --file  {ingest:>10.0} events/s");

    let ceiling = pipelined.max(batched);
    let report = Report {
        events,
        products: args.products,
        fsync: args.fsync,
        machine: Machine {
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            nats_server_version: client.server_info().version,
        },
        raw_pipelined_per_s: pipelined.round(),
        raw_batch_per_s: batched.round(),
        raw_publish_per_s: ceiling.round(),
        ingest_events_per_s: ingest.round(),
        ingest_ratio: ratio(ingest, ceiling),
    };
    print_report(ctx, &report);
    if let Some(path) = &args.report {
        let text = serde_json::to_string_pretty(&report).context("encoding the report")?;
        std::fs::write(path, text + "\n")
            .map_err(|e| Failure::invalid(format!("writing {}: {e}", path.display())))?;
    }
    Ok(())
}

fn print_report(ctx: &Ctx, r: &Report) {
    if ctx.json {
        output::json_line(r);
        return;
    }
    let mut table = output::table(["figure", "events/s", "vs ceiling"]);
    table.add_row(vec![
        "raw JetStream: pipelined single publishes".to_string(),
        format!("{:.0}", r.raw_pipelined_per_s),
        String::new(),
    ]);
    table.add_row(vec![
        "raw JetStream: atomic batches of 1,000".to_string(),
        format!("{:.0}", r.raw_batch_per_s),
        String::new(),
    ]);
    table.add_row(vec![
        "stockwire publish --file".to_string(),
        format!("{:.0}", r.ingest_events_per_s),
        format!("{:.2}", r.ingest_ratio),
    ]);
    output::line(format!(
        "{} events over {} products; fsync {}; {} cores; nats-server {}",
        r.events, r.products, r.fsync, r.machine.cores, r.machine.nats_server_version
    ));
    output::line(&table);
}

fn rate(events: usize, took: Duration) -> f64 {
    events as f64 / took.as_secs_f64().max(1e-9)
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        (a / b * 100.0).round() / 100.0
    } else {
        0.0
    }
}

/// A day's trading of a warehouse: mostly sales, some deliveries, a few moves.
fn sample_events(n: usize, products: usize) -> Vec<Event> {
    let warehouse = WarehouseId::parse("bench").ok();
    let skus: Vec<Sku> = (0..products)
        .filter_map(|p| Sku::parse(&format!("p{p}")).ok())
        .collect();
    let locations: Vec<Location> = ["A1", "A2", "B1"]
        .iter()
        .filter_map(|l| Location::parse(l).ok())
        .collect();
    let (Some(warehouse), false, 3) = (warehouse, skus.is_empty(), locations.len()) else {
        return Vec::new();
    };
    (0..n)
        .filter_map(|i| {
            let sku = skus[i % skus.len()].clone();
            let quantity = Quantity::new(1 + (i % 5) as u64).ok()?;
            let location = locations[i % 2].clone();
            Some(match i % 10 {
                0 | 1 => Event::Received {
                    warehouse: warehouse.clone(),
                    sku,
                    location,
                    quantity,
                },
                2 => Event::moved(
                    warehouse.clone(),
                    sku,
                    location,
                    locations[2].clone(),
                    quantity,
                )
                .ok()?,
                _ => Event::Sold {
                    warehouse: warehouse.clone(),
                    sku,
                    location,
                    quantity,
                },
            })
        })
        .collect()
}

fn encode_all(ctx: &Ctx, events: &[Event], id_prefix: &str) -> Vec<Outbound> {
    let now = now_ms();
    events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            ctx.envelope.encode(
                e,
                &EventMeta {
                    msg_id: format!("{id_prefix}-{i}"),
                    timestamp_ms: now,
                },
            )
        })
        .collect()
}

/// Plain async-nats: publish, keep up to WINDOW acks outstanding, await them in order.
async fn raw_pipelined(
    js: &async_nats::jetstream::Context,
    ctx: &Ctx,
    events: &[Event],
    run_id: &str,
) -> Result<Duration, Failure> {
    let messages = encode_all(ctx, events, &format!("bench-pipe-{run_id}"));
    let started = Instant::now();
    let mut pending: VecDeque<async_nats::jetstream::context::PublishAckFuture> =
        VecDeque::with_capacity(WINDOW);
    for out in messages {
        if pending.len() >= WINDOW {
            if let Some(ack) = pending.pop_front() {
                ack.await.context("raw pipelined publish: PubAck")?;
            }
        }
        let ack = js
            .publish_with_headers(out.subject, out.headers, out.payload)
            .await
            .context("raw pipelined publish")?;
        pending.push_back(ack);
    }
    for ack in pending {
        ack.await.context("raw pipelined publish: PubAck")?;
    }
    Ok(started.elapsed())
}

/// Atomic batches of 1,000, up to [`BATCHES_IN_FLIGHT`] sent before the oldest is acknowledged.
async fn raw_batches(
    client: &async_nats::Client,
    ctx: &Ctx,
    events: &[Event],
    run_id: &str,
    timeout: Duration,
) -> Result<Duration, Failure> {
    let messages = encode_all(ctx, events, &format!("bench-batch-{run_id}"));
    let started = Instant::now();
    let mut in_flight = VecDeque::with_capacity(BATCHES_IN_FLIGHT);
    for chunk in messages.chunks(MAX_BATCH) {
        if in_flight.len() >= BATCHES_IN_FLIGHT {
            if let Some(sent) = in_flight.pop_front() {
                let sent: batch::SentBatch = sent;
                sent.ack().await.context("raw atomic batch")?;
            }
        }
        let sent = batch::send_atomic(client, chunk, None, timeout)
            .await
            .context("raw atomic batch")?;
        in_flight.push_back(sent);
    }
    for sent in in_flight {
        sent.ack().await.context("raw atomic batch")?;
    }
    Ok(started.elapsed())
}

/// Runs `stockwire publish --file` as a user would, on an NDJSON file of the events.
async fn import_file(ctx: &Ctx, events: &[Event], run_id: &str) -> Result<Duration, Failure> {
    let now = now_ms();
    let mut text = String::with_capacity(events.len() * 110);
    for (i, e) in events.iter().enumerate() {
        let mut line = serde_json::to_value(e).context("encoding a bench event")?;
        if let Some(map) = line.as_object_mut() {
            map.insert("type".into(), e.event_type().into());
            map.insert("timestamp_ms".into(), now.into());
            map.insert("msg_id".into(), format!("bench-file-{run_id}-{i}").into());
        }
        text.push_str(&line.to_string());
        text.push('\n');
    }
    let path = std::env::temp_dir().join(format!("stockwire-bench-{run_id}.ndjson"));
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    let exe = std::env::current_exe().context("finding the stockwire binary")?;
    let mut command = tokio::process::Command::new(exe);
    command
        .arg("publish")
        .arg("--file")
        .arg(&path)
        .env("NATS_URL", &ctx.connect.nats_url)
        .env("STOCKWIRE_HEADER_PREFIX", ctx.envelope.prefix())
        .stdout(std::process::Stdio::null());
    if let Some(creds) = &ctx.connect.creds {
        command.env("NATS_CREDS", creds);
    }
    if let (Some(user), Some(password)) = (&ctx.connect.user, &ctx.connect.password) {
        command
            .env("NATS_USER", user)
            .env("NATS_PASSWORD", password);
    }
    let started = Instant::now();
    let status = command
        .status()
        .await
        .context("running stockwire publish --file");
    let took = started.elapsed();
    let _ = std::fs::remove_file(&path);
    let status = status?;
    if !status.success() {
        return Err(anyhow::anyhow!("stockwire publish --file failed: {status}").into());
    }
    Ok(took)
}
