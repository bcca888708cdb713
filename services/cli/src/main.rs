//! `stockwire`: publish inventory events and query the views.

use clap::Parser;

// One thread: a command is one client doing one thing at a time, and the core a second
// worker would take is better left to a nats-server on the same machine (an import runs
// about a fifth faster on two cores this way, and moves no allocation between threads).
// It keeps the system allocator: with mimalloc, as the services have, an import was slower.
#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let cli = stockwire_cli::Cli::parse();
    stockwire::telemetry::init_tracing("warn");
    stockwire_cli::run(cli).await
}
