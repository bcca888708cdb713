//! `stock-projector`: the event log -> the `stock` view.

use clap::Parser;
use stock_projector::{run, Config};
use stockwire::service::serve;
use stockwire::telemetry::init_tracing;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    init_tracing("info");
    serve("stock-projector", &config.connect, |client, shutdown| {
        run(client, &config, shutdown)
    })
    .await
}
