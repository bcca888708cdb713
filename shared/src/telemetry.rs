//! Logs: tracing to stderr, filtered by `RUST_LOG`.

use tracing_subscriber::EnvFilter;

/// Logs to stderr, filtered by `RUST_LOG` (or `default_filter` when unset).
pub fn init_tracing(default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // A second init (tests) keeps the first subscriber.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
