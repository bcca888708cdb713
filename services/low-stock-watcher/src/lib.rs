//! # low-stock-watcher
//!
//! Watches the `stock` view (and the thresholds) and announces `stock.low` when a
//! product's `on_hand` falls below its threshold and `stock.recovered` when it is back at
//! or above it, on `alerts.low_stock.{warehouse}.{sku}` in `ALERTS`, once per crossing.
//!
//! This crate says what the watcher is ([`watcher`]: the stock view, judged by the pure
//! `stockwire::domain::react_low_stock`) and how it is configured; the loop (inputs,
//! what is known, announcing exactly once across restarts and concurrent watchers) is
//! `stockwire::watcher`.
#![forbid(unsafe_code)]
#![deny(unreachable_pub)]

use std::sync::Arc;

use stockwire::clock::{Clock, SystemClock};
use stockwire::connect::ConnectArgs;
use stockwire::domain::{react_low_stock, AlertTopic};
use stockwire::envelope::Envelope;
use stockwire::subjects;
use stockwire::watcher::{self, Rule, Watcher};
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

/// The low-stock watcher: every product's stock against its low-stock threshold. A
/// product whose stock key was deleted is not judged.
pub fn watcher() -> Watcher {
    Watcher {
        name: "low-stock-watcher",
        views: vec![subjects::STOCK_BUCKET],
        rules: vec![Rule::new(AlertTopic::LowStock, |last, product| {
            react_low_stock(last, product.stock?, product.low_stock_below())
        })],
    }
}

/// Runs until `shutdown` is cancelled.
pub async fn run(
    client: async_nats::Client,
    config: &Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    run_with_clock(client, config, Arc::new(SystemClock), shutdown).await
}

/// [`run`], with the alerts stamped by `clock`.
pub async fn run_with_clock(
    client: async_nats::Client,
    config: &Config,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let envelope = Envelope::new(&config.header_prefix)?;
    watcher::run(client, watcher(), envelope, clock, shutdown).await;
    Ok(())
}
