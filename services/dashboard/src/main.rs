//! `stockwire-dashboard`: the live web page of stock, alerts and sales.

use clap::Parser;
use dashboard::{run, Config};
use stockwire::service::serve;
use stockwire::telemetry::init_tracing;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    init_tracing("info");
    serve(
        "stockwire-dashboard",
        &config.connect,
        |client, shutdown| run(client, &config, shutdown),
    )
    .await
}
