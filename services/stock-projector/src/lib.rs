//! # stock-projector
//!
//! Turns the event log into the `stock` view: one key per product and warehouse
//! (`{warehouse}.{sku}`) with units per location, `on_hand`, and the sequence and time of
//! the last event applied. The loop itself (ordered reading from the checkpoint, per-key
//! folding, checked commits, dead letters, rebuilds) is `stockwire::projector`; this crate
//! says what the view is ([`StockProjection`]) and how the service is configured.
//!
//! The same process keeps the in-transit view (`transit`, [`TransitProjection`]): one key
//! per transfer, both legs paired. It is small and never split, so it runs beside the
//! stock view in every instance under a lease of its own (`transit-projector`): one
//! instance writes it, whatever the stock view's partitions. At an edge site it does not
//! run: the site's `transit` is a copy of the hub's, which alone sees both legs of a
//! transfer between two homes.
#![forbid(unsafe_code)]
#![deny(unreachable_pub)]

use std::time::Duration;

use stockwire::connect::ConnectArgs;
use stockwire::domain::{Event, StockView, TransitView};
use stockwire::envelope::{Envelope, Recorded};
use stockwire::partition::Partition;
use stockwire::projection::{self, Projection};
use stockwire::projector;
use stockwire::retry::Backoff;
use stockwire::{sites, subjects, views};
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

/// The `transit` view: both legs of every transfer, keyed by its id.
#[derive(Debug, Clone, Default)]
pub struct TransitProjection;

impl Projection for TransitProjection {
    type View = TransitView;

    fn bucket(&self) -> &'static str {
        views::TRANSIT.bucket
    }

    fn filter(&self) -> String {
        views::TRANSIT.filter()
    }

    fn key(&self, event: &Event) -> String {
        match event {
            Event::TransferredOut { transfer_id, .. }
            | Event::TransferredIn { transfer_id, .. } => transfer_id.to_string(),
            // Not read (see the filter); a key no transfer can have.
            other => format!("_{}", other.event_type()),
        }
    }

    fn apply(&self, view: &mut Option<TransitView>, recorded: &Recorded, seq: u64) -> bool {
        TransitView::apply(view, &recorded.event, seq, recorded.meta.timestamp_ms)
    }

    /// A transfer with both legs (received whole or short) stays a week, then the server
    /// removes its key; one still waiting for a leg stays until it comes.
    fn expires(view: &TransitView) -> Option<Duration> {
        view.closed().then_some(CLOSED_KEPT)
    }
}

/// How long a transfer with both legs stays in the in-transit view.
pub const CLOSED_KEPT: Duration = Duration::from_secs(7 * 24 * 3600);

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
    let transit = tokio::spawn(run_transit(
        client.clone(),
        projection::Config {
            partition: Partition::WHOLE,
            cache_keys: None,
            ..settings.clone()
        },
        shutdown.clone(),
    ));
    let stock = projector::run(
        client,
        StockProjection::default(),
        settings,
        shutdown.clone(),
    )
    .await;
    // One stops, both stop.
    shutdown.cancel();
    let transit = transit.await;
    stock?;
    transit.map_err(|e| anyhow::anyhow!("the transit view's projector: {e}"))??;
    Ok(())
}

/// The in-transit view's projector, unless this server is an edge site (its `transit` is
/// the hub's, mirrored).
async fn run_transit(
    client: async_nats::Client,
    settings: projection::Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let js = async_nats::jetstream::new(client.clone());
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
    let domain = loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            asked = sites::domain(&js, Duration::from_secs(10)) => match asked {
                Ok(domain) => break domain,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot tell whether this is an edge site yet; asking again");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                }
            },
        }
    };
    if let Some(site) = domain.filter(|d| d != subjects::HUB_DOMAIN) {
        tracing::info!(%site, "an edge site: its transit view is the hub's, mirrored; not projecting it here");
        shutdown.cancelled().await;
        return Ok(());
    }
    projector::run(client, TransitProjection, settings, shutdown).await?;
    Ok(())
}
