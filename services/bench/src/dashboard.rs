//! The dashboard's figure, with stock-projector and `stockwire-dashboard` as processes:
//! - **memory and first load** with a view of many products (100,000 by default): the
//!   dashboard's resident memory once it holds them all, and how long a page waits for its
//!   first snapshot (its first rows in order of urgency) from the moment it asks;
//! - **latency**: with 5 pages open (event streams read as a browser reads them), events at
//!   100 a second on 50 products those pages show: from each event's PubAck to the page
//!   receiving the changed row (matched by the row's `last_seq`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use stockwire::clock::{Clock as _, SystemClock};
use stockwire::domain::{Event, Location, Quantity, Sku, WarehouseId};
use stockwire::envelope::{EventMeta, Outbound};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::failure::Failure;
use crate::latency::quantile;
use crate::{send_batches, services, Ctx};

#[derive(Debug, Clone, Serialize)]
pub(crate) struct DashboardFigures {
    pub(crate) products: usize,
    /// Resident memory of the dashboard holding them (VmHWM), MiB.
    pub(crate) rss_mb: f64,
    /// From asking for a page's event stream to its first snapshot, received whole.
    pub(crate) first_snapshot_ms: f64,
    pub(crate) pages: usize,
    pub(crate) events_per_s: u64,
    pub(crate) samples: usize,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
}

/// Pages open during the latency figure.
const PAGES: usize = 5;
/// Products the latency events go to (all among a page's first rows).
const LIVE_PRODUCTS: usize = 50;
const RATE: u64 = 100;

pub(crate) async fn measure(
    ctx: &Ctx,
    client: &async_nats::Client,
    run_id: &str,
    products: usize,
    seconds: u64,
    timeout: Duration,
) -> Result<DashboardFigures, Failure> {
    let catalogue = format!("bdc{}", &run_id[..8]);
    let live = format!("bdl{}", &run_id[..8]);
    // One delivery per product of the catalogue, before anything runs.
    let events: Vec<Outbound> = (0..products)
        .filter_map(|i| received(&catalogue, i, 10))
        .enumerate()
        .map(|(i, e)| encode(ctx, &e, &format!("{catalogue}-{i}")))
        .collect();
    let batches: Vec<Vec<Outbound>> = events
        .chunks(stockwire::batch::MAX_BATCH)
        .map(<[Outbound]>::to_vec)
        .collect();
    send_batches(client, batches, timeout)
        .await
        .context("writing the catalogue")?;

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("a free port")?
        .port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut running = services::start(ctx, &["stock-projector"])?;
    let mut dashboard = ctx.command("stockwire-dashboard")?;
    services::quiet(&mut dashboard);
    let dashboard = dashboard
        .arg("--listen")
        .arg(addr.to_string())
        .spawn()
        .context("starting stockwire-dashboard")?;
    let pid = dashboard.id();
    let figures = async {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let status = get(addr, "/api/status").await.unwrap_or_default();
            let status: serde_json::Value = serde_json::from_str(&status).unwrap_or_default();
            if status["products"].as_u64().unwrap_or(0) >= products as u64
                && status["stock_lag"] == 0
            {
                break;
            }
            if Instant::now() > deadline {
                return Err(anyhow::anyhow!("the dashboard did not hold {products} products within 300 s: {status}").into());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let rss_mb = services::peak_rss_mb(pid);
        let asked = Instant::now();
        let mut first = Page::open(addr, "").await?;
        first.next().await?;
        let first_snapshot_ms = asked.elapsed().as_secs_f64() * 1000.0;
        drop(first);
        eprintln!("bench: dashboard: {products} products in {rss_mb} MiB; a page's first snapshot in {first_snapshot_ms:.0} ms");

        // The latency figure.
        let acked: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
        let samples: Arc<Mutex<Vec<f64>>> = Arc::default();
        let mut readers = Vec::new();
        for _ in 0..PAGES {
            let mut page = Page::open(addr, &format!("?warehouse={live}")).await?;
            page.next().await?;
            let (acked, samples) = (acked.clone(), samples.clone());
            readers.push(tokio::spawn(async move {
                while let Ok((_, data)) = page.next().await {
                    let now = Instant::now();
                    let rows = data["rows"].as_array().cloned().unwrap_or_default();
                    for row in rows {
                        let seq = row["last_seq"].as_u64().unwrap_or(0);
                        let at = acked.lock().ok().and_then(|a| a.get(&seq).copied());
                        if let (Some(at), Ok(mut s)) = (at, samples.lock()) {
                            s.push(now.saturating_duration_since(at).as_secs_f64() * 1000.0);
                        }
                    }
                }
            }));
        }
        let js = async_nats::jetstream::new(client.clone());
        let mut tick = tokio::time::interval(Duration::from_millis(1000 / RATE));
        let total = seconds * RATE;
        for i in 0..total as usize {
            tick.tick().await;
            let Some(event) = received(&live, i % LIVE_PRODUCTS, 1) else {
                continue;
            };
            let out = encode(ctx, &event, &format!("{live}-{i}"));
            let ack = js
                .publish_with_headers(out.subject, out.headers, out.payload)
                .await
                .context("publishing")?
                .await
                .context("its PubAck")?;
            if let Ok(mut a) = acked.lock() {
                a.insert(ack.sequence, Instant::now());
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        for reader in readers {
            reader.abort();
        }
        let mut all = samples.lock().map(|s| s.clone()).unwrap_or_default();
        all.sort_by(f64::total_cmp);
        let round = |x: f64| (x * 100.0).round() / 100.0;
        Ok::<_, Failure>(DashboardFigures {
            products,
            rss_mb,
            first_snapshot_ms: round(first_snapshot_ms),
            pages: PAGES,
            events_per_s: RATE,
            samples: all.len(),
            p50_ms: round(quantile(&all, 0.5)),
            p99_ms: round(quantile(&all, 0.99)),
            max_ms: round(all.last().copied().unwrap_or(0.0)),
        })
    }
    .await;
    let mut dashboard = dashboard;
    let _ = dashboard.kill().await;
    for service in running.drain(..) {
        let _ = service.stop().await;
    }
    figures
}

fn received(warehouse: &str, product: usize, units: u64) -> Option<Event> {
    Some(Event::Received {
        warehouse: WarehouseId::parse(warehouse).ok()?,
        sku: Sku::parse(&format!("p{product}")).ok()?,
        location: Location::parse("A1").ok()?,
        quantity: Quantity::new(units).ok()?,
    })
}

fn encode(ctx: &Ctx, event: &Event, msg_id: &str) -> Outbound {
    ctx.envelope.encode(
        event,
        &EventMeta {
            msg_id: msg_id.to_string(),
            timestamp_ms: SystemClock.now_ms(),
        },
    )
}

/// A plain HTTP/1.1 GET's body.
async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    let text = String::from_utf8_lossy(&answer).into_owned();
    Ok(text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default())
}

/// A page's event stream, read as a browser's EventSource reads it.
struct Page {
    lines: tokio::io::Lines<BufReader<TcpStream>>,
}

impl Page {
    async fn open(addr: SocketAddr, query: &str) -> anyhow::Result<Self> {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!(
            "GET /events{query} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut lines = BufReader::new(stream).lines();
        while let Some(line) = lines.next_line().await? {
            if line.is_empty() {
                break;
            }
        }
        Ok(Self { lines })
    }

    async fn next(&mut self) -> anyhow::Result<(String, serde_json::Value)> {
        let (mut name, mut data) = (String::new(), String::new());
        loop {
            let line = self
                .lines
                .next_line()
                .await?
                .ok_or_else(|| anyhow::anyhow!("the event stream ended"))?;
            if let Some(n) = line.strip_prefix("event: ") {
                name = n.to_string();
            } else if let Some(d) = line.strip_prefix("data: ") {
                data.push_str(d);
            } else if line.is_empty() && !data.is_empty() {
                return Ok((name, serde_json::from_str(&data)?));
            }
        }
    }
}
