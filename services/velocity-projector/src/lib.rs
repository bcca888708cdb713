//! # velocity-projector
//!
//! Turns sales into the `sales_velocity` view: per product and warehouse, the units sold in
//! the last hour, day and week by event time, and the week's average per day. The windows
//! slide as the clock moves even when nothing sells: every `--tick-s` seconds each value is
//! re-evaluated and the ones whose numbers changed are written.
//!
//! The loop is `stockwire::projector` (ordered from the checkpoint, checked commits, skip
//! by `last_seq`, dead letters, rebuilds), reading only `warehouse.*.product.*.sold`. The
//! window buckets live in each value, so a restart or a redelivery neither loses nor
//! double-counts a sale.
#![forbid(unsafe_code)]
#![deny(unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use stockwire::clock::Clock;
use stockwire::connect::ConnectArgs;
use stockwire::domain::{Event, VelocityView};
use stockwire::envelope::{Envelope, Recorded};
use stockwire::projection::{self, Projection};
use stockwire::projector;
use stockwire::{subjects, views};
use tokio_util::sync::CancellationToken;

/// The `sales_velocity` view.
#[derive(Clone)]
pub struct VelocityProjection {
    clock: Arc<dyn Clock>,
    tick: Duration,
}

impl VelocityProjection {
    pub fn new(clock: Arc<dyn Clock>, tick: Duration) -> Self {
        Self { clock, tick }
    }
}

impl Projection for VelocityProjection {
    type View = VelocityView;

    fn bucket(&self) -> &'static str {
        views::VELOCITY.bucket
    }

    fn filter(&self) -> String {
        views::VELOCITY.filter()
    }

    fn key(&self, event: &Event) -> String {
        subjects::view_key(event.warehouse(), event.sku())
    }

    fn apply(&self, view: &mut Option<VelocityView>, recorded: &Recorded, seq: u64) -> bool {
        let event = &recorded.event;
        view.get_or_insert_with(|| {
            VelocityView::new(event.warehouse().clone(), event.sku().clone())
        })
        .apply(event, seq, recorded.meta.timestamp_ms, self.clock.now_ms())
    }

    fn tick_every(&self) -> Option<Duration> {
        Some(self.tick)
    }

    fn tick(&self, view: &mut VelocityView) -> bool {
        view.tick(self.clock.now_ms())
    }
}

/// The service's settings.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "velocity-projector",
    version,
    about = "Projects sales into the sales_velocity view"
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
    /// How often the windows are moved on when nothing sells, in seconds.
    #[arg(long, env = "STOCKWIRE_TICK_S", default_value_t = 60.0)]
    pub tick_s: f64,
    /// How long live sales are gathered before they are committed, in milliseconds:
    /// fewer, larger commits spare the server's disk, and a rate over an hour does not
    /// need to be fresher than this. 0 commits each sale at once.
    #[arg(long, env = "STOCKWIRE_LINGER_MS", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub linger_ms: u64,
}

/// Runs the projector with `clock` until `shutdown` is cancelled.
pub async fn run(
    client: async_nats::Client,
    config: &Config,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if !(config.tick_s.is_finite() && config.tick_s > 0.0) {
        anyhow::bail!(
            "--tick-s must be a positive number of seconds, not {}",
            config.tick_s
        );
    }
    let partition = config.scale.partition().map_err(anyhow::Error::msg)?;
    let settings = projection::Config {
        partition,
        cache_keys: config.scale.cache_keys(),
        envelope: Envelope::new(&config.header_prefix)?,
        max_batch: config.batch as usize,
        commit_timeout: config.connect.request_timeout().max(Duration::from_secs(5)),
        live_linger: Duration::from_millis(config.linger_ms),
    };
    let projection = VelocityProjection::new(clock, Duration::from_secs_f64(config.tick_s));
    projector::run(client, projection, settings, shutdown).await?;
    Ok(())
}
