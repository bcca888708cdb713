//! A real nats-server for tests: JetStream on a port the server picks itself, a store in
//! a temporary directory, stopped and removed on drop.
//!
//! The binary comes from `NATS_SERVER_BIN`, else the repo's `.tools/bin/nats-server`
//! (installed by `scripts/setup`), else `PATH`; it must be 2.14 or later. The server is
//! started with `-p -1 --ports_file_dir <tmp>`, so it chooses a free port and writes it
//! down: tests run in parallel with no bind-then-release race, and never touch 4222.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::connect::{connect, ConnectArgs, Startup};

mod cluster;
mod relay;
pub use cluster::NatsCluster;
pub use relay::Relay;

const MIN_VERSION: (u32, u32) = (2, 14);

/// A running nats-server owned by a test.
pub struct NatsServer {
    bin: PathBuf,
    dir: tempfile::TempDir,
    child: Option<Child>,
    port: u16,
    /// The config file the server runs with, and the environment it reads, if any.
    config: Option<(PathBuf, Vec<(String, String)>)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(
        "no nats-server found: set NATS_SERVER_BIN, run scripts/setup (installs it into .tools/), \
         or put nats-server 2.14 or later on PATH"
    )]
    NotFound,
    #[error("{bin}: version {version} is too old; 2.14 or later is needed (run scripts/setup)")]
    TooOld { bin: String, version: String },
    #[error("{0}")]
    Unusable(String),
    #[error("starting nats-server: {0}")]
    Io(#[from] std::io::Error),
    #[error("nats-server did not come up within 10 s; its log:\n{0}")]
    Timeout(String),
}

/// The nats-server binary tests use, found once per process.
pub fn server_binary() -> Result<PathBuf, ServerError> {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    FOUND
        .get_or_init(|| find_binary().map_err(|e| e.to_string()))
        .clone()
        .map_err(ServerError::Unusable)
}

fn find_binary() -> Result<PathBuf, ServerError> {
    let repo_tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/bin/nats-server");
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("nats-server"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let candidates = std::env::var_os("NATS_SERVER_BIN")
        .map(PathBuf::from)
        .into_iter()
        .chain(std::iter::once(repo_tools))
        .chain(on_path);
    let bin = candidates
        .into_iter()
        .find(|b| b.is_file())
        .ok_or(ServerError::NotFound)?;
    let out = Command::new(&bin).arg("--version").output()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match parse_version(&text) {
        Some(v) if v >= MIN_VERSION => Ok(bin),
        _ => Err(ServerError::TooOld {
            bin: bin.display().to_string(),
            version: text,
        }),
    }
}

/// `nats-server: v2.15.1` -> (2, 15).
fn parse_version(text: &str) -> Option<(u32, u32)> {
    let v = text.rsplit('v').next()?;
    let mut parts = v.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

impl NatsServer {
    /// Starts a fresh JetStream server on a free port with an empty store.
    pub fn start() -> Result<Self, ServerError> {
        let bin = server_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("stockwire-nats-")
            .tempdir()?;
        let mut server = Self {
            bin,
            dir,
            child: None,
            port: 0,
            config: None,
        };
        server.spawn("-1")?;
        Ok(server)
    }

    /// Starts a server from config text (the repo's `nats.conf`, say) with `env` as the
    /// variables it refers to, on a free port with an empty store: the config's
    /// `store_dir` and ports are replaced by the test's own.
    pub fn with_config(text: &str, env: &[(&str, &str)]) -> Result<Self, ServerError> {
        let bin = server_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("stockwire-nats-")
            .tempdir()?;
        let store = dir.path().join("store");
        let text = prepared(text, &store)?;
        let path = dir.path().join("nats.conf");
        std::fs::write(&path, text)?;
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut server = Self {
            bin,
            dir,
            child: None,
            port: 0,
            config: Some((path, env)),
        };
        server.spawn("-1")?;
        Ok(server)
    }

    /// Replaces the server's config with `text` (prepared as [`NatsServer::with_config`]
    /// does) and has the running server reload it (SIGHUP), as an operator would.
    pub fn reload_config(&mut self, text: &str) -> Result<(), ServerError> {
        let Some((path, _)) = &self.config else {
            return Err(ServerError::Unusable(
                "only a server started from a config can reload one".into(),
            ));
        };
        let text = prepared(text, &self.dir.path().join("store"))?;
        std::fs::write(path, text)?;
        let pid = self
            .child
            .as_ref()
            .map(|c| c.id())
            .ok_or_else(|| ServerError::Unusable("the server is not running".into()))?;
        let status = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()?;
        if !status.success() {
            return Err(ServerError::Unusable(format!("kill -HUP {pid}: {status}")));
        }
        Ok(())
    }
}

/// Config text for a test's server: its `store_dir` in the test's directory, and any
/// listener inside a block on a free port.
fn prepared(text: &str, store: &Path) -> Result<String, ServerError> {
    let mut has_store = false;
    let text: Vec<String> = text
        .lines()
        .map(|line| {
            if line.trim_start().starts_with("store_dir") {
                has_store = true;
                format!("  store_dir: {:?}", store.display().to_string())
            } else if line.starts_with(char::is_whitespace)
                && line.trim_start().starts_with("listen:")
            {
                // A listener inside a block (leaf nodes): any free port, read from
                // the log by `leafnode_port`.
                "  listen: \"127.0.0.1:-1\"".to_string()
            } else {
                line.to_string()
            }
        })
        .collect();
    if !has_store {
        return Err(ServerError::Unusable(
            "the test config needs a jetstream block with a store_dir".into(),
        ));
    }
    Ok(text.join("\n"))
}

impl NatsServer {
    fn spawn(&mut self, port: &str) -> Result<(), ServerError> {
        let ports_dir = self.dir.path().join("ports");
        let _ = std::fs::remove_dir_all(&ports_dir);
        std::fs::create_dir_all(&ports_dir)?;
        let log_path = self.dir.path().join("server.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let mut command = Command::new(&self.bin);
        match &self.config {
            Some((path, env)) => {
                command.arg("-c").arg(path).args(["-m", "-1"]);
                command.envs(env.iter().map(|(k, v)| (k, v)));
            }
            None => {
                command
                    .args(["-js", "-a", "127.0.0.1", "-sd"])
                    .arg(self.dir.path().join("store"));
            }
        }
        let child = command
            .args(["-p", port, "--ports_file_dir"])
            .arg(&ports_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(port) = read_port(&ports_dir) {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    self.port = port;
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        self.kill();
        Err(ServerError::Timeout(log))
    }

    /// `nats://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port the server listens on for leaf nodes (its config has a `leafnodes`
    /// listener), as its log says.
    pub fn leafnode_port(&self) -> Option<u16> {
        let log = self.log();
        let line = log
            .lines()
            .rev()
            .find(|l| l.contains("Listening for leafnode connections on"))?;
        line.rsplit(':').next()?.trim().parse().ok()
    }

    /// Sends SIGKILL to the server, which stays down until [`NatsServer::restart`].
    pub fn kill_now(&mut self) {
        self.kill();
    }

    /// The server's log so far (for a test that checks what the server said).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Connection settings for this server, with a short request timeout so failures are quick.
    pub fn connect_args(&self) -> ConnectArgs {
        ConnectArgs {
            request_timeout_ms: 3000,
            ..ConnectArgs::for_url(&self.url())
        }
    }

    /// A client connected to this server.
    pub async fn client(&self) -> async_nats::Client {
        match connect(&self.connect_args(), "stockwire-test", Startup::FailFast).await {
            Ok(client) => client,
            Err(e) => panic!("test client cannot connect to {}: {e}", self.url()),
        }
    }

    /// Kills the server (SIGKILL) and starts it again on the same port with the same store.
    pub fn restart(&mut self) -> Result<(), ServerError> {
        self.kill();
        let port = self.port.to_string();
        self.spawn(&port)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The repo's `nats.conf`, as scripts/up runs it, with each `include` (the users in
/// `accounts.conf`) expanded in place: the text stands alone, so a copy of it in a
/// test's own directory finds everything it refers to.
pub fn repo_nats_conf() -> Result<String, ServerError> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../nats.conf");
    with_includes_expanded(&path)
}

/// The users of the repo's `accounts.conf`.
pub const REPO_USERS: [&str; 9] = [
    "admin",
    "cli",
    "stock-projector",
    "low-stock-watcher",
    "velocity-projector",
    "velocity-watcher",
    "dashboard",
    "site",
    "sys",
];

/// The variable `accounts.conf` reads `user`'s password from.
pub fn password_var(user: &str) -> String {
    format!(
        "STOCKWIRE_{}_PASSWORD",
        user.replace('-', "_").to_uppercase()
    )
}

/// The password each user has in tests.
pub fn test_password(user: &str) -> String {
    format!("test-{user}-secret")
}

/// Every user's password variable with its test password: the environment a server run
/// with the repo's configuration needs.
pub fn repo_passwords() -> Vec<(String, String)> {
    REPO_USERS
        .iter()
        .map(|user| (password_var(user), test_password(user)))
        .collect()
}

/// The repo's `site/site.conf` (an edge site's server), includes expanded.
pub fn repo_site_conf() -> Result<String, ServerError> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../site/site.conf");
    with_includes_expanded(&path)
}

/// The config file at `path` with its `include <file>` lines replaced by that file's text
/// (relative to the including file, as nats-server reads them), recursively.
fn with_includes_expanded(path: &Path) -> Result<String, ServerError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ServerError::Unusable(format!("reading {}: {e}", path.display())))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        match line.trim().strip_prefix("include ") {
            Some(included) => {
                let included = included
                    .trim()
                    .trim_end_matches(';')
                    .trim_matches(['"', '\'']);
                out.push_str(&with_includes_expanded(&dir.join(included))?);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    Ok(out)
}

/// A clock that only moves when the test moves it.
#[derive(Debug)]
pub struct ManualClock(std::sync::atomic::AtomicI64);

impl ManualClock {
    pub fn new(now_ms: i64) -> Self {
        Self(std::sync::atomic::AtomicI64::new(now_ms))
    }

    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, std::sync::atomic::Ordering::SeqCst);
    }
}

impl crate::clock::Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Polls `check` every 20 ms until it holds; panics after `timeout` saying what was awaited.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn read_port(dir: &Path) -> Option<u16> {
    let entry = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .find(|e| e.path().extension().is_some_and(|x| x == "ports"))?;
    let text = std::fs::read_to_string(entry.path()).ok()?;
    let ports: serde_json::Value = serde_json::from_str(&text).ok()?;
    let url = ports.get("nats")?.get(0)?.as_str()?;
    url.rsplit(':').next()?.parse().ok()
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn versions_parse() {
        assert_eq!(super::parse_version("nats-server: v2.15.1"), Some((2, 15)));
        assert_eq!(super::parse_version("garbage"), None);
    }

    #[test]
    fn the_repo_config_comes_with_its_users_in_place() {
        let conf = super::repo_nats_conf().expect("read nats.conf");
        assert!(!conf.lines().any(|l| l.trim().starts_with("include ")));
        assert!(conf.contains("accounts {"), "the users of accounts.conf");
        assert!(conf.contains("system_account: SYS"));
        assert!(
            conf.contains("sync_interval: always"),
            "nats.conf's own lines"
        );
    }
}
