//! Stopping cleanly: ctrl-c or SIGTERM becomes a cancelled token, and every wait in a
//! loop is a [`pause`] that ends early when it is.

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
