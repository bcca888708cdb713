//! A real 3-node nats-server cluster for tests: JetStream on every node, routes on
//! loopback, a store each in one temporary directory; nodes can be killed and restarted,
//! and a stream's leader asked to step down.
//!
//! Route ports must be known before the nodes start, so the ports are picked by binding
//! port 0 and letting go; a clash with another process in between is possible but rare.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{server_binary, ServerError};
use crate::connect::{connect, ConnectArgs, Startup};

/// One node of a [`NatsCluster`].
struct Node {
    name: String,
    client_port: u16,
    config: PathBuf,
    child: Option<Child>,
}

/// A running cluster owned by a test.
pub struct NatsCluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    nodes: Vec<Node>,
}

/// A free port on loopback below the kernel's range for outgoing connections: a port from
/// that range (what binding port 0 gives) may be taken by a client's connection while the
/// node listening on it is down, and the node could not start again on it.
fn free_port() -> Result<u16, ServerError> {
    static PICKED: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    if low > 10_100 {
        let mut picked = PICKED.lock().unwrap_or_else(|e| e.into_inner());
        for _ in 0..1_000 {
            let random = uuid::Uuid::new_v4().as_u128() as u16;
            let port = 10_000 + random % (low - 10_000);
            if !picked.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
                picked.insert(port);
                return Ok(port);
            }
        }
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl NatsCluster {
    /// Starts `size` nodes and waits until JetStream answers (a meta leader is elected).
    pub async fn start(size: usize) -> Result<Self, ServerError> {
        let bin = server_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("stockwire-cluster-")
            .tempdir()?;
        let ports: Vec<(u16, u16)> = (0..size)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<Result<_, ServerError>>()?;
        let mut nodes = Vec::with_capacity(size);
        for (i, (client, route)) in ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let routes: Vec<String> = ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, (_, r))| format!("\"nats-route://127.0.0.1:{r}\""))
                .collect();
            let text = format!(
                "server_name: {name}\nlisten: 127.0.0.1:{client}\n\
                 jetstream {{\n  store_dir: {store:?}\n}}\n\
                 cluster {{\n  name: stockwire-test\n  listen: 127.0.0.1:{route}\n  \
                 no_advertise: true\n  routes: [{routes}]\n}}\n",
                store = dir.path().join(&name).display().to_string(),
                routes = routes.join(", "),
            );
            let config = dir.path().join(format!("{name}.conf"));
            std::fs::write(&config, text)?;
            nodes.push(Node {
                name,
                client_port: *client,
                config,
                child: None,
            });
        }
        let mut cluster = Self { bin, dir, nodes };
        for i in 0..size {
            cluster.spawn(i)?;
        }
        cluster.wait_for_jetstream().await?;
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) -> Result<(), ServerError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{}.log", self.nodes[i].name)))?;
        let node = &mut self.nodes[i];
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&node.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        node.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", node.client_port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(ServerError::Timeout(self.log(i)))
    }

    /// Waits until JetStream answers an account request on every live node.
    async fn wait_for_jetstream(&self) -> Result<(), ServerError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = self.client().await;
        let js = async_nats::jetstream::new(client);
        while Instant::now() < deadline {
            if js.query_account().await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(ServerError::Timeout(
            (0..self.nodes.len()).map(|i| self.log(i)).collect(),
        ))
    }

    /// Every node's URL, comma-separated (what `NATS_URL` takes).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Connection settings naming every node, with a short request timeout.
    pub fn connect_args(&self) -> ConnectArgs {
        ConnectArgs {
            request_timeout_ms: 3000,
            ..ConnectArgs::for_url(&self.urls())
        }
    }

    /// A client connected to the cluster.
    pub async fn client(&self) -> async_nats::Client {
        match connect(&self.connect_args(), "stockwire-test", Startup::FailFast).await {
            Ok(client) => client,
            Err(e) => panic!("test client cannot connect to {}: {e}", self.urls()),
        }
    }

    /// The node named `name` (`n1`..), by index.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Kills node `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Puts node `i` in lame-duck mode (SIGUSR2: it stops taking clients, hands over its
    /// leaderships and exits) and waits until it has exited.
    pub fn lame_duck(&mut self, i: usize) -> Result<(), ServerError> {
        let Some(mut child) = self.nodes[i].child.take() else {
            return Ok(());
        };
        Command::new("kill")
            .args(["-USR2", &child.id().to_string()])
            .status()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        Err(ServerError::Unusable(format!(
            "node {} did not leave lame-duck mode within 60 s",
            self.nodes[i].name
        )))
    }

    /// Starts node `i` again with its store.
    pub fn restart(&mut self, i: usize) -> Result<(), ServerError> {
        self.kill(i);
        self.spawn(i)
    }

    /// Node `i`'s log so far.
    pub fn log(&self, i: usize) -> String {
        let path = self.dir.path().join(format!("{}.log", self.nodes[i].name));
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// The name of `stream`'s leader now, if it has one.
    pub async fn leader(js: &async_nats::jetstream::Context, stream: &str) -> Option<String> {
        let mut handle = js.get_stream(stream).await.ok()?;
        let info = handle.info().await.ok()?;
        info.cluster.as_ref()?.leader.clone()
    }

    /// Asks `stream`'s leader to step down, and waits until another node leads it.
    pub async fn step_down(js: &async_nats::jetstream::Context, stream: &str) {
        let before = Self::leader(js, stream).await;
        let answer: Result<serde_json::Value, _> = js
            .request(format!("STREAM.LEADER.STEPDOWN.{stream}"), &())
            .await;
        if let Err(e) = answer {
            panic!("asking {stream}'s leader to step down: {e}");
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let now = Self::leader(js, stream).await;
            if now.is_some() && now != before {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{stream} got no new leader within 20 s (it was {before:?})");
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}
