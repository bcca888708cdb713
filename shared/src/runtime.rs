//! What every process needs at its edges: tracing from `RUST_LOG`, a shutdown signal,
//! a service's life from connect to drain, and bounded, jittered backoff for retries.

use std::future::Future;
use std::time::Duration;

use async_nats::Client;
use tokio_util::sync::CancellationToken;
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

/// Resolves on ctrl-c or SIGTERM.
pub async fn shutdown_signal() {
    listen_for_shutdown().await
}

/// Registers for ctrl-c and SIGTERM now; the returned future resolves on either.
fn listen_for_shutdown() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    async move {
        let ctrl_c = async {
            if let Err(e) = tokio::signal::ctrl_c().await {
                tracing::error!(error = %e, "cannot listen for ctrl-c");
                std::future::pending::<()>().await;
            }
        };
        #[cfg(unix)]
        let term = async {
            match term {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    std::future::pending::<()>().await;
                }
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => tracing::info!("ctrl-c: shutting down"),
            _ = term => tracing::info!("SIGTERM: shutting down"),
        }
    }
}

/// A token cancelled on ctrl-c or SIGTERM. SIGTERM is caught from the moment this
/// returns (its default action would end the process on the spot).
pub fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    let signalled = listen_for_shutdown();
    tokio::spawn(async move {
        signalled.await;
        trigger.cancel();
    });
    token
}

/// A service's whole life: connect as `name` (waiting for the server if it is not up yet),
/// run `service` until ctrl-c or SIGTERM cancels its token, then drain the connection so
/// that nothing it published is left unsent. A refusal by the server (a permission
/// violation, say) ends it at once with the server's words.
pub async fn serve<F, Fut, E>(
    name: &str,
    args: &crate::connect::ConnectArgs,
    service: F,
) -> Result<(), E>
where
    F: FnOnce(Client, CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: From<crate::connect::ConnectError> + From<crate::connect::Refused>,
{
    // Listen for SIGTERM before anything else, so that it stops a service that is still
    // waiting for the server cleanly too.
    let shutdown = shutdown_token();
    let client = tokio::select! {
        client = crate::connect::connect(args, name, crate::connect::Startup::Retry) => client?,
        _ = shutdown.cancelled() => return Ok(()),
    };
    let result = crate::connect::unless_refused(service(client.clone(), shutdown)).await;
    if let Err(e) = client.drain().await {
        tracing::warn!(error = %e, "draining the connection");
    }
    result
}

/// Where time comes from, so that what depends on it can be tested with a clock that
/// tests move themselves.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        chrono::Utc::now().timestamp_millis()
    }
}

/// Exponential backoff with full jitter, bounded by `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            attempt: 0,
        }
    }

    /// The next delay: a random duration up to `base * 2^attempt`, at most `max`.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(jitter())
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A random fraction in [0.5, 1).
fn jitter() -> f64 {
    let bits = uuid::Uuid::new_v4().as_u128() as u64 >> 11;
    0.5 + (bits as f64 / (1u64 << 53) as f64) / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stays_bounded() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(200));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(5) && first < Duration::from_millis(10));
        for _ in 0..40 {
            assert!(b.next_delay() < Duration::from_millis(200));
        }
        b.reset();
        assert!(b.next_delay() < Duration::from_millis(10));
    }
}
