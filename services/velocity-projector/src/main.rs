//! `velocity-projector`: sales -> the `sales_velocity` view.

use std::sync::Arc;

use clap::Parser;
use stockwire::clock::SystemClock;
use stockwire::service::serve;
use stockwire::telemetry::init_tracing;
use velocity_projector::{run, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    init_tracing("info");
    serve("velocity-projector", &config.connect, |client, shutdown| {
        run(client, &config, Arc::new(SystemClock), shutdown)
    })
    .await
}
