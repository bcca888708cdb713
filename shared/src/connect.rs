//! Connecting to NATS: the flags every binary shares, and one `connect` that applies them.
//!
//! Server errors (a permission violation, say) reach the client as events on the
//! connection, not as errors of the call that caused them: that call just times out. So
//! the event callback logs them and records refusals (permission violations, a bad
//! password) in the caller's [`Signals`], and [`Signals::unless_refused`] turns the first
//! one into an error at once, with the server's own words, instead of a timeout with no
//! reason.

use std::ffi::OsString;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::{Client, ConnectErrorKind, ConnectOptions, Event, ServerError};
use tokio::sync::watch;

use crate::retry::Backoff;
use crate::subjects;

/// Where and how to connect; parsed once by each binary.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// NATS server URL (tls://host:port, or nats://, which upgrades to TLS when the server
    /// asks); a cluster's nodes as a comma-separated list.
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
    /// CA certificate (PEM) to trust for the server's certificate; requires TLS.
    #[arg(long, env = "NATS_CA", global = true)]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM), for servers that verify clients; needs --tls-key.
    #[arg(long, env = "NATS_CERT", global = true)]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of the client certificate.
    #[arg(long, env = "NATS_KEY", hide_env_values = true, global = true)]
    pub tls_key: Option<PathBuf>,
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
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            request_timeout_ms: 5000,
        }
    }

    /// The same server as another user.
    pub fn as_user(&self, user: &str, password: &str) -> Self {
        Self {
            user: Some(user.to_string()),
            password: Some(password.to_string()),
            creds: None,
            ..self.clone()
        }
    }

    /// The servers of `--nats-url`: one URL, or several separated by commas (the nodes of
    /// a cluster; the client connects to one and fails over to the others).
    pub fn servers(&self) -> Vec<&str> {
        self.nats_url
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .collect()
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// Where this connection's replies arrive: `_INBOX.{user}` for a user whose name is a
    /// plain subject token, so nats.conf can let each user read its own replies only.
    pub fn inbox_prefix(&self) -> Option<String> {
        let user = self.user.as_deref()?;
        let plain = !user.is_empty()
            && user
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        plain.then(|| format!("_INBOX.{user}"))
    }

    /// These settings as the environment variables the flags read, so that a child
    /// process (another Stockwire binary) connects as this one does, password included,
    /// without it showing on a command line.
    pub fn env(&self) -> Vec<(&'static str, OsString)> {
        let mut env = vec![
            ("NATS_URL", OsString::from(&self.nats_url)),
            (
                "STOCKWIRE_REQUEST_TIMEOUT_MS",
                OsString::from(self.request_timeout_ms.to_string()),
            ),
        ];
        let text = [("NATS_USER", &self.user), ("NATS_PASSWORD", &self.password)];
        for (name, value) in text {
            if let Some(value) = value {
                env.push((name, OsString::from(value)));
            }
        }
        let paths = [
            ("NATS_CREDS", &self.creds),
            ("NATS_CA", &self.tls_ca),
            ("NATS_CERT", &self.tls_cert),
            ("NATS_KEY", &self.tls_key),
        ];
        for (name, value) in paths {
            if let Some(value) = value {
                env.push((name, value.as_os_str().to_owned()));
            }
        }
        env
    }
}

/// What to do when the server is not there at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Startup {
    /// Fail at once with the reason (the CLI: a person is waiting).
    FailFast,
    /// Keep trying until the server answers (services: it may start after them). A refusal
    /// (bad password, bad certificate) still fails at once: trying again will not help.
    Retry,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("give either --creds or --user/--password, not both")]
    Conflicting,
    #[error("--user and --password go together")]
    Incomplete,
    #[error("--tls-cert and --tls-key go together")]
    TlsIncomplete,
    #[error("{flag} {}: {source}", path.display())]
    File {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to NATS at {url}{as_user}: {source}")]
    Connect {
        url: String,
        as_user: String,
        #[source]
        source: async_nats::ConnectError,
    },
}

/// The server refused this process something: the server's words, and who was refused.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the NATS server refused {who}: {reason}")]
pub struct Refused {
    pub who: String,
    pub reason: String,
}

/// What the server said to the connections made with one [`Signals`]: the first refusal,
/// and how many times they have connected. Each binary makes its own (the CLI one per
/// command, a service one for its life), so one client's refusal never fails another's work.
#[derive(Debug, Clone)]
pub struct Signals {
    refusal: watch::Sender<Option<Refused>>,
}

impl Default for Signals {
    fn default() -> Self {
        Self {
            refusal: watch::channel(None).0,
        }
    }
}

impl Signals {
    fn record_refusal(&self, who: &str, reason: String) {
        self.refusal.send_if_modified(|slot| {
            if slot.is_some() {
                return false;
            }
            *slot = Some(Refused {
                who: who.to_string(),
                reason,
            });
            true
        });
    }

    /// The first refusal reported, if any.
    pub fn refusal(&self) -> Option<Refused> {
        self.refusal.borrow().clone()
    }

    /// Runs `work`, unless the server refuses one of these connections something first (a
    /// permission violation, a rejected password on reconnect): then fails at once with
    /// what the server said, instead of letting the refused call time out.
    pub async fn unless_refused<T, E>(
        &self,
        work: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E>
    where
        E: From<Refused>,
    {
        let mut seen = self.refusal.subscribe();
        tokio::select! {
            result = work => result,
            refused = seen.wait_for(Option::is_some) => {
                // `self` holds the sender, so waiting ends only with a refusal.
                match refused.ok().and_then(|refusal| refusal.clone()) {
                    Some(refusal) => Err(refusal.into()),
                    None => std::future::pending().await,
                }
            }
        }
    }
}

/// Notices that a client connected again (after a server restart, say), so a reader can
/// re-create its consumer at once instead of waiting to miss heartbeats.
pub struct Reconnects {
    client: Client,
    seen: u64,
}

impl Reconnects {
    /// How often the client's connection count is looked at.
    const EVERY: Duration = Duration::from_millis(100);

    pub fn new(client: &Client) -> Self {
        Self {
            client: client.clone(),
            seen: Self::count(client),
        }
    }

    fn count(client: &Client) -> u64 {
        client
            .statistics()
            .connects
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Resolves once the client has connected again since the last call.
    pub async fn changed(&mut self) {
        loop {
            let now = Self::count(&self.client);
            if now != self.seen {
                self.seen = now;
                return;
            }
            tokio::time::sleep(Self::EVERY).await;
        }
    }
}

/// Connects with the given settings; `name` shows in the server's connection list.
pub async fn connect(
    args: &ConnectArgs,
    name: &str,
    startup: Startup,
) -> Result<Client, ConnectError> {
    connect_with(args, name, startup, &Signals::default()).await
}

/// Connects like [`connect`], reporting what the server refuses to `signals`.
pub async fn connect_with(
    args: &ConnectArgs,
    name: &str,
    startup: Startup,
    signals: &Signals,
) -> Result<Client, ConnectError> {
    let as_user = args
        .user
        .as_deref()
        .map(|u| format!(" as user {u}"))
        .unwrap_or_default();
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
    loop {
        let options = options(args, name, signals.clone()).await?;
        match options.connect(args.servers().as_slice()).await {
            Ok(client) => return Ok(client),
            Err(source) => {
                let error = ConnectError::Connect {
                    url: args.nats_url.clone(),
                    as_user: as_user.clone(),
                    source,
                };
                if startup == Startup::FailFast || !worth_retrying(&error) {
                    return Err(error);
                }
                let delay = backoff.next_delay();
                tracing::warn!(error = %error, retry_in = ?delay, "NATS is not reachable yet");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// The server is not there (yet); anything else is a refusal or a mistake in the settings.
fn worth_retrying(error: &ConnectError) -> bool {
    matches!(
        error,
        ConnectError::Connect { source, .. }
            if matches!(source.kind(), ConnectErrorKind::Io | ConnectErrorKind::TimedOut | ConnectErrorKind::Dns)
    )
}

async fn options(
    args: &ConnectArgs,
    name: &str,
    signals: Signals,
) -> Result<ConnectOptions, ConnectError> {
    let mut options = match (&args.creds, &args.user, &args.password) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => return Err(ConnectError::Conflicting),
        (Some(path), None, None) => {
            ConnectOptions::with_credentials_file(path)
                .await
                .map_err(|source| ConnectError::File {
                    flag: "--creds",
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
    if let Some(ca) = &args.tls_ca {
        readable("--tls-ca", ca)?;
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            readable("--tls-cert", cert)?;
            readable("--tls-key", key)?;
            options = options
                .add_client_certificate(cert.clone(), key.clone())
                .require_tls(true);
        }
        (None, None) => {}
        _ => return Err(ConnectError::TlsIncomplete),
    }
    if let Some(prefix) = args.inbox_prefix() {
        options = options.custom_inbox_prefix(prefix);
    }
    let who = match &args.user {
        Some(user) => format!("{name} (user {user})"),
        None => name.to_string(),
    };
    Ok(options
        .name(name)
        .request_timeout(Some(args.request_timeout()))
        .connection_timeout(Duration::from_secs(5))
        .event_callback(move |event| {
            let (who, signals) = (who.clone(), signals.clone());
            async move { on_event(&who, &signals, event) }
        }))
}

/// Logs what happens to the connection. Refusals are only recorded here: the binaries
/// report them as their error, through [`Signals::unless_refused`].
fn on_event(who: &str, signals: &Signals, event: Event) {
    match event {
        Event::ServerError(ServerError::AuthorizationViolation) => {
            tracing::debug!("NATS server: authorization violation");
            signals.record_refusal(who, "authorization violation".to_string());
        }
        Event::ServerError(ServerError::Other(message))
            if message.to_lowercase().contains("permissions violation") =>
        {
            if message.contains(subjects::CONSUMER_DELETE_API) {
                // async-nats deletes an ordered consumer when it re-creates it; a user
                // without that grant is refused, and the server removes the idle
                // consumer by itself. Nothing this process needs was refused.
                tracing::debug!(%message, "NATS server kept a consumer this client left");
                return;
            }
            tracing::debug!(%message, "NATS server refused");
            signals.record_refusal(who, message);
        }
        Event::ServerError(err) => tracing::error!(%err, "NATS server error"),
        Event::ClientError(err) => tracing::error!(%err, "NATS client error"),
        Event::Disconnected => tracing::warn!("disconnected from NATS"),
        Event::Connected => tracing::info!("connected to NATS"),
        Event::SlowConsumer(sid) => tracing::warn!(sid, "slow consumer"),
        other => tracing::debug!(event = %other, "NATS connection event"),
    }
}

/// A file flag names a file we can read: say so now, not as a TLS error later.
fn readable(flag: &'static str, path: &Path) -> Result<(), ConnectError> {
    std::fs::File::open(path)
        .map(drop)
        .map_err(|source| ConnectError::File {
            flag,
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn violation(subject: &str) -> Event {
        Event::ServerError(ServerError::Other(format!(
            "Permissions Violation for Publish to \"{subject}\""
        )))
    }

    #[test]
    fn a_url_list_names_every_node() {
        let args = ConnectArgs::for_url("nats://a:4222, nats://b:4223,,nats://c:4224");
        assert_eq!(
            args.servers(),
            ["nats://a:4222", "nats://b:4223", "nats://c:4224"]
        );
        assert_eq!(ConnectArgs::for_url("nats://a:1").servers(), ["nats://a:1"]);
    }

    #[test]
    fn a_refused_consumer_delete_is_harmless_and_other_refusals_are_kept() {
        let signals = Signals::default();
        on_event(
            "cli",
            &signals,
            violation("$JS.API.CONSUMER.DELETE.ALERTS.abc"),
        );
        assert!(signals.refusal().is_none());
        on_event("cli", &signals, violation("stockwire.rebuild.stock"));
        let refused = signals.refusal().expect("a refusal");
        assert!(
            refused.reason.contains("stockwire.rebuild.stock"),
            "{refused}"
        );
        // Each caller's signals are its own.
        assert!(Signals::default().refusal().is_none());
    }

    /// Every flag that reads a variable is handed on under that variable's name, so a
    /// flag added to `ConnectArgs` cannot be forgotten by the child processes.
    #[test]
    fn env_names_every_variable_the_flags_read() {
        let command = <ConnectArgs as clap::Args>::augment_args(clap::Command::new("test"));
        let mut read: Vec<String> = command
            .get_arguments()
            .filter_map(|arg| arg.get_env())
            .map(|name| name.to_string_lossy().into_owned())
            .collect();
        let all = ConnectArgs {
            user: Some("u".into()),
            password: Some("p".into()),
            creds: Some("c.creds".into()),
            tls_ca: Some("ca.pem".into()),
            tls_cert: Some("cert.pem".into()),
            tls_key: Some("key.pem".into()),
            ..ConnectArgs::for_url("nats://example:4222")
        };
        let mut given: Vec<String> = all.env().iter().map(|(k, _)| k.to_string()).collect();
        read.sort();
        given.sort();
        assert_eq!(given, read);
        assert!(all
            .env()
            .contains(&("NATS_URL", OsString::from("nats://example:4222"))));
    }

    #[test]
    fn env_leaves_out_what_is_not_set() {
        let names: Vec<&str> = ConnectArgs::for_url("nats://x:1")
            .env()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(names, ["NATS_URL", "STOCKWIRE_REQUEST_TIMEOUT_MS"]);
    }
}
