//! The dashboard against a real nats-server, with stock-projector and low-stock-watcher in
//! this process, over HTTP as a browser would use it: the rows, a page's event stream, the
//! alert feed, a product's story, the CSV, and who may look.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use serde_json::Value;
use stockwire::domain::{Event, Location, Quantity, Sku, WarehouseId};
use stockwire::envelope::{Envelope, EventMeta};
use stockwire::testing::{wait_until, NatsServer};
use stockwire::{provision, subjects};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

#[path = "dashboard/browser.rs"]
mod browser;

struct Stack {
    server: NatsServer,
    client: async_nats::Client,
    js: jetstream::Context,
    stop: CancellationToken,
    addr: SocketAddr,
    /// The dashboard's own stop, and its web server's task.
    dashboard: (CancellationToken, tokio::task::JoinHandle<()>),
}

impl Stack {
    async fn start() -> Self {
        let server = NatsServer::start().expect("nats-server");
        let client = server.client().await;
        let js = jetstream::new(client.clone());
        provision::provision(&js, &provision::Options::default())
            .await
            .expect("provision");
        let stop = CancellationToken::new();
        let projector = stock_projector::Config {
            scale: Default::default(),
            connect: server.connect_args(),
            header_prefix: "myorg".into(),
            batch: 1000,
        };
        let (c, t) = (client.clone(), stop.clone());
        tokio::spawn(async move {
            if let Err(e) = stock_projector::run(c, &projector, t).await {
                panic!("stock-projector failed: {e:#}");
            }
        });
        let watcher = low_stock_watcher::Config {
            connect: server.connect_args(),
            header_prefix: "myorg".into(),
        };
        let (c, t) = (client.clone(), stop.clone());
        tokio::spawn(async move {
            if let Err(e) = low_stock_watcher::run(c, &watcher, t).await {
                panic!("low-stock-watcher failed: {e:#}");
            }
        });
        let config = dashboard_config(&server, "127.0.0.1:0", None);
        let dashboard_stop = stop.child_token();
        let (addr, task) = dashboard::start(client.clone(), &config, dashboard_stop.clone())
            .await
            .expect("the dashboard starts");
        Self {
            server,
            client,
            js,
            stop,
            addr,
            dashboard: (dashboard_stop, task),
        }
    }

    /// Stops the dashboard (its pages lose their stream), then starts it again on the
    /// same address after `meanwhile` has run.
    async fn restart_dashboard<T>(&mut self, meanwhile: impl std::future::Future<Output = T>) -> T {
        let (stop, task) = &mut self.dashboard;
        stop.cancel();
        tokio::time::timeout(WAIT, task)
            .await
            .expect("the dashboard stops in time")
            .expect("the dashboard's task");
        let said = meanwhile.await;
        let config = dashboard_config(&self.server, &self.addr.to_string(), None);
        let stop = self.stop.child_token();
        let (addr, task) = dashboard::start(self.client.clone(), &config, stop.clone())
            .await
            .expect("the dashboard starts again");
        assert_eq!(addr, self.addr);
        self.dashboard = (stop, task);
        said
    }

    async fn record(&self, event: Event) -> u64 {
        let out = Envelope::default().encode(
            &event,
            &EventMeta {
                msg_id: uuid::Uuid::new_v4().to_string(),
                timestamp_ms: chrono_now(),
            },
        );
        self.js
            .publish_with_headers(out.subject, out.headers, out.payload)
            .await
            .expect("publish")
            .await
            .expect("ack")
            .sequence
    }

    async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path, None).await
    }

    async fn json(&self, path: &str) -> Value {
        let (status, body) = self.get(path).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).expect("JSON")
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn dashboard_config(
    server: &NatsServer,
    listen: &str,
    password: Option<&str>,
) -> dashboard::Config {
    dashboard::Config {
        connect: server.connect_args(),
        header_prefix: "myorg".into(),
        listen: listen.parse().expect("an address"),
        password: password.map(str::to_string),
        band_normal_from: 10,
        band_fast_from: 50,
    }
}

fn event(kind: &str, w: &str, sku: &str, n: u64) -> Event {
    let (warehouse, sku, location, quantity) = (
        WarehouseId::parse(w).expect("warehouse"),
        Sku::parse(sku).expect("sku"),
        Location::parse("A1").expect("location"),
        Quantity::new(n).expect("quantity"),
    );
    match kind {
        "received" => Event::Received {
            warehouse,
            sku,
            location,
            quantity,
        },
        _ => Event::Sold {
            warehouse,
            sku,
            location,
            quantity,
        },
    }
}

/// A plain HTTP/1.1 GET: the status and the body.
async fn http_get(addr: SocketAddr, path: &str, auth: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let auth = auth
        .map(|a| format!("Authorization: Basic {a}\r\n"))
        .unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("read");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}

/// A page's event stream, read as a browser's EventSource reads it.
struct Events {
    lines: tokio::io::Lines<BufReader<TcpStream>>,
    head: String,
}

impl Events {
    async fn open(addr: SocketAddr, query: &str) -> Self {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let request = format!(
            "GET /events{query} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut lines = BufReader::new(stream).lines();
        let mut head = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            if line.is_empty() {
                break;
            }
            head.push_str(&line);
            head.push('\n');
        }
        Self { lines, head }
    }

    /// The next event: its name and data (chunk sizes and keep-alives skipped).
    async fn next(&mut self) -> (String, Value) {
        let (mut name, mut data) = (String::new(), String::new());
        loop {
            let line = self.lines.next_line().await.expect("read").expect("open");
            if let Some(n) = line.strip_prefix("event: ") {
                name = n.to_string();
            } else if let Some(d) = line.strip_prefix("data: ") {
                data.push_str(d);
            } else if line.is_empty() && !data.is_empty() {
                return (name, serde_json::from_str(&data).expect("event JSON"));
            }
        }
    }

    /// Events until `found` says yes, within [`WAIT`].
    async fn until(&mut self, what: &str, mut found: impl FnMut(&str, &Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (name, data) = tokio::time::timeout(left, self.next())
                .await
                .unwrap_or_else(|_| panic!("no event with {what} within {WAIT:?}"));
            if found(&name, &data) {
                return data;
            }
        }
    }
}

fn row<'a>(rows: &'a Value, key: &str) -> Option<&'a Value> {
    rows.as_array()?.iter().find(|r| r["key"] == key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_sees_stock_sales_thresholds_and_alerts_as_they_happen() {
    let stack = Stack::start().await;
    stack.record(event("received", "ams1", "apple", 30)).await;
    stack.record(event("received", "nyc1", "pear", 5)).await;
    wait_until("the dashboard shows the stock", WAIT, || async {
        let page = stack.json("/api/rows").await;
        row(&page["rows"], "ams1.apple").is_some_and(|r| r["on_hand"] == 30)
            && row(&page["rows"], "nyc1.pear").is_some()
    })
    .await;
    // Nothing sells yet: the low one first.
    let page = stack.json("/api/rows").await;
    assert_eq!(page["rows"][0]["key"], "nyc1.pear", "{page}");
    assert_eq!(page["rows"][0]["low"], true);
    assert_eq!(page["total"], 2);
    let ams = stack.json("/api/rows?warehouse=ams1").await;
    assert_eq!(ams["total"], 1, "{ams}");

    let mut page = Events::open(stack.addr, "?warehouse=ams1").await;
    assert!(page.head.contains("200 OK"), "{}", page.head);
    assert!(
        page.head
            .to_ascii_lowercase()
            .contains("x-accel-buffering: no"),
        "{}",
        page.head
    );
    let (name, snapshot) = page.next().await;
    assert_eq!(name, "snapshot");
    assert_eq!(
        row(&snapshot["rows"], "ams1.apple").map(|r| r["on_hand"].clone()),
        Some(30.into())
    );
    assert!(
        row(&snapshot["rows"], "nyc1.pear").is_none(),
        "filtered by warehouse"
    );
    assert_eq!(
        snapshot["warehouses"],
        serde_json::json!(["ams1", "nyc1"]),
        "every warehouse for the filter, shown or not"
    );

    // A sale reaches the open page without asking.
    stack.record(event("sold", "ams1", "apple", 4)).await;
    page.until("on hand 26", |name, data| {
        name == "update" && row(&data["rows"], "ams1.apple").is_some_and(|r| r["on_hand"] == 26)
    })
    .await;

    // A threshold above the stock: the row turns low, and the alert comes in the feed.
    let thresholds = stack
        .js
        .get_key_value(subjects::THRESHOLDS_BUCKET)
        .await
        .expect("thresholds");
    thresholds
        .put("ams1.apple", r#"{"low_stock_below":40}"#.into())
        .await
        .expect("set a threshold");
    // One update may carry both (what piles up goes in one).
    let (mut low, mut alerted) = (false, false);
    page.until("the row low and its stock.low alert", |_, data| {
        low |= row(&data["rows"], "ams1.apple")
            .is_some_and(|r| r["low"] == true && r["threshold"] == 40);
        alerted |= data["alerts"].as_array().is_some_and(|a| {
            a.iter()
                .any(|a| a["type"] == "stock.low" && a["key"] == "ams1.apple")
        });
        low && alerted
    })
    .await;
    let alerts = stack.json("/api/alerts").await;
    assert_eq!(alerts[0]["type"], "stock.low", "{alerts}");
    assert_eq!(alerts[0]["payload"]["on_hand"], 26);

    // A product's story: one point per event, folded as the domain folds.
    let story = stack.json("/api/product/ams1/apple").await;
    assert_eq!(story["events"], 2, "{story}");
    let points: Vec<i64> = story["points"]
        .as_array()
        .expect("points")
        .iter()
        .map(|p| p[1].as_i64().unwrap_or(-1))
        .collect();
    assert_eq!(points, [30, 26]);
    assert_eq!(story["recent"][0]["type"], "stock.sold");
    assert_eq!(story["locations"]["A1"], 26);
    let (status, _) = stack.get("/api/product/ams1/not%20a%20sku").await;
    assert_eq!(status, 400);

    // The CSV holds what the table shows (all of it, not only the first rows).
    let (status, csv) = stack.get("/rows.csv?warehouse=ams1").await;
    assert_eq!(status, 200);
    assert!(csv.starts_with("warehouse,sku,on_hand"), "{csv}");
    assert!(csv.contains("\nams1,apple,26,40,"), "{csv}");
    assert!(!csv.contains("nyc1"), "{csv}");

    // The page itself, its script and styles, with no credential in them.
    for path in [
        "/",
        "/app.js",
        "/style.css",
        "/product/ams1/apple",
        "/product.js",
    ] {
        let (status, body) = stack.get(path).await;
        assert_eq!(status, 200, "{path}");
        assert!(
            !body.contains("password") && !body.contains("nats://"),
            "{path}"
        );
    }
    let (_, index) = stack.get("/").await;
    assert!(index.contains("id=\"status\"") && index.contains("id=\"alerts\""));
}

#[tokio::test]
async fn beyond_loopback_it_asks_who_is_there() {
    let server = NatsServer::start().expect("nats-server");
    let client = server.client().await;
    let stop = CancellationToken::new();
    let open = dashboard_config(&server, "0.0.0.0:0", None);
    let refused = dashboard::start(client.clone(), &open, stop.clone()).await;
    let message = format!("{:#}", refused.expect_err("refused"));
    assert!(
        message.contains("STOCKWIRE_DASHBOARD_HTTP_PASSWORD"),
        "{message}"
    );

    let guarded = dashboard_config(&server, "127.0.0.1:0", Some("s3cret"));
    let (addr, _) = dashboard::start(client, &guarded, stop.clone())
        .await
        .expect("starts with a password");
    let (status, _) = http_get(addr, "/api/rows", None).await;
    assert_eq!(status, 401);
    // "anyone:wrong" and "anyone:s3cret" in base64.
    let (status, _) = http_get(addr, "/api/rows", Some("YW55b25lOndyb25n")).await;
    assert_eq!(status, 401);
    let (status, body) = http_get(addr, "/api/rows", Some("YW55b25lOnMzY3JldA==")).await;
    assert_eq!(status, 200, "{body}");
    stop.cancel();
}

use stockwire::testing::test_password as password;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_nats_conf_the_dashboard_user_reads_everything_it_shows() {
    let conf = stockwire::testing::repo_nats_conf().expect("nats.conf");
    let env = stockwire::testing::repo_passwords();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let server = NatsServer::with_config(&conf, &env).expect("nats-server with nats.conf");
    let as_user = |user: &str| server.connect_args().as_user(user, &password(user));
    let admin = stockwire::connect::connect(
        &as_user("admin"),
        "admin",
        stockwire::connect::Startup::FailFast,
    )
    .await
    .expect("admin");
    let js = jetstream::new(admin.clone());
    provision::provision(&js, &provision::Options::default())
        .await
        .expect("provision");
    let stop = CancellationToken::new();
    let projector = stock_projector::Config {
        scale: Default::default(),
        connect: as_user("stock-projector"),
        header_prefix: "myorg".into(),
        batch: 1000,
    };
    let (c, t) = (admin.clone(), stop.clone());
    tokio::spawn(async move {
        let _ = stock_projector::run(c, &projector, t).await;
    });
    let out = Envelope::default().encode(
        &event("received", "ams1", "apple", 7),
        &EventMeta {
            msg_id: uuid::Uuid::new_v4().to_string(),
            timestamp_ms: chrono_now(),
        },
    );
    js.publish_with_headers(out.subject, out.headers, out.payload)
        .await
        .expect("publish")
        .await
        .expect("ack");

    let signals = stockwire::connect::Signals::default();
    let client = stockwire::connect::connect_with(
        &as_user("dashboard"),
        "stockwire-dashboard",
        stockwire::connect::Startup::FailFast,
        &signals,
    )
    .await
    .expect("connect as dashboard");
    let mut config = dashboard_config(&server, "127.0.0.1:0", None);
    config.connect = as_user("dashboard");
    let (addr, _) = dashboard::start(client, &config, stop.clone())
        .await
        .expect("the dashboard starts");
    wait_until("the row and the view's lag", WAIT, || async {
        let (_, rows) = http_get(addr, "/api/rows", None).await;
        let (_, status) = http_get(addr, "/api/status", None).await;
        let status: Value = serde_json::from_str(&status).unwrap_or_default();
        rows.contains("\"on_hand\":7") && status["stock_lag"] == 0 && status["dead_letters"] == 0
    })
    .await;
    let (status, story) = http_get(addr, "/api/product/ams1/apple", None).await;
    assert_eq!(status, 200, "{story}");
    assert!(story.contains("\"events\":1"), "{story}");
    // Nothing it did was refused.
    let log = server.log();
    assert!(
        !log.contains("Permissions Violation"),
        "{}",
        log.lines()
            .filter(|l| l.contains("Permissions Violation"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    stop.cancel();
}
