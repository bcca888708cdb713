//! A service's life from connect to drain: what every service `main` calls.

use std::future::Future;

use async_nats::Client;
use tokio_util::sync::CancellationToken;

use crate::connect::{self, ConnectArgs, ConnectError, Refused, Signals, Startup};
use crate::shutdown::shutdown_token;

/// A service's whole life: connect as `name` (waiting for the server if it is not up yet),
/// run `service` until ctrl-c or SIGTERM cancels its token, then drain the connection so
/// that nothing it published is left unsent. A refusal by the server (a permission
/// violation, say) ends it at once with the server's words.
pub async fn serve<F, Fut, E>(name: &str, args: &ConnectArgs, service: F) -> Result<(), E>
where
    F: FnOnce(Client, CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: From<ConnectError> + From<Refused>,
{
    // Listen for SIGTERM before anything else, so that it stops a service that is still
    // waiting for the server cleanly too.
    let shutdown = shutdown_token();
    let signals = Signals::default();
    let client = tokio::select! {
        client = connect::connect_with(args, name, Startup::Retry, &signals) => client?,
        _ = shutdown.cancelled() => return Ok(()),
    };
    let result = signals
        .unless_refused(service(client.clone(), shutdown))
        .await;
    if let Err(e) = client.drain().await {
        tracing::warn!(error = %e, "draining the connection");
    }
    result
}
