//! `velocity-projector`: sales -> the `sales_velocity` view.

use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use stockwire::connect::{connect, Startup};
use stockwire::runtime::{init_tracing, shutdown_token, SystemClock};
use velocity_projector::{run, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    init_tracing("info");
    let client = connect(&config.connect, "velocity-projector", Startup::Retry)
        .await
        .context("velocity-projector")?;
    let shutdown = shutdown_token();
    let result = run(client.clone(), &config, Arc::new(SystemClock), shutdown).await;
    if let Err(e) = client.drain().await {
        tracing::warn!(error = %e, "draining the connection");
    }
    result
}
