//! `low-stock-watcher`: the stock view -> `stock.low` / `stock.recovered` alerts.

use anyhow::Context as _;
use clap::Parser;
use low_stock_watcher::{run, Config};
use stockwire::connect::{connect, Startup};
use stockwire::runtime::{init_tracing, shutdown_token};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    init_tracing("info");
    let client = connect(&config.connect, "low-stock-watcher", Startup::Retry)
        .await
        .context("low-stock-watcher")?;
    let shutdown = shutdown_token();
    let result = run(client.clone(), &config, shutdown).await;
    if let Err(e) = client.drain().await {
        tracing::warn!(error = %e, "draining the connection");
    }
    result
}
