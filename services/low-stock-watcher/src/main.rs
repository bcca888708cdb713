//! `low-stock-watcher`: the stock view -> `stock.low` / `stock.recovered` alerts.

use clap::Parser;
use low_stock_watcher::{run, Config};
use stockwire::service::serve;
use stockwire::telemetry::init_tracing;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    init_tracing("info");
    serve("low-stock-watcher", &config.connect, |client, shutdown| {
        run(client, &config, shutdown)
    })
    .await
}
