//! `stockwire-bench`: Stockwire's figures next to the raw JetStream ceiling.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = stockwire_bench::Cli::parse();
    stockwire::telemetry::init_tracing("warn");
    stockwire_bench::run(cli).await
}
