//! # stock-projector
//!
//! Turns the event log into the `stock` view: one key per product and warehouse
//! (`{warehouse}.{sku}`) with units per location, `on_hand`, and the sequence and time of
//! the last event applied. The loop itself (ordered reading from the checkpoint, per-key
//! folding, checked commits, dead letters, rebuilds) is `stockwire::projector`; this crate
//! says what the view is ([`StockProjection`]) and how the service is configured.
#![forbid(unsafe_code)]
#![deny(unreachable_pub)]

use std::time::Duration;

use stockwire::connect::ConnectArgs;
use stockwire::domain::{Event, StockView};
use stockwire::envelope::{Envelope, Recorded};
use stockwire::projection::{self, Projection};
use stockwire::projector;
use stockwire::{subjects, views};
use tokio_util::sync::CancellationToken;

/// The `stock` view: every event of record changes its product's stock.
#[derive(Debug, Clone)]
pub struct StockProjection {
    bucket: &'static str,
    filter: String,
}

impl Default for StockProjection {
    fn default() -> Self {
        Self {
            bucket: views::STOCK.bucket,
            filter: views::STOCK.filter(),
        }
    }
}

impl StockProjection {
    /// The same projection into another bucket, from the events under `filter`
    /// (`stockwire bench` measures the projector on a scratch view this way).
    pub fn into_bucket(bucket: &'static str, filter: String) -> Self {
        Self { bucket, filter }
    }
}

impl Projection for StockProjection {
    type View = StockView;

    fn bucket(&self) -> &'static str {
        self.bucket
    }

    fn filter(&self) -> String {
        self.filter.clone()
    }

    fn key(&self, event: &Event) -> String {
        subjects::view_key(event.warehouse(), event.sku())
    }

    fn apply(&self, view: &mut Option<StockView>, recorded: &Recorded, seq: u64) -> bool {
        let event = &recorded.event;
        view.get_or_insert_with(|| StockView::new(event.warehouse().clone(), event.sku().clone()))
            .apply(event, seq, recorded.meta.timestamp_ms)
    }
}

/// The service's settings.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "stock-projector",
    version,
    about = "Projects the Stockwire event log into the stock view"
)]
pub struct Config {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(flatten)]
    pub scale: projection::ScaleArgs,
    /// Prefix of the standard event headers.
    #[arg(long, env = "STOCKWIRE_HEADER_PREFIX", default_value = subjects::DEFAULT_HEADER_PREFIX)]
    pub header_prefix: String,
    /// Events folded into one commit, at most (its keys are written 999 to an atomic batch).
    #[arg(long, env = "STOCKWIRE_BATCH", default_value_t = stockwire::projection::DEFAULT_MAX_BATCH as u64,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub batch: u64,
}

/// Runs the projector until `shutdown` is cancelled.
pub async fn run(
    client: async_nats::Client,
    config: &Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let partition = config.scale.partition().map_err(anyhow::Error::msg)?;
    let settings = projection::Config {
        partition,
        cache_keys: config.scale.cache_keys(),
        envelope: Envelope::new(&config.header_prefix)?,
        max_batch: config.batch as usize,
        commit_timeout: config.connect.request_timeout().max(Duration::from_secs(5)),
        // Low-stock alerts wait on this view: commit live events at once.
        live_linger: Duration::ZERO,
    };
    projector::run(client, StockProjection::default(), settings, shutdown).await?;
    Ok(())
}
