//! Connecting to NATS: the flags every binary shares, and one `connect` that applies them.
//!
//! Server errors (a permission violation, say) reach the client as events on the
//! connection, not as errors of the call that caused them, so they are logged here.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event};

/// Where and how to connect; parsed once by each binary.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// NATS server URL.
    #[arg(
        long,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        global = true
    )]
    pub nats_url: String,
    /// User name for user/password authentication.
    #[arg(long, env = "NATS_USER", global = true)]
    pub user: Option<String>,
    /// Password for user/password authentication.
    #[arg(long, env = "NATS_PASSWORD", hide_env_values = true, global = true)]
    pub password: Option<String>,
    /// A NATS credentials file (JWT and seed).
    #[arg(long, env = "NATS_CREDS", global = true)]
    pub creds: Option<PathBuf>,
    /// How long to wait for an answer to a request, in milliseconds.
    #[arg(
        long,
        env = "STOCKWIRE_REQUEST_TIMEOUT_MS",
        default_value_t = 5000,
        global = true
    )]
    pub request_timeout_ms: u64,
}

impl ConnectArgs {
    /// Plain settings for a URL, as tests and tools use them.
    pub fn for_url(url: &str) -> Self {
        Self {
            nats_url: url.to_string(),
            user: None,
            password: None,
            creds: None,
            request_timeout_ms: 5000,
        }
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

/// What to do when the server is not there at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Startup {
    /// Fail at once with the reason (the CLI: a person is waiting).
    FailFast,
    /// Keep trying in the background (services: the server may start after them).
    Retry,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("give either --creds or --user/--password, not both")]
    Conflicting,
    #[error("--user and --password go together")]
    Incomplete,
    #[error("reading credentials file {path}: {source}")]
    Creds {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to NATS at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
}

/// Connects with the given settings; `name` shows in the server's connection list.
pub async fn connect(
    args: &ConnectArgs,
    name: &str,
    startup: Startup,
) -> Result<Client, ConnectError> {
    let mut options = match (&args.creds, &args.user, &args.password) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => return Err(ConnectError::Conflicting),
        (Some(path), None, None) => {
            ConnectOptions::with_credentials_file(path)
                .await
                .map_err(|source| ConnectError::Creds {
                    path: path.clone(),
                    source,
                })?
        }
        (None, Some(user), Some(password)) => {
            ConnectOptions::with_user_and_password(user.clone(), password.clone())
        }
        (None, None, None) => ConnectOptions::new(),
        (None, _, _) => return Err(ConnectError::Incomplete),
    };
    options = options
        .name(name)
        .request_timeout(Some(args.request_timeout()))
        .connection_timeout(Duration::from_secs(5))
        .event_callback(|event| async move {
            match event {
                Event::ServerError(err) => tracing::error!(%err, "NATS server error"),
                Event::ClientError(err) => tracing::error!(%err, "NATS client error"),
                Event::Disconnected => tracing::warn!("disconnected from NATS"),
                Event::Connected => tracing::info!("connected to NATS"),
                Event::SlowConsumer(sid) => tracing::warn!(sid, "slow consumer"),
                other => tracing::debug!(event = %other, "NATS connection event"),
            }
        });
    if startup == Startup::Retry {
        options = options.retry_on_initial_connect();
    }
    options
        .connect(args.nats_url.as_str())
        .await
        .map_err(|source| ConnectError::Connect {
            url: args.nats_url.clone(),
            source,
        })
}
