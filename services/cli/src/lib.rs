//! # The `stockwire` CLI
//!
//! Publishes events of record and queries what Stockwire knows. `main.rs` parses the
//! command line into [`Cli`] and calls [`run`]; each command lives in its own module.
//!
//! ## Layout
//! - `failure`: failure kinds and their exit codes (0 ok, 1 NATS, 2 invalid input, 3 rejected,
//!   4 clock); every error of the command side is mapped to its code there.
//! - `args`: the `publish` kinds' arguments, parsed straight into a `Command`.
//! - `meta`: a new event's msg id and time, checked against this machine's and the server's clock.
//! - `record`: a command recorded through the executor (`publish` and `transfer` use it).
//! - `wait`: `--wait`, until the stock view has applied an event.
//! - `setup`, `publish` (+ `import`), `stock`, `velocity`, `history`, `threshold`, `alerts`, `rebuild`,
//!   `verify`, `status`,
//!   `deadletter`: one command each.
//! - `bench`: launches `stockwire-bench`, the benchmark's own binary (an admin's tool).
//! - `site`: edge sites (warehouses with their own server), at the hub; `transit`: the
//!   arrival of a transfer between two homes.
//! - `simulate`: a living network of warehouses through the real write paths.
//! - `output`: tables and JSON.
#![forbid(unsafe_code)]
#![deny(unreachable_pub)]

mod alerts;
mod args;
mod bench;
mod deadletter;
mod failure;
mod history;
mod import;
mod instances;
mod meta;
mod output;
mod publish;
mod rebuild;
mod record;
mod setup;
mod simulate;
mod site;
mod status;
mod stock;
mod threshold;
mod transfer;
mod transit;
mod velocity;
mod verify;
mod wait;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use stockwire::connect::{connect_with, ConnectArgs, Signals, Startup};
use stockwire::envelope::Envelope;

pub use alerts::AlertsArgs;
pub use args::{PublishArgs, PublishKind};
pub use bench::BenchArgs;
pub use deadletter::DeadletterArgs;
use failure::{Failure, Outcome};
pub use history::HistoryArgs;
pub use rebuild::RebuildArgs;
pub use setup::SetupArgs;
pub use simulate::SimulateArgs;
pub use site::SiteArgs;
pub use status::StatusArgs;
pub use stock::StockArgs;
pub use threshold::ThresholdArgs;
pub use transfer::TransferArgs;
pub use transit::TransitArgs;
pub use velocity::VelocityArgs;
pub use verify::VerifyArgs;

/// Stockwire: event-sourced warehouse inventory on NATS JetStream.
#[derive(Debug, Parser)]
#[command(name = "stockwire", version, about, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Prefix of the standard event headers (`myorg_type`, ...).
    #[arg(long, env = "STOCKWIRE_HEADER_PREFIX", default_value = stockwire::subjects::DEFAULT_HEADER_PREFIX, global = true)]
    pub header_prefix: String,
    /// Print data as JSON (one document per line) instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// How long `--wait` waits for the stock view, in seconds.
    #[arg(
        long,
        env = "STOCKWIRE_WAIT_TIMEOUT_S",
        default_value_t = 15,
        global = true
    )]
    pub wait_timeout_s: u64,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or update the streams and buckets (safe to run again).
    Setup(SetupArgs),
    /// Record what happened to stock: one event, or a file of them.
    Publish(PublishArgs),
    /// Move units between warehouses: two events, stored together or not at all.
    Transfer(TransferArgs),
    /// The stock view: units per product, warehouse and location (--as-of: replayed from the log).
    Stock(StockArgs),
    /// The sales_velocity view: units sold in the last hour, day and week, fastest first.
    Velocity(VelocityArgs),
    /// Every event of one product in one warehouse, oldest first.
    History(HistoryArgs),
    /// Low-stock and stockout thresholds: per product, or the default.
    Threshold(ThresholdArgs),
    /// Derived events (low stock, recovery), oldest first; --follow for new ones as they come.
    Alerts(AlertsArgs),
    /// Rebuild a view from the log (done by its running projector), with a progress bar.
    Rebuild(RebuildArgs),
    /// Compare the stock view with a replay of the log; list differences (exit 3 if any).
    Verify(VerifyArgs),
    /// Streams, buckets, projector lag and dead letters (--check: exit 1 if unhealthy).
    Status(StatusArgs),
    /// The events a projector could not apply: list, show, replay, purge.
    Deadletter(DeadletterArgs),
    /// Measure Stockwire against the raw JetStream ceiling (runs stockwire-bench, built beside this binary).
    Bench(BenchArgs),
    /// Run a living warehouse network: customers buying, orders on low stock, deliveries.
    Simulate(SimulateArgs),
    /// Edge sites, at the hub: add a warehouse that records at its own server; list them.
    Site(SiteArgs),
    /// Transfers between two homes: record the arrival at the destination's home.
    Transit(TransitArgs),
}

/// What every command gets: its settings, and a way to reach NATS.
pub(crate) struct Ctx {
    pub(crate) connect: ConnectArgs,
    pub(crate) envelope: Envelope,
    pub(crate) json: bool,
    pub(crate) wait_timeout: std::time::Duration,
    /// What the server refuses any of this command's connections.
    pub(crate) signals: Signals,
}

impl Ctx {
    /// Connects, failing at once with the reason when the server is not there.
    pub(crate) async fn client(&self) -> Result<async_nats::Client, Failure> {
        connect_with(
            &self.connect,
            "stockwire-cli",
            Startup::FailFast,
            &self.signals,
        )
        .await
        .map_err(|e| Failure::from(anyhow::Error::new(e)))
    }

    pub(crate) async fn jetstream(&self) -> Result<async_nats::jetstream::Context, Failure> {
        Ok(async_nats::jetstream::new(self.client().await?))
    }
}

/// Runs one command; prints its failure to stderr and returns the exit code.
pub async fn run(cli: Cli) -> ExitCode {
    let envelope = match Envelope::new(&cli.header_prefix) {
        Ok(envelope) => envelope,
        Err(e) => return report(Failure::invalid(e.to_string())),
    };
    let ctx = Ctx {
        connect: cli.connect,
        envelope,
        json: cli.json,
        wait_timeout: std::time::Duration::from_secs(cli.wait_timeout_s),
        signals: Signals::default(),
    };
    // A permission violation would otherwise surface as a timeout with no reason.
    let outcome = ctx
        .signals
        .unless_refused(dispatch(&ctx, cli.command))
        .await;
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => report(failure),
    }
}

async fn dispatch(ctx: &Ctx, command: Command) -> Outcome {
    match command {
        Command::Setup(args) => setup::run(ctx, args).await,
        Command::Publish(args) => publish::run(ctx, args).await,
        Command::Transfer(args) => transfer::run(ctx, args).await,
        Command::Stock(args) => stock::run(ctx, args).await,
        Command::Velocity(args) => velocity::run(ctx, args).await,
        Command::History(args) => history::run(ctx, args).await,
        Command::Threshold(args) => threshold::run(ctx, args).await,
        Command::Alerts(args) => alerts::run(ctx, args).await,
        Command::Rebuild(args) => rebuild::run(ctx, args).await,
        Command::Verify(args) => verify::run(ctx, args).await,
        Command::Status(args) => status::run(ctx, args).await,
        Command::Deadletter(args) => deadletter::run(ctx, args).await,
        Command::Bench(args) => bench::run(ctx, args).await,
        Command::Simulate(args) => simulate::run(ctx, args).await,
        Command::Site(args) => site::run(ctx, args).await,
        Command::Transit(args) => transit::run(ctx, args).await,
    }
}

fn report(failure: Failure) -> ExitCode {
    eprintln!("stockwire: {}", failure.message());
    failure.exit_code()
}
