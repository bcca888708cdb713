//! The catalogue figure: stock-projector over a view of 1,000,000 products, with its
//! memory bounded or not, and split into partitions.
//!
//! A scratch bucket set up like `stock` is filled with one value per product first. Then,
//! for each traffic (uniform product popularity, and Zipf-skewed: a few products take most
//! events), three setups each apply fresh events of that traffic, every one in its own
//! processes (this binary run as a worker, see [`WorkerArgs`]) so that its peak memory
//! (VmHWM) is its own:
//! - one instance keeping every value in memory (`--cache-keys 0`);
//! - one instance keeping at most 100,000 (`--cache-keys 100000`);
//! - four partitions, each keeping all of its own.
//!
//! Each setup starts from a checkpoint just before its events: first half as many again
//! of the same traffic, untimed, to bring it to its steady state (a bounded instance then
//! holds the products that sell), then the events timed. Its rate counts from the moment
//! every instance has passed the untimed ones (that, with reading the bucket at start, is
//! reported apart as warm-up) to the moment the lowest checkpoint reaches its last event. The
//! ceiling is the plain write loop of the projection figure over the same traffic, writing
//! over a copy of the same catalogue.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::Context;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use serde::Serialize;
use stock_projector::StockProjection;
use stockwire::batch::MAX_BATCH;
use stockwire::domain::{Event, Location, Quantity, Sku, StockView, WarehouseId};
use stockwire::envelope::Outbound;
use stockwire::partition::{self, Partition};
use stockwire::view::{self, Checkpoint};
use stockwire::{projector, subjects};
use tokio_util::sync::CancellationToken;

use crate::failure::Failure;
use crate::projection::{ceiling, scratch_bucket};
use crate::{encode_all, rate, send_batches, Ctx};

const BUCKET: &str = "bench_catalogue";

/// The same catalogue again, for the ceiling loop to write over: a bucket of a million
/// keys costs the server more per write than a fresh one.
const CEILING_COPY: &str = "bench_catalogue_ceiling";

/// Values one bounded instance keeps in memory.
const BOUNDED_CACHE_KEYS: u64 = 100_000;

/// Partitions of the split setup.
const PARTITIONS: u32 = 4;

/// The Zipf exponent of the skewed traffic (1.0: the classic "80/20"-like long tail).
const ZIPF_EXPONENT: f64 = 1.0;

/// The settings of a worker: this binary, started by the figure to run one projector
/// instance on the scratch view until SIGTERM. Not for people.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// Run as a catalogue worker projecting into this scratch bucket.
    #[arg(long, hide = true)]
    pub worker_bucket: Option<String>,
    /// The INVENTORY subjects the worker reads.
    #[arg(long, hide = true, default_value = "")]
    pub worker_filter: String,
    #[arg(long, hide = true, default_value_t = 0)]
    pub worker_partition: u32,
    #[arg(long, hide = true, default_value_t = 1)]
    pub worker_partitions: u32,
    #[arg(long, hide = true, default_value_t = 0)]
    pub worker_cache_keys: u64,
}

/// Runs one worker until SIGTERM.
pub(crate) async fn work(ctx: &Ctx, args: WorkerArgs) -> Result<(), Failure> {
    let Some(bucket) = args.worker_bucket else {
        return Ok(());
    };
    let partition =
        Partition::new(args.worker_partition, args.worker_partitions).map_err(Failure::invalid)?;
    let client = ctx.client().await?;
    let stop = CancellationToken::new();
    let on_term = stop.clone();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    tokio::spawn(async move {
        term.recv().await;
        on_term.cancel();
    });
    let config = stockwire::projection::Config {
        envelope: ctx.envelope.clone(),
        partition,
        cache_keys: (args.worker_cache_keys > 0).then_some(args.worker_cache_keys as usize),
        ..Default::default()
    };
    // One projection per process: its bucket name lives as long as the process.
    let bucket: &'static str = Box::leak(bucket.into_boxed_str());
    projector::run(
        client,
        StockProjection::into_bucket(bucket, args.worker_filter),
        config,
        stop,
    )
    .await
    .map_err(|e| Failure::from(anyhow::Error::new(e)))
}

/// One setup on one traffic.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CatalogueRow {
    pub(crate) traffic: &'static str,
    pub(crate) setup: String,
    pub(crate) instances: u32,
    /// Values each instance keeps in memory, at most (0: all of its own).
    pub(crate) cache_keys: u64,
    pub(crate) events_per_s: f64,
    /// Over the plain write loop on the same traffic.
    pub(crate) ratio: f64,
    /// Peak resident memory of each instance, MiB.
    pub(crate) peak_rss_mb: Vec<f64>,
    /// From start to every instance past the untimed round (reading the bucket included), s.
    pub(crate) warm_up_s: f64,
    /// Distinct products the traffic touched.
    pub(crate) products_touched: usize,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct CatalogueFigures {
    pub(crate) products: usize,
    pub(crate) events: usize,
    /// Filling the bucket with one value per product, values/s.
    pub(crate) fill_per_s: f64,
    /// The plain write loop on each traffic, events/s.
    pub(crate) ceiling_uniform_per_s: f64,
    pub(crate) ceiling_zipf_per_s: f64,
    pub(crate) rows: Vec<CatalogueRow>,
}

struct Setup {
    name: &'static str,
    instances: u32,
    cache_keys: u64,
}

const SETUPS: [Setup; 3] = [
    Setup {
        name: "one instance, every value in memory",
        instances: 1,
        cache_keys: 0,
    },
    Setup {
        name: "one instance, --cache-keys 100000",
        instances: 1,
        cache_keys: BOUNDED_CACHE_KEYS,
    },
    Setup {
        name: "4 partitions (4 processes)",
        instances: PARTITIONS,
        cache_keys: 0,
    },
];

pub(crate) async fn measure(
    ctx: &Ctx,
    js: &Context,
    run_id: &str,
    products: usize,
    events: usize,
    timeout: Duration,
) -> Result<CatalogueFigures, Failure> {
    let client = js.client();
    let warehouse = format!("bc{}", &run_id[..8]);
    let filter = subjects::warehouse_events(&WarehouseId::parse(&warehouse)?);
    scratch_bucket(js, BUCKET).await?;
    scratch_bucket(js, CEILING_COPY).await?;
    let result = async {
        let started = Instant::now();
        fill(&client, BUCKET, &warehouse, products, timeout).await?;
        let fill_per_s = rate(products, started.elapsed());
        fill(&client, CEILING_COPY, &warehouse, products, timeout).await?;
        eprintln!("bench: catalogue: {products} values written at {fill_per_s:.0}/s");
        let mut rows = Vec::new();
        let mut ceilings = Vec::new();
        for traffic in ["uniform", "zipf"] {
            // A first round of the traffic (not timed) brings each setup to its steady
            // state: a bounded instance then holds the products that sell.
            let mut skus = popularity(traffic, products, events + events / 2);
            let warm = skus.split_off(events);
            let touched = {
                let mut distinct = skus.clone();
                distinct.sort_unstable();
                distinct.dedup();
                distinct.len()
            };
            let mut ceiling_rate = 0.0;
            for (i, setup) in SETUPS.iter().enumerate() {
                let id = format!("bench-{warehouse}-{traffic}-{i}");
                let (start, warmed) =
                    publish(ctx, &client, &warehouse, &warm, &format!("{id}-warm"), timeout)
                        .await?;
                let (first, last) = publish(ctx, &client, &warehouse, &skus, &id, timeout).await?;
                if i == 0 {
                    ceiling_rate = rate(
                        events,
                        ceiling(&client, js, CEILING_COPY, &filter, first, events, timeout)
                            .await?,
                    );
                    eprintln!(
                        "bench: catalogue: {traffic}: ceiling loop {ceiling_rate:.0} events/s"
                    );
                }
                let run = run_setup(ctx, js, setup, &filter, start, warmed, last).await?;
                let events_per_s = rate(events.min((last - run.counted_from) as usize), run.took);
                eprintln!(
                    "bench: catalogue: {traffic}: {}: {events_per_s:.0} events/s, peak RSS {:?} MiB, warm-up {:.1} s",
                    setup.name, run.peak_rss_mb, run.warm_up_s
                );
                rows.push(CatalogueRow {
                    traffic,
                    setup: setup.name.to_string(),
                    instances: setup.instances,
                    cache_keys: setup.cache_keys,
                    events_per_s: events_per_s.round(),
                    ratio: crate::ratio(events_per_s, ceiling_rate),
                    peak_rss_mb: run.peak_rss_mb,
                    warm_up_s: (run.warm_up_s * 10.0).round() / 10.0,
                    products_touched: touched,
                });
            }
            ceilings.push(ceiling_rate.round());
        }
        Ok::<_, Failure>(CatalogueFigures {
            products,
            events,
            fill_per_s: fill_per_s.round(),
            ceiling_uniform_per_s: ceilings.first().copied().unwrap_or(0.0),
            ceiling_zipf_per_s: ceilings.get(1).copied().unwrap_or(0.0),
            rows,
        })
    }
    .await;
    for bucket in [BUCKET, CEILING_COPY] {
        let _ = js.delete_stream(subjects::kv_stream(bucket)).await;
    }
    result
}

/// Writes one value per product (some stock at one location), 999 to an atomic batch.
async fn fill(
    client: &async_nats::Client,
    bucket: &str,
    warehouse: &str,
    products: usize,
    timeout: Duration,
) -> Result<(), Failure> {
    let w = WarehouseId::parse(warehouse)?;
    let location = Location::parse("A1")?;
    let quantity = Quantity::new(1_000)?;
    // A hundred thousand at a time, not the whole catalogue in memory at once.
    for start in (0..products).step_by(100_000) {
        let mut values = Vec::with_capacity(100_000);
        for p in start..(start + 100_000).min(products) {
            let sku = Sku::parse(&format!("s{p}"))?;
            let mut value = StockView::new(w.clone(), sku.clone());
            let received = Event::Received {
                warehouse: w.clone(),
                sku: sku.clone(),
                location: location.clone(),
                quantity,
            };
            value.apply(&received, 1, 0);
            let payload = serde_json::to_vec(&value).context("encoding a value")?;
            values.push(Outbound {
                subject: subjects::kv_subject(bucket, &subjects::view_key(&w, &sku)),
                headers: async_nats::HeaderMap::new(),
                payload: payload.into(),
            });
        }
        let batches = values.chunks(MAX_BATCH).map(<[_]>::to_vec);
        send_batches(client, batches, timeout)
            .await
            .context("filling the catalogue")?;
    }
    Ok(())
}

/// Which product each of `events` events is about: uniformly at random, or Zipf-skewed.
/// The popular products are spread over the catalogue (rank r is product r * m mod n, m
/// prime to n), not its first keys, which a cache warmed at start would hold by chance.
/// Seeded: the same traffic every run.
fn popularity(traffic: &str, products: usize, events: usize) -> Vec<usize> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(16);
    match traffic {
        "zipf" => {
            let Ok(zipf) = Zipf::new(products as f64, ZIPF_EXPONENT) else {
                return Vec::new();
            };
            let spread = (products / 2 + 1..)
                .find(|m| gcd(*m, products) == 1)
                .unwrap_or(1);
            (0..events)
                .map(|_| {
                    let rank = (zipf.sample(&mut rng) as usize).saturating_sub(1);
                    ((rank as u128 * spread as u128) % products as u128) as usize
                })
                .collect()
        }
        _ => (0..events).map(|_| rng.random_range(0..products)).collect(),
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Publishes one event per entry of `skus` (mostly sales, some deliveries); returns
/// their first and last sequence.
async fn publish(
    ctx: &Ctx,
    client: &async_nats::Client,
    warehouse: &str,
    skus: &[usize],
    id: &str,
    timeout: Duration,
) -> Result<(u64, u64), Failure> {
    let w = WarehouseId::parse(warehouse)?;
    let location = Location::parse("A1")?;
    let mut events = Vec::with_capacity(skus.len());
    for (i, p) in skus.iter().enumerate() {
        let sku = Sku::parse(&format!("s{p}"))?;
        let quantity = Quantity::new(1)?;
        events.push(if i % 4 == 0 {
            Event::Received {
                warehouse: w.clone(),
                sku,
                location: location.clone(),
                quantity,
            }
        } else {
            Event::Sold {
                warehouse: w.clone(),
                sku,
                location: location.clone(),
                quantity,
            }
        });
    }
    let messages = encode_all(ctx, &events, id);
    let batches = messages.chunks(MAX_BATCH).map(<[_]>::to_vec);
    let stored = send_batches(client, batches, timeout)
        .await
        .context("publishing the catalogue traffic")?;
    Ok(stored.unwrap_or((1, 0)))
}

struct SetupRun {
    took: Duration,
    /// The view's position when the clock started.
    counted_from: u64,
    warm_up_s: f64,
    peak_rss_mb: Vec<f64>,
}

/// Starts `setup`'s workers from a checkpoint just before `first` and waits until the
/// view's position reaches `last`; the clock counts from when it has passed `warmed`.
async fn run_setup(
    ctx: &Ctx,
    js: &Context,
    setup: &Setup,
    filter: &str,
    first: u64,
    warmed: u64,
    last: u64,
) -> Result<SetupRun, Failure> {
    let client = js.client();
    let kv = js
        .get_key_value(BUCKET)
        .await
        .context("opening the catalogue bucket")?;
    // This setup's split, each partition just before its events; the key written last
    // says how many partitions there are.
    for i in 0..setup.instances {
        let value = Checkpoint {
            last_seq: first - 1,
            partitions: setup.instances,
            from: None,
        };
        let payload = serde_json::to_vec(&value).context("encoding a checkpoint")?;
        kv.put(
            partition::checkpoint_key(i, setup.instances),
            payload.into(),
        )
        .await
        .context("setting a checkpoint")?;
    }
    let mut workers = Vec::new();
    for i in 0..setup.instances {
        let mut command = ctx.command("stockwire-bench")?;
        command
            .args(["--worker-bucket", BUCKET, "--worker-filter", filter])
            .args(["--worker-partition", &i.to_string()])
            .args(["--worker-partitions", &setup.instances.to_string()])
            .args(["--worker-cache-keys", &setup.cache_keys.to_string()]);
        crate::services::quiet(&mut command);
        workers.push(command.spawn().context("starting a catalogue worker")?);
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs(900);
    let mut counting: Option<(Instant, u64)> = None;
    loop {
        let position = view::position(&client, BUCKET, Duration::from_secs(5))
            .await
            .map_err(|e| anyhow::anyhow!("reading the catalogue's checkpoints: {e}"))?;
        let moved = position
            .checkpoints
            .iter()
            .all(|c| c.is_some_and(|c| c >= warmed));
        if counting.is_none() && moved && position.partitions == setup.instances {
            counting = Some((Instant::now(), position.lowest()));
        }
        if position.lowest() >= last {
            break;
        }
        if Instant::now() > deadline
            || workers
                .iter_mut()
                .any(|w| matches!(w.try_wait(), Ok(Some(_))))
        {
            return Err(anyhow::anyhow!("the catalogue workers did not catch up").into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ended = Instant::now();
    let (from_t, counted_from) = counting.unwrap_or((started, warmed));
    let mut peak_rss_mb = Vec::new();
    for worker in &mut workers {
        peak_rss_mb.push(crate::services::peak_rss_mb(worker.id()));
        if let Some(pid) = worker.id() {
            let _ = tokio::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
    }
    for worker in &mut workers {
        let _ = tokio::time::timeout(Duration::from_secs(10), worker.wait()).await;
    }
    Ok(SetupRun {
        took: ended.duration_since(from_t),
        counted_from,
        warm_up_s: from_t.duration_since(started).as_secs_f64(),
        peak_rss_mb,
    })
}
