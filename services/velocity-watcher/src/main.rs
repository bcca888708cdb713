//! `velocity-watcher`: sales velocity + stock -> band changes and stockout forecasts.

use clap::Parser;
use stockwire::service::serve;
use stockwire::telemetry::init_tracing;
use velocity_watcher::{run, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    init_tracing("info");
    serve("velocity-watcher", &config.connect, |client, shutdown| {
        run(client, &config, shutdown)
    })
    .await
}
