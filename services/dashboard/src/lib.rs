//! # stockwire-dashboard
//!
//! A live web page of stock, alerts and sales. One process keeps one watch per bucket
//! (`stock`, `sales_velocity`, `thresholds`) and one follower of `ALERTS`, joins them in
//! memory ([`board::Board`]) and fans every change out to the open pages over
//! Server-Sent Events ([`web`]): not a watch per browser tab. It is read-only: it reads
//! streams and buckets and publishes nothing but what those reads need.
//!
//! - [`Config`], [`start`]: the settings, and the process (followers and web server).
//! - `board`: the joined state, its order of urgency, the alert feed.
//! - `web`: the routes, the event stream of a page, the product page's data, basic auth.
#![forbid(unsafe_code)]
#![deny(unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, kv};
use stockwire::connect::ConnectArgs;
use stockwire::domain::{BandLimits, StockView, Thresholds, VelocityView};
use stockwire::envelope::Envelope;
use stockwire::read::Follower;
use stockwire::subjects;
use stockwire::watch::{self, Followed};
use tokio::sync::{broadcast, mpsc, RwLock};
use tokio_util::sync::CancellationToken;

pub mod board;
mod web;

use board::{AlertItem, Board};

/// The service's settings.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "stockwire-dashboard",
    version,
    about = "A live web page of stock, alerts and sales"
)]
pub struct Config {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Prefix of the standard event headers.
    #[arg(long, env = "STOCKWIRE_HEADER_PREFIX", default_value = subjects::DEFAULT_HEADER_PREFIX)]
    pub header_prefix: String,
    /// Address to serve the page on (port 0: any free port). Anything but a loopback
    /// address needs STOCKWIRE_DASHBOARD_HTTP_PASSWORD.
    #[arg(
        long,
        env = "STOCKWIRE_DASHBOARD_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    pub listen: SocketAddr,
    /// The password of HTTP basic auth (any user name). Without it the page is open to
    /// whoever reaches the address, so only a loopback address is allowed.
    #[arg(
        long = "http-password",
        env = "STOCKWIRE_DASHBOARD_HTTP_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,
    /// Units sold a day from which a product is `normal` (as velocity-watcher).
    #[arg(long, env = "STOCKWIRE_BAND_NORMAL_FROM", default_value_t = BandLimits::default().normal_from)]
    pub band_normal_from: u64,
    /// Units sold a day from which a product is `fast` (as velocity-watcher).
    #[arg(long, env = "STOCKWIRE_BAND_FAST_FROM", default_value_t = BandLimits::default().fast_from)]
    pub band_fast_from: u64,
}

/// A change the pages hear about.
#[derive(Debug, Clone)]
pub(crate) enum Change {
    /// Rows changed.
    Rows,
    Alert(Arc<AlertItem>),
    Status,
}

/// How the system looks from here: the status bar.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct Status {
    /// Connected to NATS now.
    pub(crate) nats: bool,
    /// Every bucket has delivered its current values.
    pub(crate) caught_up: bool,
    /// Events in INVENTORY the stock view has not applied yet.
    pub(crate) stock_lag: Option<u64>,
    /// Sales the sales velocity view has not applied yet (its checkpoint against the log).
    pub(crate) velocity_lag: Option<u64>,
    pub(crate) dead_letters: Option<u64>,
    pub(crate) last_event_ms: i64,
    pub(crate) products: usize,
}

/// What the followers and the pages share.
pub(crate) struct Shared {
    pub(crate) board: RwLock<Board>,
    pub(crate) status: RwLock<Status>,
    pub(crate) changes: broadcast::Sender<Change>,
    pub(crate) js: jetstream::Context,
    pub(crate) envelope: Envelope,
    pub(crate) password: Option<String>,
    /// Ends the pages' event streams when the process stops (a server waits for its
    /// connections to end, and an event stream does not end by itself).
    pub(crate) shutdown: CancellationToken,
}

/// Changes a page may fall behind by before it gets a fresh snapshot instead.
const CHANGES: usize = 4096;

/// Starts the followers and the web server; returns the address it serves on. Everything
/// stops when `shutdown` is cancelled.
pub async fn start(
    client: async_nats::Client,
    config: &Config,
    shutdown: CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    if !config.listen.ip().is_loopback() && config.password.is_none() {
        anyhow::bail!(
            "--listen {} is reachable from other machines: set STOCKWIRE_DASHBOARD_HTTP_PASSWORD \
             (HTTP basic auth), or listen on 127.0.0.1 behind a reverse proxy that asks who is there",
            config.listen
        );
    }
    let envelope = Envelope::new(&config.header_prefix)?;
    let js = jetstream::new(client.clone());
    let (changes, _) = broadcast::channel(CHANGES);
    let limits = BandLimits {
        normal_from: config.band_normal_from,
        fast_from: config.band_fast_from,
    };
    let shared = Arc::new(Shared {
        board: RwLock::new(Board::new(limits)),
        status: RwLock::new(Status::default()),
        changes,
        js: js.clone(),
        envelope,
        password: config.password.clone(),
        shutdown: shutdown.clone(),
    });
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let addr = listener.local_addr().context("the address listened on")?;
    tokio::spawn(follow_buckets(shared.clone(), shutdown.clone()));
    tokio::spawn(follow_alerts(shared.clone(), shutdown.clone()));
    tokio::spawn(keep_status(shared.clone(), client, shutdown.clone()));
    let app = web::router(shared);
    let server = tokio::spawn(async move {
        let stopped = shutdown.clone();
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stopped.cancelled().await })
            .await
        {
            tracing::error!(error = %e, "the web server stopped");
        }
    });
    Ok((addr, server))
}

/// Runs until `shutdown` is cancelled.
pub async fn run(
    client: async_nats::Client,
    config: &Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (addr, server) = start(client, config, shutdown).await?;
    tracing::info!("dashboard on http://{addr}");
    server.await.context("the web server's task")?;
    Ok(())
}

/// Opens a bucket, waiting for it while it does not exist yet (setup not run).
async fn bucket(
    js: &jetstream::Context,
    name: &str,
    shutdown: &CancellationToken,
) -> Option<kv::Store> {
    loop {
        match js.get_key_value(name).await {
            Ok(kv) => return Some(kv),
            Err(e) => {
                tracing::warn!(bucket = name, error = %e, "cannot open the bucket yet (run `stockwire setup`?)");
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        }
    }
}

/// Follows the three buckets into the board, telling the pages what changed.
async fn follow_buckets(shared: Arc<Shared>, shutdown: CancellationToken) {
    let (tx, mut rx) = mpsc::channel(1024);
    let mut followers = Vec::new();
    for name in [
        subjects::THRESHOLDS_BUCKET,
        subjects::STOCK_BUCKET,
        subjects::VELOCITY_BUCKET,
    ] {
        let Some(kv) = bucket(&shared.js, name, &shutdown).await else {
            return;
        };
        followers.push(watch::follow(
            shared.js.clone(),
            kv,
            name,
            tx.clone(),
            shutdown.clone(),
        ));
    }
    drop(tx);
    let mut caught_up = 0;
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return,
            followed = rx.recv() => match followed {
                Some(f) => f,
                None => return,
            },
        };
        // Apply what has come meanwhile in one go, then tell the pages once.
        let mut changed = Vec::new();
        {
            let mut board = shared.board.write().await;
            let mut next = Some(first);
            while let Some(followed) = next {
                match followed {
                    Followed::CaughtUp { .. } => caught_up += 1,
                    Followed::Entry { bucket, entry } => {
                        if apply(&mut board, bucket, &entry) {
                            changed.push(entry.key.clone());
                        }
                    }
                }
                next = if changed.len() < 1024 {
                    rx.try_recv().ok()
                } else {
                    None
                };
            }
            let mut status = shared.status.write().await;
            status.caught_up = caught_up >= 3;
            status.last_event_ms = board.last_event_ms;
            status.products = board.products();
        }
        if !changed.is_empty() {
            let _ = shared.changes.send(Change::Rows);
        }
    }
}

/// Applies one bucket entry to the board; whether a row changed.
fn apply(board: &mut Board, bucket: &str, entry: &kv::Entry) -> bool {
    let key = entry.key.as_str();
    if key.starts_with('_') {
        return false;
    }
    let put = entry.operation == kv::Operation::Put;
    match bucket {
        subjects::STOCK_BUCKET => {
            let value = put.then(|| serde_json::from_slice::<StockView>(&entry.value).ok());
            board.set_stock(key, value.flatten())
        }
        subjects::VELOCITY_BUCKET => {
            let value = put.then(|| serde_json::from_slice::<VelocityView>(&entry.value).ok());
            board.set_velocity(key, value.flatten())
        }
        subjects::THRESHOLDS_BUCKET => {
            let value = put.then(|| serde_json::from_slice::<Thresholds>(&entry.value).ok());
            board.set_threshold(key, value.flatten())
        }
        _ => false,
    }
}

/// Follows `ALERTS` from 24 hours ago into the feed.
async fn follow_alerts(shared: Arc<Shared>, shutdown: CancellationToken) {
    let since = chrono::Utc::now() - chrono::Duration::milliseconds(board::ALERTS_FOR_MS);
    let from = loop {
        match first_since(&shared.js, subjects::ALERTS_STREAM, since).await {
            Ok(seq) => break seq,
            Err(e) => {
                tracing::warn!(error = %e, "cannot find the alerts of the last day yet");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        }
    };
    let type_header = shared.envelope.type_header().to_string();
    let mut alerts = Follower::new(
        &shared.js,
        subjects::ALERTS_STREAM,
        subjects::ALERTS_SUBJECTS,
        from,
    );
    loop {
        let stored = tokio::select! {
            _ = shutdown.cancelled() => return,
            stored = alerts.next() => stored,
        };
        let Some((_, warehouse, sku)) = subjects::split_alert(&stored.subject) else {
            continue;
        };
        let kind = stored
            .headers
            .as_ref()
            .and_then(|h| h.get(type_header.as_str()))
            .map(|t| t.as_str().to_string())
            .unwrap_or_default();
        let item = AlertItem {
            seq: stored.sequence,
            kind,
            key: format!("{warehouse}.{sku}"),
            warehouse: warehouse.to_string(),
            sku: sku.to_string(),
            at_ms: stored.stored_ms,
            payload: serde_json::from_slice(&stored.payload).unwrap_or_default(),
        };
        let item = Arc::new(item);
        shared.board.write().await.add_alert(
            AlertItem::clone(&item),
            chrono::Utc::now().timestamp_millis(),
        );
        let _ = shared.changes.send(Change::Alert(item));
    }
}

/// The sequence of the first message of `stream` stored at or after `since` (the next
/// one to come, when there is none).
async fn first_since(
    js: &jetstream::Context,
    stream: &str,
    since: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<u64> {
    let mut info = js.get_stream(stream).await.context("finding the stream")?;
    let state = info
        .info()
        .await
        .context("reading the stream")?
        .state
        .clone();
    if state.messages == 0 {
        return Ok(state.last_sequence + 1);
    }
    let request = serde_json::json!({ "start_time": since.to_rfc3339() });
    let answer = js
        .client()
        .request(
            format!("$JS.API.DIRECT.GET.{stream}"),
            serde_json::to_vec(&request)?.into(),
        )
        .await
        .context("asking for the first message of the day")?;
    match answer.headers.as_ref().and_then(|h| h.get("Nats-Sequence")) {
        Some(seq) => Ok(seq.as_str().parse().context("reading Nats-Sequence")?),
        // None since then.
        None => Ok(state.last_sequence + 1),
    }
}

/// Every two seconds: the views' lag, the dead letters, the connection.
async fn keep_status(shared: Arc<Shared>, client: async_nats::Client, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let nats = client.connection_state() == async_nats::connection::State::Connected;
        let end = last_sequence(&shared.js, subjects::INVENTORY_STREAM).await;
        let dead = messages(&shared.js, subjects::DEADLETTER_STREAM).await;
        let stock = stockwire::view::read_checkpoint(&client, subjects::STOCK_BUCKET)
            .await
            .ok();
        let velocity = stockwire::view::read_checkpoint(&client, subjects::VELOCITY_BUCKET)
            .await
            .ok();
        {
            let mut status = shared.status.write().await;
            status.nats = nats;
            status.stock_lag = end.zip(stock).map(|(e, c)| e.saturating_sub(c));
            status.velocity_lag = end.zip(velocity).map(|(e, c)| e.saturating_sub(c));
            status.dead_letters = dead;
        }
        let _ = shared.changes.send(Change::Status);
    }
}

async fn last_sequence(js: &jetstream::Context, stream: &str) -> Option<u64> {
    let mut s = js.get_stream(stream).await.ok()?;
    Some(s.info().await.ok()?.state.last_sequence)
}

async fn messages(js: &jetstream::Context, stream: &str) -> Option<u64> {
    let mut s = js.get_stream(stream).await.ok()?;
    Some(s.info().await.ok()?.state.messages)
}
