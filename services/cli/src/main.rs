//! `stockwire`: publish inventory events and query the views.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = stockwire_cli::Cli::parse();
    stockwire::telemetry::init_tracing("warn");
    stockwire_cli::run(cli).await
}
