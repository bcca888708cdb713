//! # `stockwire-bench`
//!
//! Stockwire's figures next to the raw JetStream ceiling, measured in the same run against
//! the same server, so a noisy machine cancels out of the ratios. An admin's tool, apart
//! from the `stockwire` CLI (`stockwire bench` launches it).
//!
//! Ingest: `stockwire publish --file` (the CLI beside this binary, run as a user runs it)
//! against two plain loops over the same events: pipelined single publishes with a window
//! of unacknowledged ones, and atomic batches of 1,000 (three in flight, as the import
//! keeps). The faster loop is the ceiling. The three take turns for `--rounds` rounds
//! (3 by default) and each one's median round counts, so a disturbance of the machine
//! in one round does not decide the ratio.
//!
//! It writes events into `INVENTORY` (warehouse `bench`), so it refuses a server whose
//! log already holds events unless told otherwise; `scripts/bench` runs it on a fresh one.
//!
//! ## Layout
//! - [`Cli`], [`run`]: the flags, and the figures in the order taken.
//! - `ctx`: the settings, the connection, and the binaries beside this one.
//! - `ingest`, `projection`, `latency`, `rebuild`: one figure each; `services`: the
//!   services as processes, for latency, memory and stop on SIGTERM.
//! - `sample`: the events the figures publish; `batches`: atomic batches kept in flight.
//! - `output`: the report as tables or JSON; `failure`: exit codes.
#![forbid(unsafe_code)]
#![deny(unreachable_pub)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser};
use serde::Serialize;
use stockwire::connect::{ConnectArgs, Signals};
use stockwire::envelope::Envelope;
use stockwire::subjects;

mod batches;
mod catalogue;
mod command;
mod ctx;
mod dashboard;
mod failure;
mod ingest;
mod latency;
mod output;
mod projection;
mod rebuild;
mod sample;
mod services;
mod simulate;
mod sites;

use batches::send_batches;
use ctx::Ctx;
use failure::{Failure, Outcome};
use sample::{encode_all, sample_events};

/// Stockwire's figures (ingest, projection, alert latency, rebuild, memory) next to the
/// raw JetStream ceiling, on the configured server. Needs `stockwire` and the services
/// built beside it.
#[derive(Debug, Parser)]
#[command(name = "stockwire-bench", version, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Prefix of the standard event headers (`myorg_type`, ...).
    #[arg(long, env = "STOCKWIRE_HEADER_PREFIX", default_value = subjects::DEFAULT_HEADER_PREFIX)]
    pub header_prefix: String,
    /// Print the report as one JSON document instead of tables.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub bench: BenchArgs,
    #[command(flatten)]
    pub worker: catalogue::WorkerArgs,
}

/// Runs the bench; prints its failure to stderr and returns the exit code.
pub async fn run(cli: Cli) -> ExitCode {
    let envelope = match Envelope::new(&cli.header_prefix) {
        Ok(envelope) => envelope,
        Err(e) => return report(Failure::invalid(e)),
    };
    let ctx = Ctx {
        connect: cli.connect,
        envelope,
        json: cli.json,
        signals: Signals::default(),
    };
    // The bench started as one of its own catalogue workers.
    if cli.worker.worker_bucket.is_some() {
        return match catalogue::work(&ctx, cli.worker).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(failure) => report(failure),
        };
    }
    // A permission violation would otherwise surface as a timeout with no reason.
    match ctx.signals.unless_refused(measure(&ctx, cli.bench)).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => report(failure),
    }
}

fn report(failure: Failure) -> ExitCode {
    eprintln!("stockwire-bench: {:#}", failure.error);
    failure.exit_code()
}

/// Unacknowledged publishes in flight in the pipelined loop.
pub(crate) const WINDOW: usize = 1024;

/// Atomic batches in flight in the batch loop (as many as `publish --file` keeps).
pub(crate) const BATCHES_IN_FLIGHT: usize = 3;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A short run: 20,000 events per figure instead of 100,000.
    #[arg(long)]
    quick: bool,
    /// Events per figure (overrides the default of the mode).
    #[arg(long)]
    events: Option<usize>,
    /// Products the ingest events are spread over.
    #[arg(long, default_value_t = 100)]
    products: usize,
    /// Product counts of the projection workloads (default: 100,1000,100000; --quick: 100,1000).
    #[arg(long, value_delimiter = ',')]
    projection_products: Vec<usize>,
    /// Seconds of steady load for the alert latency figure (default 30; --quick: 10).
    #[arg(long)]
    latency_seconds: Option<u64>,
    /// Rounds of the ingest and projection figures: each figure and its ceiling take
    /// turns, and each one's median round counts, so one disturbed round does not decide
    /// the ratio.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=10))]
    rounds: u64,
    /// Offered background load during the latency figure, events per second.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..=100_000))]
    latency_rate: u64,
    /// Leave out the rebuild and verify figure (it replays everything the run wrote).
    #[arg(long)]
    skip_rebuild: bool,
    /// Products of the catalogue figure: a view of this many products, projected with
    /// every value in memory, with --cache-keys 100000, and in 4 partitions (default
    /// 1,000,000; none with --quick; 0 leaves it out).
    #[arg(long)]
    catalogue_products: Option<usize>,
    /// Seconds of the simulator's live run at --simulate-rate, after a week of backfill
    /// (default 60; --quick: 10, after a day; 0 leaves the figure out).
    #[arg(long)]
    simulate_seconds: Option<u64>,
    /// Purchase attempts per second the simulator is asked for, on average over a day.
    #[arg(long, default_value_t = 500.0)]
    simulate_rate: f64,
    /// Products in the view for the dashboard's memory and first-load figure (default
    /// 100,000; --quick: 10,000; 0 leaves the dashboard's figure out).
    #[arg(long)]
    dashboard_products: Option<usize>,
    /// Seconds of events at 100 a second for the dashboard's latency figure (default 30;
    /// --quick: 5).
    #[arg(long)]
    dashboard_seconds: Option<u64>,
    /// Measure an edge site instead of everything else (scripts/bench --sites): the site's
    /// server (a leaf node of this hub, set up with `setup --site` and added with `site add`).
    #[arg(long, value_name = "URL", requires = "site_relay_pid")]
    site_url: Option<String>,
    /// The relay process in the site's leaf link (scripts/relay.py), cut and restored by
    /// the figure.
    #[arg(long, value_name = "PID")]
    site_relay_pid: Option<u32>,
    /// Events recorded at the site during the outage (default 100,000; --quick: 20,000).
    #[arg(long)]
    site_events: Option<usize>,
    /// Seconds of checked sales at the site, then at the hub (default 10; --quick: 3).
    #[arg(long)]
    site_sales_seconds: Option<u64>,
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
    /// Replicas of INVENTORY (and of the bench's scratch buckets).
    replicas: usize,
    machine: Machine,
    raw_pipelined_per_s: f64,
    raw_batch_per_s: f64,
    raw_publish_per_s: f64,
    ingest_events_per_s: f64,
    ingest_ratio: f64,
    /// Every round of the ingest figure, in the order run (the figures above are the medians).
    ingest_rounds: Vec<IngestRound>,
    projection: Vec<ProjectionRow>,
    alert_latency_ms: latency::Latency,
    /// One event alone, waiting for its PubAck: plain publish vs atomic batch of one.
    round_trip_ms: ingest::RoundTrip,
    /// A checked sale (load, decide, append) on a product with a short and a long history.
    checked_sale: command::CheckedSale,
    /// `stockwire simulate` after a week of backfill: kept up, and its ceiling.
    simulate: Option<simulate::SimulateFigures>,
    /// The dashboard: memory and first load with many products, PubAck -> page latency.
    dashboard: Option<dashboard::DashboardFigures>,
    rebuild: Option<rebuild::RebuildFigures>,
    rebuild_events_per_s: Option<f64>,
    /// stock-projector over a view of a million products: memory bounded, or split.
    catalogue: Option<catalogue::CatalogueFigures>,
    /// Peak resident memory of each service while the bench ran it, MiB.
    peak_rss_mb: BTreeMap<String, f64>,
    /// How long each service took to stop on SIGTERM (the longest time it was stopped), ms.
    sigterm_stop_ms: BTreeMap<String, u64>,
    /// Headline projection figures, at the first workload (100 products by default).
    projector_events_per_s: f64,
    projector_ceiling_per_s: f64,
    projector_ratio: f64,
    projector_ratio_100k: Option<f64>,
    /// A sequential get -> put -> ack loop at the first workload, and how many times
    /// faster stock-projector is.
    get_put_ack_events_per_s: f64,
    get_put_ack_speedup: f64,
}

#[derive(Debug, Clone, Serialize)]
struct IngestRound {
    raw_pipelined_per_s: f64,
    raw_batch_per_s: f64,
    ingest_events_per_s: f64,
    /// The write method the import picked.
    write_method: String,
}

#[derive(Debug, Clone, Serialize)]
struct ProjectionRow {
    products: usize,
    ceiling_per_s: f64,
    projector_per_s: f64,
    ratio: f64,
    /// A sequential get -> put -> ack loop (durable consumer, one event at a time).
    get_put_ack_per_s: f64,
    /// stock-projector's figure over that loop's.
    get_put_ack_speedup: f64,
    /// Every round, in the order run (the figures above are the medians).
    rounds: Vec<ProjectionRound>,
}

#[derive(Debug, Clone, Copy, Serialize)]
struct ProjectionRound {
    ceiling_per_s: f64,
    projector_per_s: f64,
}

/// Takes every figure, in order, and prints (and with `--report` writes) the report.
async fn measure(ctx: &Ctx, args: BenchArgs) -> Outcome {
    let events = args
        .events
        .unwrap_or(if args.quick { 20_000 } else { 100_000 });
    if events == 0 || args.products == 0 {
        return Err(Failure::invalid(
            "--events and --products must be at least 1",
        ));
    }
    let client = ctx.client().await?;
    if let (Some(site_url), Some(relay_pid)) = (&args.site_url, args.site_relay_pid) {
        let figures = sites::measure(
            ctx,
            &client,
            site_url,
            relay_pid,
            args.site_events
                .unwrap_or(if args.quick { 20_000 } else { 100_000 }),
            args.site_sales_seconds
                .unwrap_or(if args.quick { 3 } else { 10 }),
            ctx.connect.request_timeout().max(Duration::from_secs(10)),
        )
        .await?;
        output::sites(ctx, &figures, &args.fsync, &client.server_info().version);
        if let Some(path) = &args.report {
            let text = serde_json::to_string_pretty(&figures).context("encoding the report")?;
            std::fs::write(path, text + "\n")
                .map_err(|e| Failure::invalid(format!("writing {}: {e}", path.display())))?;
        }
        return Ok(());
    }
    let js = async_nats::jetstream::new(client.clone());
    let mut inventory = js
        .get_stream(subjects::INVENTORY_STREAM)
        .await
        .context("finding stream INVENTORY (run `stockwire setup` first)")?;
    let info = inventory.info().await.context("reading INVENTORY")?;
    let (held, replicas) = (info.state.messages, info.config.num_replicas.max(1));
    if held > 0 && !args.allow_existing {
        return Err(Failure::invalid(format!(
            "INVENTORY already holds {held} events and the bench would add more; \
             run it on a fresh server (scripts/bench) or pass --allow-existing"
        )));
    }
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let sample = sample_events("bench", events, args.products);
    let timeout = ctx.connect.request_timeout().max(Duration::from_secs(10));

    let seconds = args
        .latency_seconds
        .unwrap_or(if args.quick { 10 } else { 30 });
    eprintln!(
        "bench: alert latency at {} events/s for {seconds} s (the four services as processes)",
        args.latency_rate
    );
    let mut stopped = std::collections::BTreeMap::new();
    let alert_latency = latency::measure(
        ctx,
        &js,
        &run_id,
        args.latency_rate,
        Duration::from_secs(seconds),
        &mut stopped,
    )
    .await?;
    eprintln!(
        "bench: alert latency p50 {} ms, p99 {} ms ({} samples); event -> view p50 {} ms, p99 {} ms; view -> alert p50 {} ms, p99 {} ms",
        alert_latency.p50,
        alert_latency.p99,
        alert_latency.samples,
        alert_latency.to_view.p50,
        alert_latency.to_view.p99,
        alert_latency.view_to_alert.p50,
        alert_latency.view_to_alert.p99,
    );
    let long_history = if args.quick { 10_000 } else { 100_000 };
    let checked_sale = command::measure(
        ctx,
        &client,
        &run_id,
        long_history,
        if args.quick { 50 } else { 200 },
        timeout,
    )
    .await?;
    eprintln!(
        "bench: a checked sale: {} events of history p50 {} ms, {} events p50 {} ms ({}x)",
        checked_sale.short_history_events,
        checked_sale.short_p50_ms,
        checked_sale.long_history_events,
        checked_sale.long_p50_ms,
        checked_sale.long_over_short
    );
    eprintln!(
        "bench: {events} events over {} products per figure",
        args.products
    );
    let mut ingest_rounds = Vec::new();
    for round in 1..=args.rounds {
        let id = format!("{run_id}-{round}");
        let pipelined = rate(events, ingest::raw_pipelined(&js, ctx, &sample, &id).await?);
        eprintln!("bench: round {round}: raw pipelined publishes   {pipelined:>10.0} events/s");
        let batched = rate(
            events,
            ingest::raw_batches(&client, ctx, &sample, &id, timeout).await?,
        );
        eprintln!("bench: round {round}: raw atomic batches        {batched:>10.0} events/s");
        let (took, write_method) = ingest::import_file(ctx, &sample, &id).await?;
        let ingest = rate(events, took);
        eprintln!(
            "bench: round {round}: stockwire publish --file  {ingest:>10.0} events/s ({write_method})"
        );
        ingest_rounds.push(IngestRound {
            raw_pipelined_per_s: pipelined.round(),
            raw_batch_per_s: batched.round(),
            ingest_events_per_s: ingest.round(),
            write_method,
        });
    }
    let pipelined = median(ingest_rounds.iter().map(|r| r.raw_pipelined_per_s));
    let batched = median(ingest_rounds.iter().map(|r| r.raw_batch_per_s));
    let ingest = median(ingest_rounds.iter().map(|r| r.ingest_events_per_s));
    let round_trip = ingest::round_trips(&client, &js, ctx, &sample, &run_id, timeout).await?;
    eprintln!(
        "bench: one event alone: publish {} ms, atomic batch of one {} ms (p50)",
        round_trip.single_publish_p50_ms, round_trip.atomic_batch_of_one_p50_ms
    );

    let ceiling = pipelined.max(batched);

    let workloads = if !args.projection_products.is_empty() {
        args.projection_products.clone()
    } else if args.quick {
        vec![100, 1000]
    } else {
        vec![100, 1000, 100_000]
    };
    let mut projection = Vec::new();
    for products in workloads {
        let f =
            projection::measure(ctx, &js, events, products, &run_id, args.rounds, timeout).await?;
        projection.push(ProjectionRow {
            products,
            ceiling_per_s: f.ceiling.round(),
            projector_per_s: f.projector.round(),
            ratio: ratio(f.projector, f.ceiling),
            get_put_ack_per_s: f.get_put_ack.round(),
            get_put_ack_speedup: ratio(f.projector, f.get_put_ack),
            rounds: f
                .rounds
                .iter()
                .map(|&(ceiling_per_s, projector_per_s)| ProjectionRound {
                    ceiling_per_s,
                    projector_per_s,
                })
                .collect(),
        });
    }
    let headline = projection.first().cloned();
    let simulate_seconds = args
        .simulate_seconds
        .unwrap_or(if args.quick { 10 } else { 60 });
    let simulate = if simulate_seconds > 0 {
        let days = if args.quick { 1.0 } else { 7.0 };
        let get_put_ack = headline.as_ref().map_or(0.0, |r| r.get_put_ack_per_s);
        Some(
            simulate::measure(
                ctx,
                days,
                simulate_seconds,
                args.simulate_rate,
                get_put_ack,
                &mut stopped,
            )
            .await?,
        )
    } else {
        None
    };
    let dashboard_products =
        args.dashboard_products
            .unwrap_or(if args.quick { 10_000 } else { 100_000 });
    let dashboard = if dashboard_products > 0 {
        let seconds = args
            .dashboard_seconds
            .unwrap_or(if args.quick { 5 } else { 30 });
        Some(dashboard::measure(ctx, &client, &run_id, dashboard_products, seconds, timeout).await?)
    } else {
        None
    };
    let rebuild = if args.skip_rebuild {
        None
    } else {
        Some(rebuild::measure(ctx, &js, &mut stopped).await?)
    };
    // Last, so that the rebuild above replays only what the other figures wrote.
    let catalogue_products =
        args.catalogue_products
            .unwrap_or(if args.quick { 0 } else { 1_000_000 });
    let catalogue = if catalogue_products > 0 {
        eprintln!(
            "bench: catalogue: {catalogue_products} products, {} events per traffic and setup",
            2 * events
        );
        Some(catalogue::measure(ctx, &js, &run_id, catalogue_products, 2 * events, timeout).await?)
    } else {
        None
    };
    let report = Report {
        catalogue,
        simulate,
        dashboard,
        events,
        products: args.products,
        fsync: args.fsync,
        replicas,
        machine: Machine {
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            nats_server_version: client.server_info().version,
        },
        raw_pipelined_per_s: pipelined.round(),
        raw_batch_per_s: batched.round(),
        raw_publish_per_s: ceiling.round(),
        ingest_events_per_s: ingest.round(),
        ingest_ratio: ratio(ingest, ceiling),
        ingest_rounds,
        projector_events_per_s: headline.as_ref().map_or(0.0, |r| r.projector_per_s),
        projector_ceiling_per_s: headline.as_ref().map_or(0.0, |r| r.ceiling_per_s),
        projector_ratio: headline.as_ref().map_or(0.0, |r| r.ratio),
        projector_ratio_100k: projection
            .iter()
            .find(|r| r.products == 100_000)
            .map(|r| r.ratio),
        get_put_ack_events_per_s: headline.as_ref().map_or(0.0, |r| r.get_put_ack_per_s),
        get_put_ack_speedup: headline.as_ref().map_or(0.0, |r| r.get_put_ack_speedup),
        projection,
        alert_latency_ms: alert_latency,
        round_trip_ms: round_trip,
        checked_sale,
        rebuild_events_per_s: rebuild.as_ref().map(|r| r.rebuild_events_per_s),
        rebuild,
        peak_rss_mb: stopped
            .iter()
            .map(|(k, v)| (k.clone(), v.peak_rss_mb))
            .collect(),
        sigterm_stop_ms: stopped
            .iter()
            .map(|(k, v)| (k.clone(), v.stop_ms))
            .collect(),
    };
    output::report(ctx, &report);
    if let Some(path) = &args.report {
        let text = serde_json::to_string_pretty(&report).context("encoding the report")?;
        std::fs::write(path, text + "\n")
            .map_err(|e| Failure::invalid(format!("writing {}: {e}", path.display())))?;
    }
    Ok(())
}

/// The median of some figures (0 when there are none).
pub(crate) fn median(figures: impl Iterator<Item = f64>) -> f64 {
    let mut all: Vec<f64> = figures.collect();
    all.sort_by(f64::total_cmp);
    latency::quantile(&all, 0.5)
}

pub(crate) fn rate(events: usize, took: Duration) -> f64 {
    events as f64 / took.as_secs_f64().max(1e-9)
}

pub(crate) fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        (a / b * 100.0).round() / 100.0
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _};

    use super::Cli;

    #[test]
    fn the_flags_are_well_formed() {
        Cli::command().debug_assert();
    }

    /// The flags `stockwire bench` took before the bench had a binary of its own.
    #[test]
    fn every_bench_flag_parses() {
        let cli = Cli::try_parse_from([
            "stockwire-bench",
            "--quick",
            "--rounds",
            "2",
            "--events",
            "500",
            "--products",
            "7",
            "--projection-products",
            "10,20",
            "--latency-seconds",
            "3",
            "--latency-rate",
            "200",
            "--skip-rebuild",
            "--report",
            "out.json",
            "--allow-existing",
            "--json",
            "--header-prefix",
            "acme",
            "--nats-url",
            "nats://example:4333",
        ])
        .expect("parses");
        let b = &cli.bench;
        assert!(b.quick && b.skip_rebuild && b.allow_existing && cli.json);
        assert_eq!((b.rounds, b.events, b.products), (2, Some(500), 7));
        assert_eq!(b.projection_products, [10, 20]);
        assert_eq!((b.latency_seconds, b.latency_rate), (Some(3), 200));
        assert_eq!(b.report.as_deref(), Some(std::path::Path::new("out.json")));
        assert_eq!(cli.header_prefix, "acme");
        assert_eq!(cli.connect.nats_url, "nats://example:4333");
    }

    #[test]
    fn rounds_outside_1_to_10_are_refused() {
        for rounds in ["0", "11"] {
            assert!(Cli::try_parse_from(["stockwire-bench", "--rounds", rounds]).is_err());
        }
    }
}
