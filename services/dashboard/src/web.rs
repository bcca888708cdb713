//! The routes: the page and its files (embedded), the rows and alerts as JSON, a CSV of
//! the table, a product's story, and one event stream per page.
//!
//! A page's event stream starts with a `snapshot` (its first rows for its query, the
//! alerts of the day, the status), then sends an `update` whenever something it shows
//! changed: the new order of its rows and the rows that changed, new alerts, the status.
//! A page that falls behind the changes gets a fresh `snapshot`. Keep-alive comments
//! every 15 s keep an idle connection open through proxies.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query as QueryArgs, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::Stream;
use serde::Serialize;
use stockwire::domain::{evolve, Locations, Sku, VelocityView, WarehouseId};
use stockwire::read::Reader;
use stockwire::subjects;
use tokio::sync::broadcast::error::RecvError;

use crate::board::{AlertItem, Query, Row};
use crate::{Change, Shared, Status};

const INDEX: &str = include_str!("../assets/index.html");
const PRODUCT: &str = include_str!("../assets/product.html");
const APP_JS: &str = include_str!("../assets/app.js");
const PRODUCT_JS: &str = include_str!("../assets/product.js");
const STYLE: &str = include_str!("../assets/style.css");

/// Alerts a page gets in its snapshot.
const SNAPSHOT_ALERTS: usize = 200;

/// Points of a product's chart beyond which it is downsampled.
pub(crate) const MAX_POINTS: usize = 2_000;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(|| async { Html(INDEX) }))
        .route(
            "/product/{warehouse}/{sku}",
            get(|| async { Html(PRODUCT) }),
        )
        .route(
            "/app.js",
            get(|| async { asset(APP_JS, "text/javascript") }),
        )
        .route(
            "/product.js",
            get(|| async { asset(PRODUCT_JS, "text/javascript") }),
        )
        .route("/style.css", get(|| async { asset(STYLE, "text/css") }))
        .route("/api/rows", get(rows))
        .route("/api/alerts", get(alerts))
        .route("/api/status", get(status))
        .route("/api/product/{warehouse}/{sku}", get(product))
        .route("/rows.csv", get(csv))
        .route("/events", get(events))
        .layer(middleware::from_fn_with_state(shared.clone(), basic_auth))
        .with_state(shared)
}

fn asset(body: &'static str, kind: &'static str) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, kind)], body)
}

/// With a password set, every request must carry it (HTTP basic auth, any user name).
async fn basic_auth(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let Some(password) = shared.password.as_deref() else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| decode_base64(b.trim()))
        .and_then(|pair| pair.split_once(':').map(|(_, p)| p.to_string()));
    if given.as_deref() == Some(password) {
        return next.run(request).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Basic realm=\"stockwire\"")],
        "who is there? (the dashboard's password, any user name)\n",
    )
        .into_response()
}

/// Standard base64, as HTTP basic auth sends it.
fn decode_base64(text: &str) -> Option<String> {
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for c in text.bytes().filter(|c| *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(v);
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    String::from_utf8(out).ok()
}

async fn rows(
    State(shared): State<Arc<Shared>>,
    QueryArgs(query): QueryArgs<Query>,
) -> impl IntoResponse {
    Json(shared.board.read().await.page(&query))
}

async fn alerts(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    Json(shared.board.read().await.alerts(SNAPSHOT_ALERTS))
}

async fn status(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    Json(shared.status.read().await.clone())
}

/// Every row the table's query matches (not only its first rows), as CSV.
async fn csv(
    State(shared): State<Arc<Shared>>,
    QueryArgs(query): QueryArgs<Query>,
) -> impl IntoResponse {
    let rows = shared.board.read().await.all(&query);
    let mut text = String::from(
        "warehouse,sku,on_hand,threshold,days_of_cover,band,sold_last_day,last_event,low,stockout\n",
    );
    for r in rows {
        text.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{}\n",
            r.warehouse,
            r.sku,
            r.on_hand,
            r.threshold,
            r.days_of_cover.map(|c| c.to_string()).unwrap_or_default(),
            r.band.unwrap_or_default(),
            r.sold_last_day.map(|s| s.to_string()).unwrap_or_default(),
            stockwire::domain::format_ms(r.last_event_ms),
            r.low,
            r.stockout
        ));
    }
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"stock.csv\"",
            ),
        ],
        text,
    )
}

/// What a page's event stream sends.
#[derive(Serialize)]
struct Snapshot {
    rows: Vec<Row>,
    total: usize,
    /// Every warehouse, for the page's filter (its rows may show only a few).
    warehouses: Vec<String>,
    alerts: Vec<AlertItem>,
    status: Status,
}

#[derive(Serialize, Default)]
struct Update {
    /// The keys of the page's rows, in order, when that changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    order: Option<Vec<String>>,
    /// Rows that changed or came in.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    rows: Vec<Row>,
    #[serde(skip_serializing_if = "Option::is_none")]
    total: Option<usize>,
    /// New alerts, oldest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    alerts: Vec<AlertItem>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<Status>,
}

/// One page's stream: its query, and what it was last sent.
struct PageStream {
    shared: Arc<Shared>,
    query: Query,
    changes: tokio::sync::broadcast::Receiver<Change>,
    sent: Vec<Row>,
    total: usize,
    started: bool,
}

async fn events(
    State(shared): State<Arc<Shared>>,
    QueryArgs(query): QueryArgs<Query>,
) -> impl IntoResponse {
    let changes = shared.changes.subscribe();
    let page = PageStream {
        shared,
        query,
        changes,
        sent: Vec::new(),
        total: 0,
        started: false,
    };
    let mut headers = HeaderMap::new();
    headers.insert("X-Accel-Buffering", HeaderValue::from_static("no"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    let stream = Sse::new(page_events(page)).keep_alive(
        KeepAlive::new()
            .interval(Duration::from_secs(15))
            .text("keep-alive"),
    );
    (headers, stream)
}

fn page_events(page: PageStream) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    futures::stream::unfold(page, |mut page| async move {
        let shutdown = page.shared.shutdown.clone();
        let event = tokio::select! {
            _ = shutdown.cancelled() => return None,
            event = page.next_event() => event?,
        };
        Some((Ok(event), page))
    })
}

impl PageStream {
    async fn snapshot(&mut self) -> SseEvent {
        let board = self.shared.board.read().await;
        let page = board.page(&self.query);
        let warehouses = board.warehouses();
        let alerts = board
            .alerts(SNAPSHOT_ALERTS * 4)
            .into_iter()
            .filter(|a| self.shows_alert(a))
            .take(SNAPSHOT_ALERTS)
            .collect();
        drop(board);
        self.sent = page.rows.clone();
        self.total = page.total;
        self.started = true;
        let snapshot = Snapshot {
            rows: page.rows,
            total: page.total,
            warehouses,
            alerts,
            status: self.shared.status.read().await.clone(),
        };
        SseEvent::default()
            .event("snapshot")
            .data(serde_json::to_string(&snapshot).unwrap_or_default())
    }

    fn shows_alert(&self, alert: &AlertItem) -> bool {
        self.query
            .warehouse
            .as_deref()
            .filter(|w| !w.is_empty())
            .is_none_or(|w| alert.warehouse == w)
    }

    /// The next event for the page: a snapshot first (and after falling behind), then an
    /// update whenever something it shows changed; what has piled up meanwhile goes in one.
    /// `None` when the process is stopping: the page will reconnect.
    async fn next_event(&mut self) -> Option<SseEvent> {
        if !self.started {
            return Some(self.snapshot().await);
        }
        loop {
            let mut update = Update::default();
            let mut rows_changed = false;
            let mut first = Some(self.changes.recv().await);
            while let Some(change) = first.take().or_else(|| match self.changes.try_recv() {
                Ok(c) => Some(Ok(c)),
                Err(tokio::sync::broadcast::error::TryRecvError::Lagged(n)) => {
                    Some(Err(RecvError::Lagged(n)))
                }
                Err(_) => None,
            }) {
                match change {
                    Ok(Change::Rows) => rows_changed = true,
                    Ok(Change::Alert(alert)) => {
                        if self.shows_alert(&alert) {
                            update.alerts.push(AlertItem::clone(&alert));
                        }
                    }
                    Ok(Change::Status) => {
                        update.status = Some(self.shared.status.read().await.clone())
                    }
                    Err(RecvError::Lagged(_)) => return Some(self.snapshot().await),
                    Err(RecvError::Closed) => return None,
                }
            }
            if rows_changed {
                let page = self.shared.board.read().await.page(&self.query);
                let before: HashMap<&str, &Row> =
                    self.sent.iter().map(|r| (r.key.as_str(), r)).collect();
                update.rows = page
                    .rows
                    .iter()
                    .filter(|r| before.get(r.key.as_str()) != Some(r))
                    .cloned()
                    .collect();
                let order: Vec<&str> = page.rows.iter().map(|r| r.key.as_str()).collect();
                let was: Vec<&str> = self.sent.iter().map(|r| r.key.as_str()).collect();
                if order != was {
                    update.order = Some(order.iter().map(|k| k.to_string()).collect());
                }
                if page.total != self.total {
                    update.total = Some(page.total);
                }
                self.total = page.total;
                self.sent = page.rows;
            }
            let empty = update.order.is_none()
                && update.rows.is_empty()
                && update.total.is_none()
                && update.alerts.is_empty()
                && update.status.is_none();
            if !empty {
                return Some(
                    SseEvent::default()
                        .event("update")
                        .data(serde_json::to_string(&update).unwrap_or_default()),
                );
            }
        }
    }
}

/// A product's story: on hand after each of its events (downsampled beyond
/// [`MAX_POINTS`]), sales per hour over the last week, where it is, its last events.
#[derive(Serialize)]
struct ProductStory {
    warehouse: String,
    sku: String,
    row: Option<Row>,
    /// `[time ms, on hand]` after each event, in log order.
    points: Vec<(i64, i64)>,
    /// Events in all (points may be fewer).
    events: usize,
    /// `[hour start ms, units sold]` over the last week.
    sales_per_hour: Vec<(i64, u64)>,
    locations: Locations,
    recent: Vec<RecentEvent>,
}

#[derive(Serialize)]
struct RecentEvent {
    seq: u64,
    at_ms: i64,
    #[serde(rename = "type")]
    kind: String,
    payload: serde_json::Value,
    msg_id: String,
}

/// Recent events a product page lists.
const RECENT: usize = 25;

async fn product(
    State(shared): State<Arc<Shared>>,
    Path((warehouse, sku)): Path<(String, String)>,
) -> Response {
    let (Ok(w), Ok(s)) = (WarehouseId::parse(&warehouse), Sku::parse(&sku)) else {
        return (StatusCode::BAD_REQUEST, "not a warehouse and a SKU\n").into_response();
    };
    match story(&shared, &w, &s).await {
        Ok(story) => Json(story).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("reading the events of {w}/{s}: {e:#}\n"),
        )
            .into_response(),
    }
}

async fn story(shared: &Shared, w: &WarehouseId, s: &Sku) -> anyhow::Result<ProductStory> {
    let filter = subjects::aggregate(w, s);
    let mut reader = Reader::open(&shared.js, subjects::INVENTORY_STREAM, &filter, 1).await?;
    let mut locations = Locations::default();
    let mut points = Vec::new();
    let mut recent = std::collections::VecDeque::new();
    while let Some(stored) = reader.next().await {
        let stored = stored?;
        let Ok(rec) = shared.envelope.decode_stored(&stored) else {
            continue;
        };
        locations = evolve(locations, &rec.event);
        points.push((rec.meta.timestamp_ms, locations.on_hand()));
        recent.push_back(RecentEvent {
            seq: stored.sequence,
            at_ms: rec.meta.timestamp_ms,
            kind: rec.event.event_type().to_string(),
            payload: serde_json::from_slice(&stored.payload).unwrap_or_default(),
            msg_id: rec.meta.msg_id.clone(),
        });
        if recent.len() > RECENT {
            recent.pop_front();
        }
    }
    let events = points.len();
    let key = subjects::view_key(w, s);
    let sales_per_hour = match shared.js.get_key_value(subjects::VELOCITY_BUCKET).await {
        Ok(kv) => kv
            .get(&key)
            .await
            .ok()
            .flatten()
            .and_then(|v| serde_json::from_slice::<VelocityView>(&v).ok())
            .map(|v| v.hours.into_iter().collect())
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    Ok(ProductStory {
        warehouse: w.to_string(),
        sku: s.to_string(),
        row: shared.board.read().await.row(&key).cloned(),
        points: downsample(points, MAX_POINTS),
        events,
        sales_per_hour,
        locations,
        recent: recent.into_iter().rev().collect(),
    })
}

/// At most about `max` points of a series: it is cut into `max / 3` runs of equal length,
/// and each run keeps its lowest, its highest and its last point, in time order, so a
/// stock-out or a delivery stays visible however long the history.
pub(crate) fn downsample(points: Vec<(i64, i64)>, max: usize) -> Vec<(i64, i64)> {
    if points.len() <= max || max < 3 {
        return points;
    }
    let runs = max / 3;
    let size = points.len().div_ceil(runs);
    let mut out = Vec::with_capacity(max);
    for run in points.chunks(size) {
        let mut keep: Vec<usize> = Vec::with_capacity(3);
        let low = (0..run.len()).min_by_key(|&i| run[i].1).unwrap_or(0);
        let high = (0..run.len()).max_by_key(|&i| run[i].1).unwrap_or(0);
        keep.extend([low, high, run.len() - 1]);
        keep.sort_unstable();
        keep.dedup();
        out.extend(keep.into_iter().map(|i| run[i]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_decodes_as_browsers_encode() {
        assert_eq!(
            decode_base64("dXNlcjpzM2NyZXQ=").as_deref(),
            Some("user:s3cret")
        );
        assert_eq!(decode_base64("YTpi").as_deref(), Some("a:b"));
        assert_eq!(decode_base64("!!"), None);
    }

    #[test]
    fn a_long_history_keeps_its_lows_highs_and_end() {
        let points: Vec<(i64, i64)> = (0..10_000).map(|i| (i, 100 - (i % 97))).collect();
        let mut spiky = points.clone();
        spiky[5_000].1 = -40;
        let out = downsample(spiky, 300);
        assert!(out.len() <= 300, "{}", out.len());
        assert!(out.iter().any(|p| p.1 == -40), "the stock-out is kept");
        assert_eq!(out.last(), Some(&(9_999, 100 - (9_999 % 97))));
        assert!(out.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(downsample(points[..10].to_vec(), 300).len(), 10);
    }
}
