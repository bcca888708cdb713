//! # low-stock-watcher
//!
//! Watches the `stock` view (every key's current value first, then every change) and the
//! `thresholds` bucket, and announces `stock.low` when a product's `on_hand` falls below its
//! threshold and `stock.recovered` when it is back at or above it, on
//! `alerts.low_stock.{warehouse}.{sku}` in `ALERTS`.
//!
//! Exactly once per crossing, across restarts and concurrent watchers: what was last
//! announced for a product is the last message on its alert subject, and the next one is
//! published expecting that message's sequence (`stockwire::announce`). The decision itself
//! is the pure `stockwire::domain::react_low_stock`.
#![forbid(unsafe_code)]
#![deny(unreachable_pub)]

use std::collections::HashMap;

use async_nats::jetstream::kv::{self, Operation};
use stockwire::announce::Announcer;
use stockwire::connect::ConnectArgs;
use stockwire::domain::{react_low_stock, StockView, Thresholds};
use stockwire::envelope::Envelope;
use stockwire::subjects;
use stockwire::watch::Followed;
use stockwire::watcher;
use tokio_util::sync::CancellationToken;

/// The service's settings.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "low-stock-watcher",
    version,
    about = "Announces low stock and recovery, once per crossing"
)]
pub struct Config {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Prefix of the standard event headers.
    #[arg(long, env = "STOCKWIRE_HEADER_PREFIX", default_value = subjects::DEFAULT_HEADER_PREFIX)]
    pub header_prefix: String,
}

/// What the watcher knows: the latest stock of every product, and every threshold.
#[derive(Default)]
struct Known {
    stock: HashMap<String, StockView>,
    thresholds: HashMap<String, Thresholds>,
}

impl Known {
    fn threshold(&self, key: &str) -> i64 {
        Thresholds::low_stock_below(
            self.thresholds.get(key),
            self.thresholds.get(subjects::DEFAULT_THRESHOLD_KEY),
        )
    }
}

/// Runs until `shutdown` is cancelled.
pub async fn run(
    client: async_nats::Client,
    config: &Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let js = async_nats::jetstream::new(client.clone());
    let mut announcer = Announcer::new(
        js.clone(),
        Envelope::new(&config.header_prefix)?,
        subjects::LOW_STOCK_ALERTS,
    );
    let followers = shutdown.child_token();
    let Some(mut inputs) = watcher::inputs(&js, &[subjects::STOCK_BUCKET], &followers).await else {
        return Ok(());
    };
    let mut known = Known::default();
    tracing::info!("low-stock watcher started");
    loop {
        let item = tokio::select! {
            _ = shutdown.cancelled() => break,
            item = inputs.recv() => item,
        };
        let Some(item) = item else { break };
        let Followed::Entry { bucket, entry } = item else {
            continue;
        };
        if entry.key.starts_with('_') {
            continue;
        }
        for key in known.update(bucket, entry) {
            evaluate(&mut announcer, &known, &key, &shutdown).await;
        }
    }
    followers.cancel();
    tracing::info!("low-stock watcher stopped");
    Ok(())
}

impl Known {
    /// Takes in a change of the stock view or of a threshold; returns the products to
    /// evaluate again.
    fn update(&mut self, bucket: &str, entry: kv::Entry) -> Vec<String> {
        let key = entry.key;
        let put = entry.operation == Operation::Put;
        if bucket == subjects::STOCK_BUCKET {
            if !put {
                self.stock.remove(&key);
                return vec![];
            }
            match serde_json::from_slice::<StockView>(&entry.value) {
                Ok(view) => {
                    self.stock.insert(key.clone(), view);
                    vec![key]
                }
                Err(e) => {
                    tracing::error!(key, error = %e, "unreadable stock value; skipped");
                    vec![]
                }
            }
        } else {
            if put {
                match serde_json::from_slice::<Thresholds>(&entry.value) {
                    Ok(t) => {
                        self.thresholds.insert(key.clone(), t);
                    }
                    Err(e) => {
                        tracing::error!(key, error = %e, "unreadable threshold; ignored");
                        return vec![];
                    }
                }
            } else {
                self.thresholds.remove(&key);
            }
            if key == subjects::DEFAULT_THRESHOLD_KEY {
                self.stock.keys().cloned().collect()
            } else if self.stock.contains_key(&key) {
                vec![key]
            } else {
                vec![]
            }
        }
    }
}

/// Announces the product's crossing, if it made one since the last announcement.
async fn evaluate(
    announcer: &mut Announcer,
    known: &Known,
    key: &str,
    shutdown: &CancellationToken,
) {
    let Some(view) = known.stock.get(key) else {
        return;
    };
    let threshold = known.threshold(key);
    let subject = subjects::low_stock_alert(&view.warehouse, &view.sku);
    let now = || chrono::Utc::now().timestamp_millis();
    watcher::announce_change(announcer, &subject, now, shutdown, |last| {
        react_low_stock(last, view, threshold)
    })
    .await;
}
