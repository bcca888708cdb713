//! velocity-watcher against a real nats-server, with stock-projector and
//! velocity-projector keeping the views: stockout forecasts and band changes, once each.

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
        let stock = stock_projector::Config {
            connect: server.connect_args(),
            header_prefix: "myorg".into(),
            batch: 5000,
        };
        let velocity = velocity_projector::Config {
            connect: server.connect_args(),
            header_prefix: "myorg".into(),
            batch: 5000,
            tick_s: 0.2,
            linger_ms: 100,
        };
        let (c, t) = (client.clone(), stop.clone());
        tokio::spawn(async move {
            if let Err(e) = stock_projector::run(c, &stock, t).await {
                panic!("stock-projector failed: {e:#}");
            }
        });
        let (c, t) = (client.clone(), stop.clone());
        tokio::spawn(async move {
            if let Err(e) = velocity_projector::run(c, &velocity, Arc::new(SystemClock), t).await {
                panic!("velocity-projector failed: {e:#}");
            }
        });
        Self {
            server,
            client,
            js,
            stop,
        }
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

    /// Waits until the views show apple with `on_hand` and `units_per_day`.
    async fn wait_for_views(&self, on_hand: i64, per_day: f64) {
        let stock = self
            .js
            .get_key_value(subjects::STOCK_BUCKET)
            .await
            .expect("stock");
        let velocity = self
            .js
            .get_key_value(subjects::VELOCITY_BUCKET)
            .await
            .expect("velocity");
        wait_until("the views", WAIT, || async {
            let get = |kv: &async_nats::jetstream::kv::Store| {
                let kv = kv.clone();
                async move {
                    kv.get("ams1.apple")
                        .await
                        .ok()
                        .flatten()
                        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                        .unwrap_or(Value::Null)
                }
            };
            get(&stock).await["on_hand"] == on_hand
                && get(&velocity).await["units_per_day"] == per_day
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
    let (warehouse, sku, location, quantity) = (
        WarehouseId::parse("ams1").unwrap(),
        Sku::parse("apple").unwrap(),
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
    let mut history = vec![(event("received", 170), t - 8 * DAY_MS)];
    history.extend((0..7).map(|day| (event("sold", 20), t - day * DAY_MS - HOUR_MS)));
    stack.publish_all(history).await;
    stack.wait_for_views(30, 20.0).await;
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
