//! `stockwire-bench`: Stockwire's figures next to the raw JetStream ceiling.

use clap::Parser;

// The allocator the services ship with, so the projector loop measured here in-process
// runs as it does in stock-projector (the raw ceilings get it too).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = stockwire_bench::Cli::parse();
    stockwire::telemetry::init_tracing("warn");
    stockwire_bench::run(cli).await
}
