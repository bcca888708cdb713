//! `velocity-watcher`: sales velocity + stock -> band changes and stockout forecasts.

use anyhow::Context as _;
use clap::Parser;
use stockwire::connect::{connect, Startup};
use stockwire::runtime::{init_tracing, shutdown_token};
use velocity_watcher::{run, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    init_tracing("info");
    let client = connect(&config.connect, "velocity-watcher", Startup::Retry)
        .await
        .context("velocity-watcher")?;
    let shutdown = shutdown_token();
    let result = run(client.clone(), &config, shutdown).await;
    if let Err(e) = client.drain().await {
        tracing::warn!(error = %e, "draining the connection");
    }
    result
}
