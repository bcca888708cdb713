//! low-stock-watcher against a real nats-server, with stock-projector keeping the view:
//! one alert per crossing, across kills, a second watcher, a server restart, threshold
//! changes, a standby taking over, and a thousand products at once.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use serde_json::{json, Value};
use stockwire::domain::{Event, Location, Quantity, Sku, StockView, WarehouseId};
use stockwire::envelope::{Envelope, EventMeta, Outbound};
use stockwire::read::Reader;
use stockwire::testing::{wait_until, ManualClock, NatsServer};
use stockwire::{batch, provision, subjects};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

struct Stack {
    server: NatsServer,
    client: async_nats::Client,
    js: jetstream::Context,
    stock: kv::Store,
    stop: CancellationToken,
    sentinels: AtomicU32,
}

impl Stack {
    /// A server, Stockwire's streams, and stock-projector running in this process.
    async fn start() -> Self {
        let server = NatsServer::start().expect("nats-server");
        let client = server.client().await;
        let js = jetstream::new(client.clone());
        provision::provision(&js, &provision::Options::default())
            .await
            .expect("provision");
        let stock = js
            .get_key_value(subjects::STOCK_BUCKET)
            .await
            .expect("bucket");
        let stop = CancellationToken::new();
        let config = stock_projector::Config {
            scale: Default::default(),
            connect: server.connect_args(),
            header_prefix: "myorg".into(),
            batch: 1000,
        };
        let (c, t) = (client.clone(), stop.clone());
        tokio::spawn(async move {
            if let Err(e) = stock_projector::run(c, &config, t).await {
                panic!("stock-projector failed: {e:#}");
            }
        });
        Self {
            server,
            client,
            js,
            stock,
            stop,
            sentinels: AtomicU32::new(0),
        }
    }

    fn config(&self) -> low_stock_watcher::Config {
        low_stock_watcher::Config {
            connect: self.server.connect_args(),
            header_prefix: "myorg".into(),
        }
    }

    /// A watcher in this process, until the stack's token (or the returned one) is cancelled.
    fn spawn_watcher(&self) -> CancellationToken {
        let token = self.stop.child_token();
        let (client, config, t) = (self.client.clone(), self.config(), token.clone());
        tokio::spawn(async move {
            if let Err(e) = low_stock_watcher::run(client, &config, t).await {
                panic!("low-stock-watcher failed: {e:#}");
            }
        });
        token
    }

    fn watcher_process(&self) -> Child {
        Command::new(env!("CARGO_BIN_EXE_low-stock-watcher"))
            .env("NATS_URL", self.server.url())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start low-stock-watcher")
    }

    /// Publishes one event and waits until the stock view shows it.
    async fn record(&self, event: Event) {
        let key = subjects::view_key(event.warehouse(), event.sku());
        let out = encode(&event);
        let seq = self
            .js
            .publish_with_headers(out.subject, out.headers, out.payload)
            .await
            .expect("publish")
            .await
            .expect("ack")
            .sequence;
        wait_until(&format!("the view to apply #{seq}"), WAIT, || async {
            self.view(&key).await.is_some_and(|v| v.last_seq >= seq)
        })
        .await;
    }

    async fn view(&self, key: &str) -> Option<StockView> {
        self.stock
            .get(key)
            .await
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice(&b).ok())
    }

    async fn set_threshold(&self, key: &str, below: i64) {
        let kv = self
            .js
            .get_key_value(subjects::THRESHOLDS_BUCKET)
            .await
            .expect("thresholds");
        kv.put(key, json!({"low_stock_below": below}).to_string().into())
            .await
            .expect("set threshold");
    }

    /// Every low-stock alert stored: (subject, type, payload).
    async fn alerts(&self) -> Vec<(String, String, Value)> {
        let mut reader = Reader::open(
            &self.js,
            subjects::ALERTS_STREAM,
            subjects::LOW_STOCK_ALERTS,
            1,
        )
        .await
        .expect("read ALERTS");
        let mut all = Vec::new();
        while let Some(msg) = reader.next().await {
            let msg = msg.expect("alert");
            let kind = msg
                .headers
                .as_ref()
                .and_then(|h| h.get("myorg_type"))
                .map(|v| v.to_string())
                .unwrap_or_default();
            all.push((
                msg.subject.clone(),
                kind,
                serde_json::from_slice(&msg.payload).expect("JSON"),
            ));
        }
        all
    }

    async fn alerts_for(&self, subject: &str) -> Vec<(String, Value)> {
        self.alerts()
            .await
            .into_iter()
            .filter(|(s, _, _)| s == subject)
            .map(|(_, k, p)| (k, p))
            .collect()
    }

    /// Waits until a fresh product's crossing is announced: the watchers handle the stock
    /// view in order, so everything before it has been decided too.
    async fn settle(&self) {
        let n = self.sentinels.fetch_add(1, Ordering::SeqCst);
        let sku = format!("sentinel{n}");
        self.record(received("zz", &sku, 1)).await;
        let subject = format!("alerts.low_stock.zz.{sku}");
        wait_until("the sentinel's alert", WAIT, || async {
            !self.alerts_for(&subject).await.is_empty()
        })
        .await;
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn encode(event: &Event) -> Outbound {
    Envelope::default().encode(
        event,
        &EventMeta {
            msg_id: uuid::Uuid::new_v4().to_string(),
            timestamp_ms: chrono::Utc::now().timestamp_millis(),
        },
    )
}

fn received(w: &str, sku: &str, n: u64) -> Event {
    Event::Received {
        warehouse: WarehouseId::parse(w).unwrap(),
        sku: Sku::parse(sku).unwrap(),
        location: Location::parse("A1").unwrap(),
        quantity: Quantity::new(n).unwrap(),
    }
}

fn sold(w: &str, sku: &str, n: u64) -> Event {
    Event::Sold {
        warehouse: WarehouseId::parse(w).unwrap(),
        sku: Sku::parse(sku).unwrap(),
        location: Location::parse("A1").unwrap(),
        quantity: Quantity::new(n).unwrap(),
    }
}

const APPLE: &str = "alerts.low_stock.ams1.apple";

fn expected_two() -> Vec<(String, Value)> {
    vec![
        (
            "stock.low".into(),
            json!({"warehouse":"ams1","sku":"apple","on_hand":9,"threshold":10}),
        ),
        (
            "stock.recovered".into(),
            json!({"warehouse":"ams1","sku":"apple","on_hand":17,"threshold":10}),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_alert_when_low_and_one_when_recovered() {
    let stack = Stack::start().await;
    stack.spawn_watcher();
    for event in [
        received("ams1", "apple", 12),
        sold("ams1", "apple", 1),
        sold("ams1", "apple", 2),
        sold("ams1", "apple", 1),
        sold("ams1", "apple", 1),
        received("ams1", "apple", 10),
    ] {
        stack.record(event).await;
    }
    stack.settle().await;
    assert_eq!(stack.alerts_for(APPLE).await, expected_two());
    let headers_ok = {
        let stream = stack.js.get_stream(subjects::ALERTS_STREAM).await.unwrap();
        let msg = stream.get_last_raw_message_by_subject(APPLE).await.unwrap();
        [
            "myorg_format",
            "myorg_type",
            "myorg_msg_id",
            "myorg_timestamp_ms",
            "myorg_version",
            "Nats-Msg-Id",
        ]
        .iter()
        .all(|h| msg.headers.get(*h).is_some())
    };
    assert!(headers_ok, "alerts carry the standard headers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_watcher_says_nothing_twice_and_misses_nothing() {
    let stack = Stack::start().await;
    let mut watcher = stack.watcher_process();
    stack.record(received("ams1", "apple", 12)).await;
    stack.record(sold("ams1", "apple", 1)).await;
    stack.record(sold("ams1", "apple", 2)).await;
    wait_until("the low-stock alert", WAIT, || async {
        stack.alerts_for(APPLE).await.len() == 1
    })
    .await;
    watcher.kill().expect("kill -9");
    watcher.wait().expect("reap");
    stack.record(sold("ams1", "apple", 1)).await;
    stack.record(sold("ams1", "apple", 1)).await;
    stack.record(received("ams1", "apple", 10)).await;
    // Recovered while no watcher ran: the restarted one compares and announces it once.
    let mut watcher = stack.watcher_process();
    stack.settle().await;
    watcher.kill().expect("stop");
    watcher.wait().expect("reap");
    assert_eq!(stack.alerts_for(APPLE).await, expected_two());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_watchers_at_once_still_say_it_once() {
    let stack = Stack::start().await;
    stack.spawn_watcher();
    stack.spawn_watcher();
    for event in [
        received("ams1", "apple", 12),
        sold("ams1", "apple", 1),
        sold("ams1", "apple", 2),
        sold("ams1", "apple", 1),
        sold("ams1", "apple", 1),
        received("ams1", "apple", 10),
    ] {
        stack.record(event).await;
    }
    stack.settle().await;
    stack.settle().await;
    assert_eq!(stack.alerts_for(APPLE).await, expected_two());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_watcher_takes_over_when_the_active_one_stops() {
    let stack = Stack::start().await;
    let leases = stack
        .js
        .get_key_value(subjects::LEASES_BUCKET)
        .await
        .expect("leases");
    let first = stack.spawn_watcher();
    wait_until("a watcher to hold the lease", WAIT, || async {
        leases
            .get("low-stock-watcher")
            .await
            .ok()
            .flatten()
            .is_some()
    })
    .await;
    let active = leases.get("low-stock-watcher").await.unwrap();
    stack.spawn_watcher();
    for event in [
        received("ams1", "apple", 12),
        sold("ams1", "apple", 1),
        sold("ams1", "apple", 2),
        sold("ams1", "apple", 1),
        sold("ams1", "apple", 1),
    ] {
        stack.record(event).await;
    }
    stack.settle().await;
    assert_eq!(leases.get("low-stock-watcher").await.unwrap(), active);

    // The active one stops cleanly: the standby takes over and says what comes next.
    first.cancel();
    stack.record(received("ams1", "apple", 10)).await;
    stack.settle().await;
    assert_ne!(leases.get("low-stock-watcher").await.unwrap(), active);
    assert_eq!(stack.alerts_for(APPLE).await, expected_two());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_does_not_leave_the_watcher_dead() {
    let mut stack = Stack::start().await;
    stack.spawn_watcher();
    stack.record(received("ams1", "apple", 12)).await;
    stack.settle().await;
    stack.server.restart().expect("restart nats-server");
    stack.record(sold("ams1", "apple", 5)).await;
    wait_until("the alert after the restart", WAIT, || async {
        stack.alerts_for(APPLE).await.len() == 1
    })
    .await;
    assert_eq!(stack.alerts_for(APPLE).await[0].0, "stock.low");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raising_a_threshold_announces_the_new_crossing_once() {
    let stack = Stack::start().await;
    stack.set_threshold("ams1.apple", 5).await;
    stack.spawn_watcher();
    stack.record(received("ams1", "apple", 12)).await;
    stack.settle().await;
    assert!(stack.alerts_for(APPLE).await.is_empty());
    stack.set_threshold("ams1.apple", 20).await;
    wait_until("the alert for the new threshold", WAIT, || async {
        !stack.alerts_for(APPLE).await.is_empty()
    })
    .await;
    stack.set_threshold("ams1.apple", 21).await;
    stack.settle().await;
    assert_eq!(
        stack.alerts_for(APPLE).await,
        vec![(
            "stock.low".to_string(),
            json!({"warehouse":"ams1","sku":"apple","on_hand":12,"threshold":20})
        )]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_products_crossing_at_once() {
    let stack = Stack::start().await;
    stack.spawn_watcher();
    let products: Vec<String> = (0..1000).map(|i| format!("p{i}")).collect();
    let deliveries: Vec<Outbound> = products
        .iter()
        .map(|p| encode(&received("ams1", p, 20)))
        .collect();
    let sales: Vec<Outbound> = products
        .iter()
        .map(|p| encode(&sold("ams1", p, 15)))
        .collect();
    for messages in [deliveries, sales] {
        batch::publish_atomic(&stack.client, messages, Duration::from_secs(10))
            .await
            .expect("publish");
    }
    wait_until("1,000 alerts", WAIT, || async {
        stack.alerts().await.len() >= 1000
    })
    .await;
    stack.settle().await;
    let alerts = stack.alerts().await;
    let ours: Vec<_> = alerts
        .iter()
        .filter(|(s, _, _)| s.starts_with("alerts.low_stock.ams1."))
        .collect();
    assert_eq!(ours.len(), 1000);
    let distinct: std::collections::BTreeSet<_> = ours.iter().map(|(s, _, _)| s.clone()).collect();
    assert_eq!(distinct.len(), 1000, "no product announced twice");
    assert!(ours
        .iter()
        .all(|(_, kind, p)| kind == "stock.low" && p["on_hand"] == 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_or_purged_stock_key_raises_nothing() {
    let stack = Stack::start().await;
    stack.spawn_watcher();
    stack.record(received("ams1", "apple", 3)).await;
    stack.record(received("ams1", "pear", 30)).await;
    stack.settle().await;
    assert_eq!(
        stack.alerts_for(APPLE).await.len(),
        1,
        "first seen below: one stock.low"
    );
    stack.stock.delete("ams1.apple").await.expect("delete");
    stack.stock.purge("ams1.pear").await.expect("purge");
    // Still alive, and nothing said about the deleted products.
    stack.settle().await;
    assert_eq!(stack.alerts_for(APPLE).await.len(), 1);
    assert!(stack
        .alerts_for("alerts.low_stock.ams1.pear")
        .await
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_are_stamped_by_the_watchers_clock() {
    const AT: i64 = 1_795_176_000_000; // 2026-11-20T12:00:00Z
    let stack = Stack::start().await;
    let (client, config) = (stack.client.clone(), stack.config());
    let (clock, token) = (Arc::new(ManualClock::new(AT)), stack.stop.child_token());
    tokio::spawn(async move {
        if let Err(e) = low_stock_watcher::run_with_clock(client, &config, clock, token).await {
            panic!("low-stock-watcher failed: {e:#}");
        }
    });
    stack.record(received("ams1", "apple", 3)).await;
    wait_until("the low-stock alert", WAIT, || async {
        !stack.alerts_for(APPLE).await.is_empty()
    })
    .await;
    let stream = stack.js.get_stream(subjects::ALERTS_STREAM).await.unwrap();
    let msg = stream.get_last_raw_message_by_subject(APPLE).await.unwrap();
    let stamp = msg.headers.get("myorg_timestamp_ms").map(|v| v.to_string());
    assert_eq!(stamp, Some(AT.to_string()));
}
