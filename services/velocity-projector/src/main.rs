//! `velocity-projector`: sales -> the `sales_velocity` view.

use std::sync::Arc;

use clap::Parser;
use stockwire::runtime::{init_tracing, serve, SystemClock};
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
