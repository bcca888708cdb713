//! `stock-projector`: the event log -> the `stock` view.

use anyhow::Context as _;
use clap::Parser;
use stock_projector::{run, Config};
use stockwire::connect::{connect, Startup};
use stockwire::runtime::{init_tracing, shutdown_token};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    init_tracing("info");
    let client = connect(&config.connect, "stock-projector", Startup::Retry)
        .await
        .context("stock-projector")?;
    let shutdown = shutdown_token();
    let result = run(client.clone(), &config, shutdown).await;
    if let Err(e) = client.drain().await {
        tracing::warn!(error = %e, "draining the connection");
    }
    result
}
