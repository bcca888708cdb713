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
//! A product is judged only when both its velocity and its stock are known: one whose
//! stock key is not written yet (stock-projector behind) or was deleted is not taken as
//! out of stock. This crate says what the watcher is ([`watcher`]: the two views, judged
//! by the pure `stockwire::domain::react_band` and `react_stockout`); the loop is
//! `stockwire::watcher`, as for low stock.
#![forbid(unsafe_code)]
#![deny(unreachable_pub)]

use std::sync::Arc;

use stockwire::clock::{Clock, SystemClock};
use stockwire::connect::ConnectArgs;
use stockwire::domain::{react_band, react_stockout, AlertTopic, BandLimits};
use stockwire::envelope::Envelope;
use stockwire::subjects;
use stockwire::watcher::{self, Rule, Watcher};
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

/// The velocity watcher: every product's band and days of cover, from its velocity and
/// its stock (both needed).
pub fn watcher(limits: BandLimits) -> Watcher {
    Watcher {
        name: "velocity-watcher",
        views: vec![subjects::STOCK_BUCKET, subjects::VELOCITY_BUCKET],
        rules: vec![
            Rule::new(AlertTopic::Velocity, move |last, product| {
                react_band(last, product.velocity?, product.stock?, limits)
            }),
            Rule::new(AlertTopic::Stockout, |last, product| {
                let days = product.stockout_days();
                react_stockout(last, product.velocity?, product.stock?, days)
            }),
        ],
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
    let envelope = Envelope::new(&config.header_prefix)?;
    watcher::run(client, watcher(limits), envelope, clock, shutdown).await;
    Ok(())
}
