//! velocity-projector against a real nats-server, with a clock the test moves.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use stockwire::domain::{
    Event, Location, Quantity, Sku, VelocityView, WarehouseId, DAY_MS, HOUR_MS, MINUTE_MS,
};
use stockwire::envelope::{Envelope, EventMeta};
use stockwire::testing::{wait_until, ManualClock, NatsServer};
use stockwire::view::{self, Checkpoint};
use stockwire::{provision, subjects};
use tokio_util::sync::CancellationToken;
use velocity_projector::{run, Config};

const WAIT: Duration = Duration::from_secs(30);
const T: i64 = 1_795_176_000_000; // 2026-11-20T12:00:00Z

struct Setup {
    server: NatsServer,
    client: async_nats::Client,
    js: jetstream::Context,
    velocity: kv::Store,
    clock: Arc<ManualClock>,
}

async fn setup() -> Setup {
    let server = NatsServer::start().expect("nats-server");
    let client = server.client().await;
    let js = jetstream::new(client.clone());
    provision::provision(&js, &provision::Options::default())
        .await
        .expect("provision");
    let velocity = js
        .get_key_value(subjects::VELOCITY_BUCKET)
        .await
        .expect("bucket");
    Setup {
        server,
        client,
        js,
        velocity,
        clock: Arc::new(ManualClock::new(T)),
    }
}

fn spawn(s: &Setup) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    spawn_keeping(s, 0)
}

/// The projector keeping at most `cache_keys` values in memory (0: all).
fn spawn_keeping(s: &Setup, cache_keys: u64) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    spawn_with(
        s,
        stockwire::projection::ScaleArgs {
            cache_keys,
            ..Default::default()
        },
    )
}

fn spawn_with(
    s: &Setup,
    scale: stockwire::projection::ScaleArgs,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let config = Config {
        scale,
        connect: s.server.connect_args(),
        header_prefix: "myorg".into(),
        batch: 5000,
        tick_s: 0.05,
        linger_ms: 100,
    };
    let token = CancellationToken::new();
    let (client, clock, t) = (s.client.clone(), s.clock.clone(), token.clone());
    let handle = tokio::spawn(async move {
        if let Err(e) = run(client, &config, clock, t).await {
            panic!("velocity-projector failed: {e:#}");
        }
    });
    (token, handle)
}

async fn publish(s: &Setup, event: Event, at_ms: i64) -> u64 {
    let out = Envelope::default().encode(
        &event,
        &EventMeta {
            msg_id: uuid::Uuid::new_v4().to_string(),
            timestamp_ms: at_ms,
        },
    );
    s.js.publish_with_headers(out.subject, out.headers, out.payload)
        .await
        .expect("publish")
        .await
        .expect("ack")
        .sequence
}

fn sold(n: u64) -> Event {
    Event::Sold {
        warehouse: WarehouseId::parse("ams1").unwrap(),
        sku: Sku::parse("apple").unwrap(),
        location: Location::parse("A1").unwrap(),
        quantity: Quantity::new(n).unwrap(),
    }
}

fn received(n: u64) -> Event {
    Event::Received {
        warehouse: WarehouseId::parse("ams1").unwrap(),
        sku: Sku::parse("apple").unwrap(),
        location: Location::parse("A1").unwrap(),
        quantity: Quantity::new(n).unwrap(),
    }
}

async fn apple(s: &Setup) -> Option<VelocityView> {
    s.velocity
        .get("ams1.apple")
        .await
        .ok()
        .flatten()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

fn numbers(v: &VelocityView) -> (u64, u64, u64) {
    (v.sold_last_hour, v.sold_last_day, v.sold_last_week)
}

async fn checkpoint(s: &Setup) -> u64 {
    view::read_checkpoint(&s.client, subjects::VELOCITY_BUCKET)
        .await
        .expect("checkpoint")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_count_by_event_time_and_slide_with_the_clock() {
    let s = setup().await;
    publish(&s, received(100), T - 9 * DAY_MS).await;
    publish(&s, sold(3), T - 30 * MINUTE_MS).await;
    publish(&s, sold(5), T - 5 * HOUR_MS).await;
    publish(&s, sold(10), T - 3 * DAY_MS).await;
    let last = publish(&s, sold(7), T - 8 * DAY_MS).await;
    let (stop, task) = spawn(&s);
    wait_until("the sales applied", WAIT, || async {
        checkpoint(&s).await >= last
    })
    .await;
    let v = apple(&s).await.expect("apple's velocity");
    assert_eq!(numbers(&v), (3, 8, 18));
    assert_eq!(v.last_seq, last);
    assert_eq!(v.as_of_ms, T);
    assert!((v.units_per_day - 18.0 / 7.0).abs() < 1e-9);

    // An hour passes with no sale: the windows slide by themselves.
    s.clock.advance(HOUR_MS);
    wait_until("the hour window to empty", WAIT, || async {
        apple(&s).await.is_some_and(|v| v.sold_last_hour == 0)
    })
    .await;
    let v = apple(&s).await.expect("apple's velocity");
    assert_eq!(numbers(&v), (0, 8, 18));
    assert_eq!(v.as_of_ms, T + HOUR_MS);

    // Redelivery of every sale (checkpoint back to 0) counts nothing twice.
    stop.cancel();
    task.await.unwrap();
    let reset = serde_json::to_vec(&Checkpoint::default()).unwrap();
    s.velocity
        .put(subjects::CHECKPOINT_KEY, reset.into())
        .await
        .unwrap();
    let (stop, task) = spawn(&s);
    wait_until("the sales read again", WAIT, || async {
        checkpoint(&s).await >= last
    })
    .await;
    assert_eq!(numbers(&apple(&s).await.expect("velocity")), (0, 8, 18));
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_sales_are_read_and_a_late_sale_lands_in_its_own_hour() {
    let s = setup().await;
    let (stop, task) = spawn(&s);
    publish(&s, received(50), T).await;
    let first = publish(&s, sold(4), T - 10 * MINUTE_MS).await;
    wait_until("the first sale", WAIT, || async {
        checkpoint(&s).await >= first
    })
    .await;
    assert_eq!(numbers(&apple(&s).await.expect("velocity")), (4, 4, 4));
    // Imported late: it happened two days ago.
    let late = publish(&s, sold(6), T - 2 * DAY_MS).await;
    wait_until("the late sale", WAIT, || async {
        checkpoint(&s).await >= late
    })
    .await;
    assert_eq!(numbers(&apple(&s).await.expect("velocity")), (4, 4, 10));
    let keys: Vec<(String, VelocityView)> = view::snapshot(&s.js, subjects::VELOCITY_BUCKET)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "the delivery made no key");
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_slide_for_keys_not_kept_in_memory() {
    let s = setup().await;
    let product = |sku: &str| Event::Sold {
        warehouse: WarehouseId::parse("ams1").unwrap(),
        sku: Sku::parse(sku).unwrap(),
        location: Location::parse("A1").unwrap(),
        quantity: Quantity::new(2).unwrap(),
    };
    let skus = ["apple", "pear", "plum", "fig"];
    let mut last = 0;
    for sku in skus {
        last = publish(&s, product(sku), T - 30 * MINUTE_MS).await;
    }
    // One value in memory: the tick reads the others from the bucket.
    let (stop, task) = spawn_keeping(&s, 1);
    wait_until("the sales applied", WAIT, || async {
        checkpoint(&s).await >= last
    })
    .await;
    let hour = |sku: &'static str| {
        let velocity = s.velocity.clone();
        async move {
            velocity
                .get(format!("ams1.{sku}"))
                .await
                .ok()
                .flatten()
                .and_then(|b| serde_json::from_slice::<VelocityView>(&b).ok())
                .map(|v| v.sold_last_hour)
        }
    };
    for sku in skus {
        assert_eq!(hour(sku).await, Some(2), "{sku}");
    }
    s.clock.advance(HOUR_MS);
    wait_until("every hour window to empty", WAIT, || async {
        let mut all = true;
        for sku in skus {
            all &= hour(sku).await == Some(0);
        }
        all
    })
    .await;
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_partitions_count_every_products_sales_once() {
    let s = setup().await;
    let skus: Vec<String> = (0..8).map(|i| format!("p{i}")).collect();
    let mut last = 0;
    for (i, sku) in skus.iter().enumerate() {
        for _ in 0..=i {
            let sale = Event::Sold {
                warehouse: WarehouseId::parse("ams1").unwrap(),
                sku: Sku::parse(sku).unwrap(),
                location: Location::parse("A1").unwrap(),
                quantity: Quantity::new(1).unwrap(),
            };
            last = publish(&s, sale, T - 10 * MINUTE_MS).await;
        }
    }
    let partitions: Vec<_> = (0..2)
        .map(|partition| {
            spawn_with(
                &s,
                stockwire::projection::ScaleArgs {
                    partition,
                    partitions: 2,
                    ..Default::default()
                },
            )
        })
        .collect();
    wait_until("both partitions caught up", WAIT, || async {
        view::position(&s.client, subjects::VELOCITY_BUCKET, Duration::from_secs(5))
            .await
            .is_ok_and(|p| p.partitions == 2 && p.lowest() >= last)
    })
    .await;
    for (i, sku) in skus.iter().enumerate() {
        let v: VelocityView = serde_json::from_slice(
            &s.velocity
                .get(format!("ams1.{sku}"))
                .await
                .unwrap()
                .expect("a value"),
        )
        .unwrap();
        assert_eq!(v.sold_last_hour, i as u64 + 1, "{sku}");
    }
    for (stop, task) in partitions {
        stop.cancel();
        task.await.unwrap();
    }
}
