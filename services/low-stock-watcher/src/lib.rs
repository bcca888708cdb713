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
//! is the pure `stockwire::domain::react`.
#![forbid(unsafe_code)]
#![deny(unreachable_pub)]

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::kv::Operation;
use stockwire::announce::{Announced, Announcer};
use stockwire::connect::ConnectArgs;
use stockwire::domain::{react, LowStock, LowStockAlert, StockView, Thresholds};
use stockwire::envelope::Envelope;
use stockwire::runtime::Backoff;
use stockwire::subjects;
use stockwire::watch::{follow, Followed};
use tokio::sync::mpsc;
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
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let (stock_kv, thresholds_kv) = loop {
        match (
            js.get_key_value(subjects::STOCK_BUCKET).await,
            js.get_key_value(subjects::THRESHOLDS_BUCKET).await,
        ) {
            (Ok(s), Ok(t)) => break (s, t),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "cannot open the stock or thresholds bucket (run `stockwire setup`?); retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    };
    let mut announcer = Announcer::new(
        js.clone(),
        Envelope::new(&config.header_prefix),
        subjects::LOW_STOCK_ALERTS,
    );
    let (tx, mut rx) = mpsc::channel(4096);
    let followers = shutdown.child_token();
    // Thresholds first: a product must not be judged against a threshold not yet read.
    let _thresholds = follow(
        js.clone(),
        thresholds_kv,
        subjects::THRESHOLDS_BUCKET,
        tx.clone(),
        followers.clone(),
    );
    let mut stock_task = Some((js.clone(), stock_kv, tx));
    let mut known = Known::default();
    tracing::info!("low-stock watcher started");

    loop {
        let item = tokio::select! {
            _ = shutdown.cancelled() => break,
            item = rx.recv() => item,
        };
        let Some(item) = item else { break };
        match item {
            Followed::CaughtUp { bucket } if bucket == subjects::THRESHOLDS_BUCKET => {
                if let Some((js, kv, tx)) = stock_task.take() {
                    follow(js, kv, subjects::STOCK_BUCKET, tx, followers.clone());
                }
            }
            Followed::CaughtUp { bucket } => tracing::info!(bucket, "caught up"),
            Followed::Entry { bucket, entry } => {
                if entry.key.starts_with('_') {
                    continue;
                }
                let key = entry.key.clone();
                let changed: Vec<String> = if bucket == subjects::STOCK_BUCKET {
                    if entry.operation == Operation::Put {
                        match serde_json::from_slice::<StockView>(&entry.value) {
                            Ok(view) => {
                                known.stock.insert(key.clone(), view);
                                vec![key]
                            }
                            Err(e) => {
                                tracing::error!(key, error = %e, "unreadable stock value; skipped");
                                vec![]
                            }
                        }
                    } else {
                        known.stock.remove(&key);
                        vec![]
                    }
                } else {
                    if entry.operation == Operation::Put {
                        match serde_json::from_slice::<Thresholds>(&entry.value) {
                            Ok(t) => {
                                known.thresholds.insert(key.clone(), t);
                            }
                            Err(e) => {
                                tracing::error!(key, error = %e, "unreadable threshold; ignored");
                                continue;
                            }
                        }
                    } else {
                        known.thresholds.remove(&key);
                    }
                    if key == subjects::DEFAULT_THRESHOLD_KEY {
                        known.stock.keys().cloned().collect()
                    } else if known.stock.contains_key(&key) {
                        vec![key]
                    } else {
                        vec![]
                    }
                };
                for key in changed {
                    evaluate(&mut announcer, &known, &key, &shutdown).await;
                }
            }
        }
    }
    followers.cancel();
    tracing::info!("low-stock watcher stopped");
    Ok(())
}

/// Announces the product's crossing, if it made one since the last announcement.
/// Retries transient failures in place until done or shut down.
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
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
    while !shutdown.is_cancelled() {
        let result = async {
            let last = announcer.last(&subject).await?;
            let state = match &last {
                Some(l) if l.event_type == LowStockAlert::LOW => LowStock::Low,
                _ => LowStock::Fine,
            };
            let Some((event_type, _)) = react(state, view.on_hand, threshold) else {
                return Ok(None);
            };
            let alert = LowStockAlert {
                warehouse: view.warehouse.clone(),
                sku: view.sku.clone(),
                on_hand: view.on_hand,
                threshold,
            };
            let msg_id = format!(
                "{event_type}:{key}:{}:{}",
                view.last_seq,
                last.as_ref().map_or(0, |l| l.sequence)
            );
            let now = chrono::Utc::now().timestamp_millis();
            announcer
                .announce(&subject, event_type, &alert, last.as_ref(), msg_id, now)
                .await
                .map(|a| Some((a, event_type)))
        }
        .await;
        match result {
            Ok(None) => return,
            Ok(Some((Announced::Stored(seq), event_type))) => {
                tracing::info!(
                    key,
                    event_type,
                    on_hand = view.on_hand,
                    threshold,
                    alert_seq = seq,
                    "announced"
                );
                return;
            }
            // Someone announced first: decide again against what they said.
            Ok(Some((Announced::Superseded, _))) => continue,
            Err(e) => {
                tracing::warn!(key, error = %e, "cannot announce yet; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    }
}
