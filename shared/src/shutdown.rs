//! Stopping cleanly: ctrl-c or SIGTERM becomes a cancelled token, every wait in a loop is
//! a [`pause`] that ends early when it is, and a service's work gets [`GRACE`] after it to
//! end by itself ([`finish_within`]) before it is dropped.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

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

/// Waits `delay`, or less if `shutdown` is cancelled first.
pub async fn pause(shutdown: &CancellationToken, delay: Duration) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(delay) => {}
    }
}

/// How long a service's work may go on after it is asked to stop: the batch in hand is
/// committed, an alert in flight announced. A request to a cluster node that has just died
/// can go unanswered for seconds; it is abandoned then, and the stop stays within 2 s.
pub const GRACE: Duration = Duration::from_millis(700);

/// Runs `work` to its end, or until `grace` after `shutdown` is cancelled, whichever comes
/// first; `None` when it was cut short. Only for work whose every write is safe to
/// abandon midway (a compare-and-set, a checkpoint stored after what it covers): what
/// it had not finished is redone by the next instance.
pub async fn finish_within<T>(
    shutdown: &CancellationToken,
    grace: Duration,
    work: impl std::future::Future<Output = T>,
) -> Option<T> {
    let cut = async {
        shutdown.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        done = work => Some(done),
        _ = cut => None,
    }
}
