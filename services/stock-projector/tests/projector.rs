//! stock-projector against a real nats-server: the view's numbers after the article's
//! example, redelivery, a crash, poison, two instances at once, and a standby.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use stock_projector::{run, Config};
use stockwire::batch;
use stockwire::domain::{Event, Location, Quantity, Sku, StockView, WarehouseId};
use stockwire::envelope::{Envelope, EventMeta, Outbound};
use stockwire::provision;
use stockwire::read::Reader;
use stockwire::replay;
use stockwire::subjects;
use stockwire::testing::{wait_until, NatsServer};
use stockwire::view::{self, Checkpoint};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

struct Setup {
    server: NatsServer,
    client: async_nats::Client,
    js: jetstream::Context,
    stock: kv::Store,
}

async fn setup() -> Setup {
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
    Setup {
        server,
        client,
        js,
        stock,
    }
}

fn config(server: &NatsServer) -> Config {
    Config {
        scale: Default::default(),
        connect: server.connect_args(),
        header_prefix: "myorg".into(),
        batch: 1000,
    }
}

/// Runs a projector in this process until the returned token is cancelled.
fn spawn_projector(s: &Setup) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let token = CancellationToken::new();
    let (client, cfg, t) = (s.client.clone(), config(&s.server), token.clone());
    let handle = tokio::spawn(async move {
        if let Err(e) = run(client, &cfg, t).await {
            panic!("projector failed: {e:#}");
        }
    });
    (token, handle)
}

fn w(s: &str) -> WarehouseId {
    WarehouseId::parse(s).unwrap()
}
fn sku(s: &str) -> Sku {
    Sku::parse(s).unwrap()
}
fn loc(s: &str) -> Location {
    Location::parse(s).unwrap()
}
fn q(n: u64) -> Quantity {
    Quantity::new(n).unwrap()
}

fn encode(event: &Event, i: usize) -> Outbound {
    Envelope::default().encode(
        event,
        &EventMeta {
            msg_id: uuid::Uuid::new_v4().to_string(),
            timestamp_ms: 1_795_176_000_000 + i as i64,
        },
    )
}

async fn publish(js: &jetstream::Context, event: &Event) -> u64 {
    let out = encode(event, 0);
    js.publish_with_headers(out.subject, out.headers, out.payload)
        .await
        .expect("publish")
        .await
        .expect("ack")
        .sequence
}

async fn view_of(stock: &kv::Store, key: &str) -> Option<StockView> {
    stock
        .get(key)
        .await
        .expect("kv get")
        .map(|b| serde_json::from_slice(&b).expect("view JSON"))
}

async fn checkpoint(stock: &kv::Store) -> u64 {
    stock
        .get(subjects::CHECKPOINT_KEY)
        .await
        .expect("checkpoint")
        .map_or(0, |b| {
            serde_json::from_slice::<Checkpoint>(&b)
                .expect("checkpoint JSON")
                .last_seq
        })
}

async fn stream_last(js: &jetstream::Context) -> u64 {
    let mut stream = js.get_stream(subjects::INVENTORY_STREAM).await.unwrap();
    stream.info().await.unwrap().state.last_sequence
}

async fn wait_caught_up(s: &Setup) {
    let last = stream_last(&s.js).await;
    wait_until("the projector to catch up", WAIT, || async {
        checkpoint(&s.stock).await >= last
    })
    .await;
}

/// Every view key equals a replay of the log in memory.
async fn assert_view_matches_replay(s: &Setup) {
    let replayed = replay::stock(&s.js, &Envelope::default(), None)
        .await
        .unwrap();
    let in_view: Vec<(String, StockView)> =
        view::snapshot(&s.js, subjects::STOCK_BUCKET).await.unwrap();
    let expected: Vec<(String, StockView)> = replayed
        .book
        .views()
        .map(|v| (subjects::view_key(&v.warehouse, &v.sku), v.clone()))
        .collect();
    assert_eq!(in_view.len(), expected.len(), "number of keys");
    for ((k1, v1), (k2, v2)) in in_view.iter().zip(&expected) {
        assert_eq!(k1, k2);
        assert_eq!(v1, v2, "key {k1}");
    }
}

/// `n` events over `products` products: deliveries, sales, moves and counts.
fn mixed_events(n: usize, products: usize) -> Vec<Event> {
    (0..n)
        .map(|i| {
            let (warehouse, product) = (
                w(&format!("w{}", i % 3)),
                sku(&format!("p{}", i % products)),
            );
            match i % 7 {
                0..=2 => Event::Received {
                    warehouse,
                    sku: product,
                    location: loc("A1"),
                    quantity: q(1 + (i % 9) as u64),
                },
                3 | 4 => Event::Sold {
                    warehouse,
                    sku: product,
                    location: loc("A1"),
                    quantity: q(1 + (i % 4) as u64),
                },
                5 => Event::moved(warehouse, product, loc("A1"), loc("B2"), q(1)).unwrap(),
                _ => Event::Corrected {
                    warehouse,
                    sku: product,
                    location: loc("B2"),
                    quantity: (i % 5) as u32,
                },
            }
        })
        .collect()
}

async fn publish_in_batches(client: &async_nats::Client, events: &[Event], size: usize) {
    let encoded: Vec<Outbound> = events
        .iter()
        .enumerate()
        .map(|(i, e)| encode(e, i))
        .collect();
    for chunk in encoded.chunks(size) {
        batch::publish_atomic(client, chunk.to_vec(), Duration::from_secs(10))
            .await
            .expect("publish batch");
    }
}

#[tokio::test]
async fn the_articles_apples() {
    let s = setup().await;
    let (stop, handle) = spawn_projector(&s);
    let (ams1, apple) = (w("ams1"), sku("apple"));
    publish(
        &s.js,
        &Event::Corrected {
            warehouse: ams1.clone(),
            sku: apple.clone(),
            location: loc("A43"),
            quantity: 5,
        },
    )
    .await;
    let moved = publish(
        &s.js,
        &Event::moved(ams1.clone(), apple.clone(), loc("A43"), loc("G15"), q(3)).unwrap(),
    )
    .await;
    wait_until("the move in the view", WAIT, || async {
        view_of(&s.stock, "ams1.apple")
            .await
            .is_some_and(|v| v.last_seq >= moved)
    })
    .await;
    let view = view_of(&s.stock, "ams1.apple").await.unwrap();
    assert_eq!(
        (
            view.locations.at(&loc("A43")),
            view.locations.at(&loc("G15")),
            view.on_hand
        ),
        (2, 3, 5)
    );

    let sold = publish(
        &s.js,
        &Event::Sold {
            warehouse: ams1,
            sku: apple,
            location: loc("G15"),
            quantity: q(2),
        },
    )
    .await;
    wait_until("the sale in the view", WAIT, || async {
        view_of(&s.stock, "ams1.apple")
            .await
            .is_some_and(|v| v.last_seq >= sold)
    })
    .await;
    let view = view_of(&s.stock, "ams1.apple").await.unwrap();
    assert_eq!(
        (
            view.locations.at(&loc("A43")),
            view.locations.at(&loc("G15")),
            view.on_hand
        ),
        (2, 1, 3)
    );
    assert_eq!(view.updated_ms, 1_795_176_000_000);
    assert_eq!(checkpoint(&s.stock).await, sold);
    stop.cancel();
    handle.await.unwrap();
}

#[tokio::test]
async fn redelivering_everything_changes_nothing() {
    let s = setup().await;
    publish_in_batches(&s.client, &mixed_events(3000, 40), 500).await;
    let (stop, handle) = spawn_projector(&s);
    wait_caught_up(&s).await;
    stop.cancel();
    handle.await.unwrap();
    let before: Vec<(String, StockView)> =
        view::snapshot(&s.js, subjects::STOCK_BUCKET).await.unwrap();

    // Every event is delivered again.
    let reset = serde_json::to_vec(&Checkpoint::default()).unwrap();
    s.stock
        .put(subjects::CHECKPOINT_KEY, reset.into())
        .await
        .unwrap();
    assert_eq!(checkpoint(&s.stock).await, 0);
    let (stop, handle) = spawn_projector(&s);
    wait_caught_up(&s).await;
    stop.cancel();
    handle.await.unwrap();
    let after: Vec<(String, StockView)> =
        view::snapshot(&s.js, subjects::STOCK_BUCKET).await.unwrap();
    assert_eq!(before.len(), 120);
    assert_eq!(before, after);
    assert_view_matches_replay(&s).await;
}

#[tokio::test]
async fn a_batch_touching_more_keys_than_one_commit_holds_writes_each_key_once() {
    let s = setup().await;
    // 1,500 keys, each changed twice; a batch of up to 5,000 events folds both changes.
    publish_in_batches(&s.client, &mixed_events(3000, 1500), 1000).await;
    let token = CancellationToken::new();
    let cfg = Config {
        batch: 5000,
        ..config(&s.server)
    };
    let (client, t) = (s.client.clone(), token.clone());
    let handle = tokio::spawn(async move { run(client, &cfg, t).await });
    wait_caught_up(&s).await;
    token.cancel();
    handle.await.unwrap().expect("projector");
    assert_view_matches_replay(&s).await;
    // Committed 999 keys at a time, a key would be written for every event (the next
    // 999 events all touch other keys). Folded, most keys are written once; the last
    // events (committed as they come, live) add a few hundred writes.
    let writes =
        s.js.get_stream(subjects::kv_stream(subjects::STOCK_BUCKET))
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .state
            .last_sequence;
    assert!(
        writes < 2700,
        "{writes} writes to the view for 3,000 events"
    );
}

#[tokio::test]
async fn a_view_purged_behind_its_back_is_rebuilt_not_patched() {
    let s = setup().await;
    let (stop, handle) = spawn_projector(&s);
    publish_in_batches(&s.client, &mixed_events(2000, 40), 500).await;
    wait_caught_up(&s).await;

    // An operator empties the bucket's stream; its last sequence stays where it was.
    let mut kv_stream =
        s.js.get_stream(subjects::kv_stream(subjects::STOCK_BUCKET))
            .await
            .unwrap();
    kv_stream.purge().await.unwrap();
    assert_eq!(kv_stream.info().await.unwrap().state.messages, 0);

    // Live events, a few at a time: the projector's next commit must notice, reload
    // (checkpoint 0) and replay the whole log, not write 1 key on an empty bucket.
    for (i, event) in mixed_events(5, 40).iter().enumerate() {
        publish(&s.js, event).await;
        if i == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    wait_caught_up(&s).await;
    stop.cancel();
    handle.await.unwrap();
    assert_view_matches_replay(&s).await;
}

fn start_process(server: &NatsServer) -> Child {
    Command::new(env!("CARGO_BIN_EXE_stock-projector"))
        .env("NATS_URL", server.url())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start stock-projector")
}

#[tokio::test]
async fn a_killed_projector_resumes_and_converges() {
    let s = setup().await;
    let events = mixed_events(20_000, 500);
    let publisher = {
        let (client, events) = (s.client.clone(), events.clone());
        tokio::spawn(async move {
            for part in events.chunks(500) {
                publish_in_batches(&client, part, 250).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let mut child = start_process(&s.server);
    wait_until("the projector to apply some events", WAIT, || async {
        checkpoint(&s.stock).await > 2000
    })
    .await;
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    let at_kill = checkpoint(&s.stock).await;
    let mut child = start_process(&s.server);
    publisher.await.unwrap();
    wait_caught_up(&s).await;
    child.kill().expect("stop");
    child.wait().expect("reap");
    assert!(at_kill < 20_000, "the kill landed mid-way ({at_kill})");
    assert_view_matches_replay(&s).await;

    // on_hand is the sum of the facts, computed here without the domain code.
    let mut expected: std::collections::BTreeMap<String, i64> = Default::default();
    let mut counts: std::collections::BTreeMap<(String, String), i64> = Default::default();
    for e in &events {
        let key = subjects::view_key(e.warehouse(), e.sku());
        let at = |l: &str| (key.clone(), l.to_string());
        match e {
            Event::Received { quantity, .. } => {
                *counts.entry(at("A1")).or_default() += i64::from(quantity.get())
            }
            Event::Sold { quantity, .. } => {
                *counts.entry(at("A1")).or_default() -= i64::from(quantity.get())
            }
            Event::Moved { quantity, .. } => {
                *counts.entry(at("A1")).or_default() -= i64::from(quantity.get());
                *counts.entry(at("B2")).or_default() += i64::from(quantity.get());
            }
            Event::Corrected { quantity, .. } => {
                counts.insert(at("B2"), i64::from(*quantity));
            }
            other => unreachable!("mixed_events makes no {}", other.event_type()),
        }
    }
    for ((key, _), n) in counts {
        *expected.entry(key).or_default() += n;
    }
    for (key, on_hand) in expected {
        let view = view_of(&s.stock, &key).await.expect("key in view");
        assert_eq!(view.on_hand, on_hand, "{key}");
    }
}

#[tokio::test]
async fn poison_goes_to_the_dead_letters_and_the_rest_is_applied() {
    let s = setup().await;
    let (stop, handle) = spawn_projector(&s);
    let good = Event::Received {
        warehouse: w("ams1"),
        sku: sku("apple"),
        location: loc("A1"),
        quantity: q(4),
    };
    publish(&s.js, &good).await;

    let mut bad_json = encode(&good, 1);
    bad_json.payload = "{\"warehouse\": \"ams1\", oops".into();
    let mut no_type = encode(&good, 2);
    no_type.headers = {
        let mut h = async_nats::HeaderMap::new();
        for (k, v) in no_type.headers.iter() {
            if AsRef::<str>::as_ref(k) != "myorg_type" {
                h.insert(k.clone(), v[0].clone());
            }
        }
        h
    };
    for out in [bad_json, no_type] {
        s.js.publish_with_headers(out.subject, out.headers, out.payload)
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let last = publish(&s.js, &good).await;
    wait_until("the event after the poison", WAIT, || async {
        view_of(&s.stock, "ams1.apple")
            .await
            .is_some_and(|v| v.last_seq == last)
    })
    .await;
    assert_eq!(view_of(&s.stock, "ams1.apple").await.unwrap().on_hand, 8);

    let mut letters = Reader::open(&s.js, subjects::DEADLETTER_STREAM, "", 1)
        .await
        .unwrap();
    let mut found = Vec::new();
    while let Some(m) = letters.next().await {
        let m = m.unwrap();
        let h = m.headers.clone().unwrap();
        found.push((
            m.subject.clone(),
            h.get("Stockwire-Reason").unwrap().to_string(),
            h.get("Stockwire-Source-Sequence").unwrap().to_string(),
            h.get("Stockwire-Source-Subject").unwrap().to_string(),
        ));
    }
    assert_eq!(
        found,
        vec![
            (
                "deadletter.stock.2".into(),
                "bad_json".into(),
                "2".into(),
                "warehouse.ams1.product.apple.received".into()
            ),
            (
                "deadletter.stock.3".into(),
                "missing_header".into(),
                "3".into(),
                "warehouse.ams1.product.apple.received".into()
            ),
        ]
    );
    stop.cancel();
    handle.await.unwrap();
}

#[tokio::test]
async fn two_projectors_at_once_build_the_same_view() {
    let s = setup().await;
    let (stop_a, a) = spawn_projector(&s);
    let (stop_b, b) = spawn_projector(&s);
    let events = mixed_events(6000, 60);
    for part in events.chunks(600) {
        publish_in_batches(&s.client, part, 300).await;
    }
    // And live, one event at a time: both commit a few keys at once, as single publishes.
    for event in mixed_events(300, 60) {
        publish(&s.js, &event).await;
    }
    wait_caught_up(&s).await;
    stop_a.cancel();
    stop_b.cancel();
    a.await.unwrap();
    b.await.unwrap();
    assert_view_matches_replay(&s).await;
}

#[tokio::test]
async fn sigterm_stops_it_promptly_and_nothing_is_lost() {
    let s = setup().await;
    let mut child = start_process(&s.server);
    publish_in_batches(&s.client, &mixed_events(2000, 30), 500).await;
    wait_caught_up(&s).await;
    let pid = child.id().to_string();
    let started = std::time::Instant::now();
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill -TERM");
    let status = child.wait().expect("wait");
    assert!(status.success(), "exit status {status}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "stopped in {:?}",
        started.elapsed()
    );
    assert_view_matches_replay(&s).await;
}

#[path = "projector/standby.rs"]
mod standby;

/// Runs partition `index` of `count` in this process, keeping at most `cache_keys` values
/// in memory (0: all), until the returned token is cancelled.
fn spawn_partition(
    s: &Setup,
    index: u32,
    count: u32,
    cache_keys: u64,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let token = CancellationToken::new();
    let mut cfg = config(&s.server);
    cfg.scale = stockwire::projection::ScaleArgs {
        partition: index,
        partitions: count,
        cache_keys,
    };
    let (client, t) = (s.client.clone(), token.clone());
    let handle = tokio::spawn(async move {
        if let Err(e) = run(client, &cfg, t).await {
            panic!("projector failed: {e:#}");
        }
    });
    (token, handle)
}

/// The checkpoint of partition `index` as stored (for `count` partitions).
async fn partition_checkpoint(s: &Setup, index: u32, count: u32) -> Option<Checkpoint> {
    let key = stockwire::partition::checkpoint_key(index, count);
    s.stock
        .get(key)
        .await
        .expect("checkpoint read")
        .map(|b| serde_json::from_slice(&b).expect("checkpoint JSON"))
}

async fn wait_position(s: &Setup, partitions: u32) {
    let last = stream_last(&s.js).await;
    wait_until("every partition to catch up", WAIT, || async {
        view::position(&s.client, subjects::STOCK_BUCKET, Duration::from_secs(5))
            .await
            .is_ok_and(|p| p.partitions == partitions && p.lowest() >= last)
    })
    .await;
}

#[tokio::test]
async fn partitions_share_the_products_and_a_new_split_starts_from_the_lowest_checkpoint() {
    let s = setup().await;
    let events = mixed_events(1_500, 100);
    publish_in_batches(&s.client, &events[..900], 300).await;

    // Three partitions, each applying only its own products.
    let three: Vec<_> = (0..3).map(|i| spawn_partition(&s, i, 3, 0)).collect();
    wait_position(&s, 3).await;
    assert_view_matches_replay(&s).await;
    let at_three = stream_last(&s.js).await;
    for i in 0..3 {
        let c = partition_checkpoint(&s, i, 3).await.expect("a checkpoint");
        assert_eq!((c.last_seq, c.partitions), (at_three, 3), "partition {i}");
    }
    assert_eq!(
        s.stock.get(subjects::CHECKPOINT_KEY).await.expect("read"),
        None,
        "a split view has no whole-view checkpoint"
    );
    // Partition 1 stops; the others go on.
    let mut three = three.into_iter();
    let (p0, p1, p2) = (three.next(), three.next(), three.next());
    let (stop1, task1) = p1.expect("partition 1");
    stop1.cancel();
    task1.await.expect("partition 1 stops");
    publish_in_batches(&s.client, &events[900..1_200], 300).await;
    let last = stream_last(&s.js).await;
    wait_until("partitions 0 and 2 to catch up", WAIT, || async {
        let c0 = partition_checkpoint(&s, 0, 3)
            .await
            .map_or(0, |c| c.last_seq);
        let c2 = partition_checkpoint(&s, 2, 3)
            .await
            .map_or(0, |c| c.last_seq);
        c0 >= last && c2 >= last
    })
    .await;
    let position = view::position(&s.client, subjects::STOCK_BUCKET, Duration::from_secs(5))
        .await
        .expect("position");
    assert_eq!(
        position.lowest(),
        at_three,
        "the view stands where partition 1 stopped"
    );
    // Partition 1's products wait for it; the others are up to date.
    let one = stockwire::partition::Partition::new(1, 3).expect("partition");
    let (mut waiting, mut moved) = (0, 0);
    for (key, v) in view::snapshot::<StockView>(&s.js, subjects::STOCK_BUCKET)
        .await
        .expect("snapshot")
    {
        if one.owns_key(&key) {
            assert!(v.last_seq <= at_three, "{key} moved without its partition");
            waiting += 1;
        } else if v.last_seq > at_three {
            moved += 1;
        }
    }
    assert!(
        waiting > 0 && moved > 0,
        "{waiting} keys waiting, {moved} moved on"
    );
    for (stop, task) in [p0, p2].into_iter().flatten() {
        stop.cancel();
        task.await.expect("stops");
    }

    // Four partitions: each starts from the lowest checkpoint of the three.
    let four: Vec<_> = (0..4).map(|i| spawn_partition(&s, i, 4, 0)).collect();
    publish_in_batches(&s.client, &events[1_200..], 300).await;
    wait_position(&s, 4).await;
    let c3 = partition_checkpoint(&s, 3, 4).await.expect("partition 3's");
    assert_eq!(
        c3.from,
        Some(at_three),
        "partition 3 started where partition 1 of 3 stood"
    );
    assert_eq!(c3.partitions, 4);
    assert_view_matches_replay(&s).await;
    for (stop, task) in four {
        stop.cancel();
        task.await.expect("stops");
    }
}

#[tokio::test]
async fn a_projector_that_keeps_few_values_reads_the_others_from_the_bucket() {
    let s = setup().await;
    let events = mixed_events(2_000, 400);
    publish_in_batches(&s.client, &events[..1_000], 250).await;
    // 1,200 keys (400 products in 3 warehouses), 50 kept in memory.
    let (stop, task) = spawn_partition(&s, 0, 1, 50);
    wait_caught_up(&s).await;
    assert_view_matches_replay(&s).await;
    // Live events one at a time, to keys long since forgotten.
    for event in &events[1_000..1_100] {
        publish(&s.js, event).await;
    }
    publish_in_batches(&s.client, &events[1_100..], 250).await;
    wait_caught_up(&s).await;
    assert_view_matches_replay(&s).await;
    stop.cancel();
    task.await.expect("stops");
}

#[tokio::test]
async fn a_whole_view_again_after_a_split_starts_where_the_split_ended() {
    let s = setup().await;
    let events = mixed_events(600, 40);
    publish_in_batches(&s.client, &events[..300], 300).await;
    let (stop, task) = spawn_partition(&s, 0, 1, 0);
    wait_position(&s, 1).await;
    stop.cancel();
    task.await.expect("stops");
    let whole = stream_last(&s.js).await;

    publish_in_batches(&s.client, &events[300..], 300).await;
    let two: Vec<_> = (0..2).map(|i| spawn_partition(&s, i, 2, 0)).collect();
    wait_position(&s, 2).await;
    for (stop, task) in two {
        stop.cancel();
        task.await.expect("stops");
    }
    let split = stream_last(&s.js).await;
    assert!(split > whole);

    // `_checkpoint` (at `whole`) is a leftover now: the whole view starts where the two
    // partitions ended, not from it.
    let (stop, task) = spawn_partition(&s, 0, 1, 0);
    wait_until("the whole view's checkpoint", WAIT, || async {
        partition_checkpoint(&s, 0, 1)
            .await
            .is_some_and(|c| c.from.is_some())
    })
    .await;
    let c = partition_checkpoint(&s, 0, 1).await.expect("checkpoint");
    assert_eq!((c.from, c.partitions), (Some(split), 1));
    wait_position(&s, 1).await;
    assert_view_matches_replay(&s).await;
    stop.cancel();
    task.await.expect("stops");
}
