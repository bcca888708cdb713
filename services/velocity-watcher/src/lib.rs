//! # velocity-watcher
//!
//! Watches the `sales_velocity` and `stock` views (and the thresholds) and announces, once
//! per change of state:
//! - `sales.velocity` on `alerts.velocity.{warehouse}.{sku}` when the product's band
//!   (`stalled`, `slow`, `normal`, `fast`, from units sold in the last day) changes;
//! - `stock.stockout_forecast` on `alerts.stockout.{warehouse}.{sku}` when its days of
//!   cover (on hand / units per day) fall below its `stockout_days`, and
//!   `stock.stockout_cleared` when they are back at or above it.
//!
//! Inputs and exactly-once announcing are `stockwire::watcher`, as for low stock.
#![forbid(unsafe_code)]
#![deny(unreachable_pub)]

use std::collections::HashMap;

use async_nats::jetstream::kv::{self, Operation};
use stockwire::announce::Announcer;
use stockwire::connect::ConnectArgs;
use stockwire::domain::{
    react_band, react_stockout, BandLimits, StockView, Thresholds, VelocityView,
};
use stockwire::envelope::Envelope;
use stockwire::subjects;
use stockwire::watch::Followed;
use stockwire::watcher;
use tokio_util::sync::CancellationToken;

/// The service's settings.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "velocity-watcher",
    version,
    about = "Announces velocity bands and stockout forecasts"
)]
pub struct Config {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Prefix of the standard event headers.
    #[arg(long, env = "STOCKWIRE_HEADER_PREFIX", default_value = subjects::DEFAULT_HEADER_PREFIX)]
    pub header_prefix: String,
    /// Units sold in the last day from which a product is `normal` (below: `slow`).
    #[arg(long, env = "STOCKWIRE_BAND_NORMAL_FROM", default_value_t = BandLimits::default().normal_from)]
    pub normal_from: u64,
    /// Units sold in the last day from which a product is `fast`.
    #[arg(long, env = "STOCKWIRE_BAND_FAST_FROM", default_value_t = BandLimits::default().fast_from)]
    pub fast_from: u64,
}

/// What the watcher knows of every product.
#[derive(Default)]
struct Known {
    velocity: HashMap<String, VelocityView>,
    stock: HashMap<String, StockView>,
    thresholds: HashMap<String, Thresholds>,
}

impl Known {
    /// Takes in a change of a view or a threshold; returns the products to evaluate again.
    fn update(&mut self, bucket: &str, entry: kv::Entry) -> Vec<String> {
        let key = entry.key;
        let value = (entry.operation == Operation::Put).then_some(entry.value);
        let parse_error = |e: serde_json::Error| tracing::error!(bucket, key, error = %e, "unreadable value; skipped");
        if bucket == subjects::VELOCITY_BUCKET {
            match value.map(|v| serde_json::from_slice::<VelocityView>(&v)) {
                Some(Ok(v)) => self.velocity.insert(key.clone(), v),
                Some(Err(e)) => {
                    parse_error(e);
                    return vec![];
                }
                None => self.velocity.remove(&key),
            };
        } else if bucket == subjects::STOCK_BUCKET {
            match value.map(|v| serde_json::from_slice::<StockView>(&v)) {
                Some(Ok(v)) => self.stock.insert(key.clone(), v),
                Some(Err(e)) => {
                    parse_error(e);
                    return vec![];
                }
                None => self.stock.remove(&key),
            };
        } else {
            match value.map(|v| serde_json::from_slice::<Thresholds>(&v)) {
                Some(Ok(t)) => self.thresholds.insert(key.clone(), t),
                Some(Err(e)) => {
                    parse_error(e);
                    return vec![];
                }
                None => self.thresholds.remove(&key),
            };
            if key == subjects::DEFAULT_THRESHOLD_KEY {
                return self.velocity.keys().cloned().collect();
            }
        }
        if self.velocity.contains_key(&key) {
            vec![key]
        } else {
            vec![]
        }
    }
}

/// Runs until `shutdown` is cancelled.
pub async fn run(
    client: async_nats::Client,
    config: &Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if config.fast_from <= config.normal_from {
        anyhow::bail!(
            "--fast-from ({}) must be above --normal-from ({})",
            config.fast_from,
            config.normal_from
        );
    }
    let limits = BandLimits {
        normal_from: config.normal_from,
        fast_from: config.fast_from,
    };
    let js = async_nats::jetstream::new(client.clone());
    let envelope = Envelope::new(&config.header_prefix)?;
    let mut bands = Announcer::new(js.clone(), envelope.clone(), subjects::VELOCITY_ALERTS);
    let mut stockouts = Announcer::new(js.clone(), envelope, subjects::STOCKOUT_ALERTS);
    let followers = shutdown.child_token();
    let views = [subjects::STOCK_BUCKET, subjects::VELOCITY_BUCKET];
    let Some(mut inputs) = watcher::inputs(&js, &views, &followers).await else {
        return Ok(());
    };
    let mut known = Known::default();
    let mut waiting = views.to_vec();
    tracing::info!("velocity watcher started");
    loop {
        let item = tokio::select! {
            _ = shutdown.cancelled() => break,
            item = inputs.recv() => item,
        };
        let Some(item) = item else { break };
        let keys = match item {
            // Judge nothing until both views' current values are in: a product's velocity
            // without its stock (or the other way round) is not its state.
            Followed::CaughtUp { bucket } => {
                waiting.retain(|b| *b != bucket);
                if waiting.is_empty() {
                    known.velocity.keys().cloned().collect()
                } else {
                    vec![]
                }
            }
            Followed::Entry { entry, .. } if entry.key.starts_with('_') => vec![],
            Followed::Entry { bucket, entry } => {
                let keys = known.update(bucket, entry);
                if waiting.is_empty() {
                    keys
                } else {
                    vec![]
                }
            }
        };
        for key in keys {
            evaluate_band(&mut bands, &known, &key, limits, &shutdown).await;
            evaluate_stockout(&mut stockouts, &known, &key, &shutdown).await;
        }
    }
    followers.cancel();
    tracing::info!("velocity watcher stopped");
    Ok(())
}

fn now() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

async fn evaluate_band(
    announcer: &mut Announcer,
    known: &Known,
    key: &str,
    limits: BandLimits,
    shutdown: &CancellationToken,
) {
    // A product whose stock is not known (not seen yet, or its key deleted) is not judged.
    let (Some(velocity), Some(stock)) = (known.velocity.get(key), known.stock.get(key)) else {
        return;
    };
    let subject = subjects::velocity_alert(&velocity.warehouse, &velocity.sku);
    watcher::announce_change(announcer, &subject, now, shutdown, |last| {
        react_band(last, velocity, stock, limits)
    })
    .await;
}

async fn evaluate_stockout(
    announcer: &mut Announcer,
    known: &Known,
    key: &str,
    shutdown: &CancellationToken,
) {
    let (Some(velocity), Some(stock)) = (known.velocity.get(key), known.stock.get(key)) else {
        return;
    };
    let stockout_days = Thresholds::stockout_days(
        known.thresholds.get(key),
        known.thresholds.get(subjects::DEFAULT_THRESHOLD_KEY),
    );
    let subject = subjects::stockout_alert(&velocity.warehouse, &velocity.sku);
    watcher::announce_change(announcer, &subject, now, shutdown, |last| {
        react_stockout(last, velocity, stock, stockout_days)
    })
    .await;
}
