//! velocity-watcher against a real nats-server, with stock-projector and
//! velocity-projector keeping the views: stockout forecasts and band changes, once each,
//! and nothing said about a product whose stock is not known.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use serde_json::{json, Value};
use stockwire::clock::SystemClock;
use stockwire::domain::{Event, Location, Quantity, Sku, WarehouseId, DAY_MS, HOUR_MS};
use stockwire::envelope::{Envelope, EventMeta};
use stockwire::read::Reader;
use stockwire::testing::{wait_until, NatsServer};
use stockwire::{provision, subjects};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

struct Stack {
    server: NatsServer,
    client: async_nats::Client,
    js: jetstream::Context,
    stop: CancellationToken,
    /// Stops stock-projector alone (a view that falls behind).
    stock_projector: CancellationToken,
}

impl Stack {
    /// A server, Stockwire's streams, and both projectors running in this process.
    async fn start() -> Self {
        let server = NatsServer::start().expect("nats-server");
        let client = server.client().await;
        let js = jetstream::new(client.clone());
        provision::provision(&js, &provision::Options::default())
            .await
            .expect("provision");
        let stop = CancellationToken::new();
        let velocity = velocity_projector::Config {
            scale: Default::default(),
            connect: server.connect_args(),
            header_prefix: "myorg".into(),
            batch: 5000,
            tick_s: 0.2,
            linger_ms: 100,
        };
        let (c, t) = (client.clone(), stop.clone());
        tokio::spawn(async move {
            if let Err(e) = velocity_projector::run(c, &velocity, Arc::new(SystemClock), t).await {
                panic!("velocity-projector failed: {e:#}");
            }
        });
        let stock_projector = stop.child_token();
        let stack = Self {
            server,
            client,
            js,
            stop,
            stock_projector,
        };
        stack.spawn_stock_projector(stack.stock_projector.clone());
        stack
    }

    fn spawn_stock_projector(&self, token: CancellationToken) {
        let config = stock_projector::Config {
            scale: Default::default(),
            connect: self.server.connect_args(),
            header_prefix: "myorg".into(),
            batch: 5000,
        };
        let client = self.client.clone();
        tokio::spawn(async move {
            if let Err(e) = stock_projector::run(client, &config, token).await {
                panic!("stock-projector failed: {e:#}");
            }
        });
    }

    fn spawn_watcher(&self) -> CancellationToken {
        let token = self.stop.child_token();
        let config = velocity_watcher::Config {
            connect: self.server.connect_args(),
            header_prefix: "myorg".into(),
            normal_from: 10,
            fast_from: 50,
        };
        let (client, t) = (self.client.clone(), token.clone());
        tokio::spawn(async move {
            if let Err(e) = velocity_watcher::run(client, &config, t).await {
                panic!("velocity-watcher failed: {e:#}");
            }
        });
        token
    }

    async fn publish(&self, event: Event, at_ms: i64) {
        self.publish_all(vec![(event, at_ms)]).await;
    }

    /// Publishes the events as one atomic batch: the projectors see them together.
    async fn publish_all(&self, events: Vec<(Event, i64)>) {
        let messages: Vec<_> = events
            .iter()
            .map(|(event, at_ms)| {
                Envelope::default().encode(
                    event,
                    &EventMeta {
                        msg_id: uuid::Uuid::new_v4().to_string(),
                        timestamp_ms: *at_ms,
                    },
                )
            })
            .collect();
        stockwire::batch::publish_atomic(&self.client, messages, Duration::from_secs(10))
            .await
            .expect("publish");
    }

    /// Every alert on `subject`: (type, payload).
    async fn alerts(&self, subject: &str) -> Vec<(String, Value)> {
        let mut reader = Reader::open(&self.js, subjects::ALERTS_STREAM, subject, 1)
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
            all.push((kind, serde_json::from_slice(&msg.payload).expect("JSON")));
        }
        all
    }

    /// A product's value in a view (`Null` when it has none).
    async fn view(&self, bucket: &str, sku: &str) -> Value {
        let Ok(kv) = self.js.get_key_value(bucket).await else {
            return Value::Null;
        };
        kv.get(format!("ams1.{sku}"))
            .await
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .unwrap_or(Value::Null)
    }

    /// Waits until the views show `sku` with `on_hand` and `units_per_day`.
    async fn wait_for_views(&self, sku: &str, on_hand: i64, per_day: f64) {
        wait_until(&format!("the views of {sku}"), WAIT, || async {
            self.view(subjects::STOCK_BUCKET, sku).await["on_hand"] == on_hand
                && self.view(subjects::VELOCITY_BUCKET, sku).await["units_per_day"] == per_day
        })
        .await;
    }

    async fn wait_for(&self, subject: &str, count: usize) {
        wait_until(&format!("{count} alerts on {subject}"), WAIT, || async {
            self.alerts(subject).await.len() >= count
        })
        .await;
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn event(kind: &str, n: u64) -> Event {
    event_of("apple", kind, n)
}

fn event_of(sku: &str, kind: &str, n: u64) -> Event {
    let (warehouse, sku, location, quantity) = (
        WarehouseId::parse("ams1").unwrap(),
        Sku::parse(sku).unwrap(),
        Location::parse("A1").unwrap(),
        Quantity::new(n).unwrap(),
    );
    match kind {
        "sold" => Event::Sold {
            warehouse,
            sku,
            location,
            quantity,
        },
        _ => Event::Received {
            warehouse,
            sku,
            location,
            quantity,
        },
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

const STOCKOUT: &str = "alerts.stockout.ams1.apple";
const VELOCITY: &str = "alerts.velocity.ams1.apple";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stockout_is_forecast_once_and_cleared_once() {
    let stack = Stack::start().await;
    let t = now();
    // 20 sold on each of the last 7 days: 20 a day, 30 left, 1.5 days of cover < 3.
    stack.publish_all(a_week_of_sales("apple", 170, t)).await;
    stack.wait_for_views("apple", 30, 20.0).await;
    stack.spawn_watcher();
    stack.wait_for(STOCKOUT, 1).await;
    stack.publish(event("received", 100), now()).await;
    stack.wait_for(STOCKOUT, 2).await;
    stack.publish(event("received", 5), now()).await;
    stack.wait_for(VELOCITY, 1).await;
    let alerts = stack.alerts(STOCKOUT).await;
    assert_eq!(alerts.len(), 2, "{alerts:?}");
    assert_eq!(alerts[0].0, "stock.stockout_forecast");
    assert_eq!(
        alerts[0].1,
        json!({"warehouse":"ams1","sku":"apple","on_hand":30,"units_per_day":20.0,"days_of_cover":1.5})
    );
    assert_eq!(alerts[1].0, "stock.stockout_cleared");
    assert_eq!(alerts[1].1["on_hand"], 130);
    assert_eq!(alerts[1].1["days_of_cover"], 6.5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_band_change_is_announced_once_and_a_restart_adds_nothing() {
    let stack = Stack::start().await;
    let watcher = stack.spawn_watcher();
    let t = now();
    stack.publish(event("received", 1000), t - DAY_MS).await;
    stack.publish(event("sold", 20), t - HOUR_MS).await;
    stack.wait_for(VELOCITY, 1).await;
    stack.publish(event("sold", 40), t).await;
    stack.wait_for(VELOCITY, 2).await;
    watcher.cancel();
    stack.spawn_watcher();
    // The restarted watcher has read everything once it announces a new product's band.
    let pear = Event::Sold {
        warehouse: WarehouseId::parse("ams1").unwrap(),
        sku: Sku::parse("pear").unwrap(),
        location: Location::parse("A1").unwrap(),
        quantity: Quantity::new(1).unwrap(),
    };
    stack.publish(pear, now()).await;
    stack.wait_for("alerts.velocity.ams1.pear", 1).await;
    let alerts = stack.alerts(VELOCITY).await;
    let bands: Vec<(Value, Value)> = alerts
        .iter()
        .map(|(_, p)| (p["previous_band"].clone(), p["band"].clone()))
        .collect();
    assert_eq!(
        bands,
        vec![
            (json!(null), json!("normal")),
            (json!("normal"), json!("fast"))
        ]
    );
    assert!(alerts.iter().all(|(kind, _)| kind == "sales.velocity"));
    assert_eq!(alerts[1].1["sold_last_day"], 60);
}

/// 20 sold on each of the last 7 days (20 a day), after `received` units 8 days ago.
fn a_week_of_sales(sku: &str, received: u64, t: i64) -> Vec<(Event, i64)> {
    let mut events = Vec::new();
    if received > 0 {
        events.push((event_of(sku, "received", received), t - 8 * DAY_MS));
    }
    events.extend((0..7).map(|day| (event_of(sku, "sold", 20), t - day * DAY_MS - HOUR_MS)));
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_product_whose_stock_is_unknown_is_not_judged() {
    let stack = Stack::start().await;
    let t = now();
    // apple and pear: 30 left, 20 sold a day: 1.5 days of cover.
    let mut history = a_week_of_sales("apple", 170, t);
    history.extend(a_week_of_sales("pear", 170, t));
    stack.publish_all(history).await;
    stack.wait_for_views("apple", 30, 20.0).await;
    stack.wait_for_views("pear", 30, 20.0).await;
    // apple's stock key is deleted; then stock-projector falls behind while kiwi sells.
    let stock = stack
        .js
        .get_key_value(subjects::STOCK_BUCKET)
        .await
        .expect("stock");
    stock.delete("ams1.apple").await.expect("delete");
    stack.stock_projector.cancel();
    stack.publish_all(a_week_of_sales("kiwi", 0, t)).await;
    wait_until("kiwi's velocity", WAIT, || async {
        stack.view(subjects::VELOCITY_BUCKET, "kiwi").await["units_per_day"] == 20.0
    })
    .await;
    assert_eq!(
        stack.view(subjects::STOCK_BUCKET, "kiwi").await,
        Value::Null
    );

    stack.spawn_watcher();
    // pear is judged; a threshold set after the start is taken in after every product
    // present at the start was judged.
    stack.wait_for("alerts.stockout.ams1.pear", 1).await;
    let thresholds = stack
        .js
        .get_key_value(subjects::THRESHOLDS_BUCKET)
        .await
        .expect("thresholds");
    thresholds
        .put(
            "ams1.pear",
            json!({"stockout_days": 1.0}).to_string().into(),
        )
        .await
        .expect("set threshold");
    stack.wait_for("alerts.stockout.ams1.pear", 2).await;
    for sku in ["apple", "kiwi"] {
        for kind in ["velocity", "stockout"] {
            let subject = format!("alerts.{kind}.ams1.{sku}");
            assert_eq!(stack.alerts(&subject).await, vec![], "{subject}");
        }
    }

    // Once stock-projector catches up, kiwi's stock is known, and kiwi is judged.
    stack.spawn_stock_projector(stack.stop.child_token());
    stack.wait_for("alerts.stockout.ams1.kiwi", 1).await;
    let alerts = stack.alerts("alerts.stockout.ams1.kiwi").await;
    assert_eq!(alerts[0].0, "stock.stockout_forecast");
    assert_eq!(alerts[0].1["on_hand"], -140);
    assert_eq!(alerts[0].1["days_of_cover"], 0.0);
    assert!(stack.alerts("alerts.stockout.ams1.apple").await.is_empty());
}
