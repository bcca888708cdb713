//! Checked commands and transfers through the CLI: no overselling under concurrency,
//! stale decisions refused by the server, lost PubAcks, atomic transfers, --force.

use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use stockwire::aggregate::{self, expect_at};
use stockwire::batch;
use stockwire::domain::{Event, Location, Quantity, Sku, TransferId, WarehouseId};
use stockwire::envelope::{Envelope, EventMeta};
use stockwire::retry::AppendErrorKind;
use stockwire::testing::wait_until;

use super::*;

fn w(s: &str) -> WarehouseId {
    WarehouseId::parse(s).unwrap()
}
fn apple() -> Sku {
    Sku::parse("apple").unwrap()
}
fn loc(s: &str) -> Location {
    Location::parse(s).unwrap()
}
fn meta(id: &str) -> EventMeta {
    EventMeta {
        msg_id: id.to_string(),
        timestamp_ms: chrono::Utc::now().timestamp_millis(),
    }
}

async fn on_hand(stack: &Stack, warehouse: &str) -> Value {
    let rows: Vec<Value> = stack
        .ok(&["stock", "-w", warehouse, "-s", "apple", "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    rows.first().cloned().unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_clerks_cannot_sell_ten_apples_twenty_times() {
    let stack = Stack::start();
    let (stop, _projector) = stack.spawn_projector(stack.server.client().await);
    stack.ok(&[
        "publish", "received", "-w", "ams1", "-s", "apple", "-l", "A43", "-q", "10",
    ]);
    let clerks: Vec<_> = (0..30)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_stockwire"))
                .args([
                    "publish", "sold", "-w", "ams1", "-s", "apple", "-l", "A43", "-q", "1",
                ])
                .env("NATS_URL", stack.server.url())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("a clerk")
        })
        .collect();
    let outcomes: Vec<Output> = clerks
        .into_iter()
        .map(|c| c.wait_with_output().expect("clerk's outcome"))
        .collect();
    let sold = outcomes
        .iter()
        .filter(|o| o.status.code() == Some(0))
        .count();
    let refused: Vec<_> = outcomes
        .iter()
        .filter(|o| o.status.code() == Some(3))
        .collect();
    assert_eq!(
        (sold, refused.len()),
        (10, 20),
        "{:?}",
        outcomes.iter().map(stderr).collect::<Vec<_>>()
    );
    assert!(refused
        .iter()
        .all(|o| stderr(o).contains("cannot sell 1 apple at ams1/A43: only 0 on hand")));
    let sales = stack.read("warehouse.ams1.product.apple.sold").await;
    assert_eq!(sales.len(), 10);
    let last = stack.events().await.last().map(|m| m.sequence).unwrap_or(0);
    wait_until("the view", Duration::from_secs(30), || async {
        on_hand(&stack, "ams1").await["last_seq"].as_u64() == Some(last)
    })
    .await;
    assert_eq!(on_hand(&stack, "ams1").await["on_hand"], 0);
    stop.cancel();
}

#[tokio::test]
async fn a_sale_of_more_than_is_there_is_refused_and_forcing_records_it() {
    let stack = Stack::start();
    stack.ok(&[
        "publish", "received", "-w", "ams1", "-s", "apple", "-l", "A43", "-q", "2",
    ]);
    let out = stack.run(&[
        "publish", "sold", "-w", "ams1", "-s", "apple", "-l", "A43", "-q", "5",
    ]);
    assert_eq!(code(&out), Some(3));
    assert!(
        stderr(&out).contains("cannot sell 5 apple at ams1/A43: only 2 on hand"),
        "{}",
        stderr(&out)
    );
    let out = stack.run(&[
        "publish", "moved", "-w", "ams1", "-s", "apple", "--from", "A43", "--to", "B1", "-q", "3",
    ]);
    assert_eq!(code(&out), Some(3));
    assert_eq!(stack.events().await.len(), 1, "nothing stored");

    stack.ok(&[
        "publish", "sold", "-w", "ams1", "-s", "apple", "-l", "A43", "-q", "5", "--force",
    ]);
    assert_eq!(stack.events().await.len(), 2);
    let replayed: Vec<Value> = stack
        .ok(&[
            "stock",
            "--as-of",
            &chrono::Utc::now().timestamp_millis().to_string(),
            "--json",
        ])
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    assert_eq!(replayed[0]["on_hand"], -3, "the facts say so");
    let out = stack.run(&[
        "publish", "received", "-w", "ams1", "-s", "apple", "-l", "A1", "-q", "1", "--force",
    ]);
    assert_eq!(
        code(&out),
        Some(2),
        "--force on an unchecked kind is a mistake"
    );
}

#[tokio::test]
async fn a_stale_decision_is_refused_by_the_server() {
    let stack = Stack::start();
    stack.ok(&[
        "publish", "received", "-w", "ams1", "-s", "apple", "-l", "A43", "-q", "5",
    ]);
    let js = stack.js().await;
    let current = aggregate::load(&js, &Envelope::default(), &w("ams1"), &apple())
        .await
        .unwrap();
    assert_eq!(
        (current.last_seq, current.locations.at(&loc("A43"))),
        (1, 5)
    );
    // Another clerk sells meanwhile...
    stack.ok(&[
        "publish", "sold", "-w", "ams1", "-s", "apple", "-l", "A43", "-q", "4",
    ]);
    // ...so a sale decided on the old state is refused by JetStream itself.
    let sale = Event::Sold {
        warehouse: w("ams1"),
        sku: apple(),
        location: loc("A43"),
        quantity: Quantity::new(5).unwrap(),
    };
    let mut out = Envelope::default().encode(&sale, &meta("stale-1"));
    expect_at(&mut out, &w("ams1"), &apple(), current.last_seq);
    let err = js
        .publish_with_headers(out.subject, out.headers, out.payload)
        .await
        .unwrap()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), PublishErrorKind::WrongLastSequence);
    assert_eq!(stack.events().await.len(), 2);
}

#[tokio::test]
async fn a_sale_whose_puback_was_lost_is_stored_once_and_reported_as_done() {
    let stack = Stack::start();
    stack.ok(&[
        "publish", "received", "-w", "ams1", "-s", "apple", "-l", "A43", "-q", "5",
    ]);
    // The first attempt reached the stream, but its PubAck never came back.
    let js = stack.js().await;
    let sale = Event::Sold {
        warehouse: w("ams1"),
        sku: apple(),
        location: loc("A43"),
        quantity: Quantity::new(2).unwrap(),
    };
    let mut out = Envelope::default().encode(&sale, &meta("till-7-sale-42"));
    expect_at(&mut out, &w("ams1"), &apple(), 1);
    js.publish_with_headers(out.subject, out.headers, out.payload)
        .await
        .unwrap();
    wait_until(
        "the first attempt stored",
        Duration::from_secs(10),
        || async { stack.events().await.len() == 2 },
    )
    .await;
    // The clerk retries the same command with the same id.
    let out = stack.ok(&[
        "publish",
        "sold",
        "-w",
        "ams1",
        "-s",
        "apple",
        "-l",
        "A43",
        "-q",
        "2",
        "--msg-id",
        "till-7-sale-42",
    ]);
    assert!(out.contains("already stored as #2"), "{out}");
    assert_eq!(
        stack.read("warehouse.ams1.product.apple.sold").await.len(),
        1,
        "sold once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_moves_the_units_between_warehouses() {
    let stack = Stack::start();
    let (stop, _projector) = stack.spawn_projector(stack.server.client().await);
    stack.ok(&[
        "publish", "received", "-w", "ams1", "-s", "apple", "-l", "A1", "-q", "10",
    ]);
    stack.ok(&[
        "publish", "received", "-w", "rtm1", "-s", "apple", "-l", "B2", "-q", "1",
    ]);
    let out = stack.ok(&[
        "transfer",
        "-s",
        "apple",
        "--from-warehouse",
        "ams1",
        "--from",
        "A1",
        "--to-warehouse",
        "rtm1",
        "--to",
        "B2",
        "-q",
        "4",
        "--transfer-id",
        "t-77",
        "--wait",
        "--json",
    ]);
    let done: Value = serde_json::from_str(out.trim()).expect("JSON");
    assert_eq!(
        (done["out_seq"].as_u64(), done["in_seq"].as_u64()),
        (Some(3), Some(4))
    );
    let events = stack.events().await;
    assert_eq!(
        events[2].subject,
        "warehouse.ams1.product.apple.transferred_out"
    );
    assert_eq!(
        events[3].subject,
        "warehouse.rtm1.product.apple.transferred_in"
    );
    assert_eq!(
        payload(&events[2]),
        json!({"warehouse":"ams1","sku":"apple","location":"A1","quantity":4,"to_warehouse":"rtm1","transfer_id":"t-77"})
    );
    assert_eq!(on_hand(&stack, "ams1").await["locations"], json!({"A1": 6}));
    assert_eq!(on_hand(&stack, "rtm1").await["locations"], json!({"B2": 5}));

    // The same transfer again is already done; more than is there is refused.
    let again = stack.ok(&[
        "transfer",
        "-s",
        "apple",
        "--from-warehouse",
        "ams1",
        "--from",
        "A1",
        "--to-warehouse",
        "rtm1",
        "--to",
        "B2",
        "-q",
        "4",
        "--transfer-id",
        "t-77",
    ]);
    assert!(again.contains("already stored"), "{again}");
    let out = stack.run(&[
        "transfer",
        "-s",
        "apple",
        "--from-warehouse",
        "ams1",
        "--from",
        "A1",
        "--to-warehouse",
        "rtm1",
        "--to",
        "B2",
        "-q",
        "7",
    ]);
    assert_eq!(code(&out), Some(3));
    assert!(
        stderr(&out).contains("cannot transfer 7 apple at ams1/A1: only 6 on hand"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stack.events().await.len(), 4);
    stop.cancel();
}

#[tokio::test]
async fn a_transfer_whose_second_half_is_stale_stores_neither() {
    let stack = Stack::start();
    stack.ok(&[
        "publish", "received", "-w", "ams1", "-s", "apple", "-l", "A1", "-q", "10",
    ]);
    stack.ok(&[
        "publish", "received", "-w", "rtm1", "-s", "apple", "-l", "B2", "-q", "1",
    ]);
    let js = stack.js().await;
    let id = TransferId::parse("t-stale").unwrap();
    let q4 = Quantity::new(4).unwrap();
    let out_event = Event::TransferredOut {
        warehouse: w("ams1"),
        sku: apple(),
        location: loc("A1"),
        quantity: q4,
        to_warehouse: w("rtm1"),
        transfer_id: id.clone(),
    };
    let in_event = Event::TransferredIn {
        warehouse: w("rtm1"),
        sku: apple(),
        location: loc("B2"),
        quantity: q4,
        from_warehouse: w("ams1"),
        transfer_id: id,
    };
    let mut first = Envelope::default().encode(&out_event, &meta("t-stale-out"));
    expect_at(&mut first, &w("ams1"), &apple(), 1);
    let mut second = Envelope::default().encode(&in_event, &meta("t-stale-in"));
    // rtm1's last event is #2; a decision made before it is stale.
    expect_at(&mut second, &w("rtm1"), &apple(), 0);
    let err = batch::publish_atomic(&js.client(), vec![first, second], Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), AppendErrorKind::WrongLastSequence, "{err}");
    assert_eq!(stack.events().await.len(), 2, "neither half stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_is_decided_on_the_view_plus_the_events_after_it() {
    let stack = Stack::start();
    let (stop, projector) = stack.spawn_projector(stack.server.client().await);
    stack.ok(&[
        "publish", "received", "-w", "ams1", "-s", "apple", "-l", "A43", "-q", "5", "--wait",
    ]);
    stop.cancel();
    projector.await.expect("projector stopped");
    // The view holds 5; the log has 3 more that the view has not seen.
    stack.ok(&[
        "publish", "received", "-w", "ams1", "-s", "apple", "-l", "A43", "-q", "3",
    ]);
    let js = stack.js().await;
    let current = aggregate::load(&js, &Envelope::default(), &w("ams1"), &apple())
        .await
        .expect("load");
    assert_eq!(
        (current.last_seq, current.locations.at(&loc("A43"))),
        (2, 8)
    );
    let out = stack.run(&[
        "publish", "sold", "-w", "ams1", "-s", "apple", "-l", "A43", "-q", "9", "--json",
    ]);
    assert_eq!(code(&out), Some(3), "{}", stderr(&out));
    let refused: Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim())
        .expect("the refusal as JSON");
    assert_eq!(refused["outcome"], "rejected", "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.contains("only 8 on hand")),
        "{refused}"
    );
    let sold: Value = serde_json::from_str(
        stack
            .ok(&[
                "publish", "sold", "-w", "ams1", "-s", "apple", "-l", "A43", "-q", "8", "--json",
            ])
            .trim(),
    )
    .expect("JSON");
    assert_eq!(
        (sold["outcome"].as_str(), sold["seq"].as_u64()),
        (Some("stored"), Some(3))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_msg_id_is_already_stored_even_when_the_view_has_applied_it() {
    let stack = Stack::start();
    let (stop, _projector) = stack.spawn_projector(stack.server.client().await);
    let sell_all = [
        "publish",
        "sold",
        "-w",
        "ams1",
        "-s",
        "apple",
        "-l",
        "A43",
        "-q",
        "4",
        "--msg-id",
        "till-1-sale-9",
        "--wait",
        "--json",
    ];
    stack.ok(&[
        "publish", "received", "-w", "ams1", "-s", "apple", "-l", "A43", "-q", "4", "--wait",
    ]);
    let first: Value = serde_json::from_str(stack.ok(&sell_all).trim()).expect("JSON");
    assert_eq!(first["outcome"], "stored");
    // The view now says 0 on hand: the rule alone would refuse the repeat.
    let again: Value = serde_json::from_str(stack.ok(&sell_all).trim()).expect("JSON");
    assert_eq!(
        (again["outcome"].as_str(), again["seq"].as_u64()),
        (Some("already_stored"), first["seq"].as_u64()),
        "{again}"
    );
    assert_eq!(
        stack.read("warehouse.ams1.product.apple.sold").await.len(),
        1
    );
    stop.cancel();
}

#[tokio::test]
async fn an_event_time_ahead_of_the_servers_clock_is_refused_before_it_is_stored() {
    let stack = Stack::start();
    let ahead = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_stockwire"))
            .args(args)
            .env("NATS_URL", stack.server.url())
            // This machine's clock runs 10 minutes fast.
            .env("STOCKWIRE_CLOCK_OFFSET_MS", "600000")
            .output()
            .expect("run stockwire")
    };
    let out = ahead(&[
        "publish", "received", "-w", "ams1", "-s", "apple", "-l", "A43", "-q", "4",
    ]);
    assert_eq!(code(&out), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("more than 5 minutes ahead of the NATS server's clock"),
        "{}",
        stderr(&out)
    );
    let line = r#"{"type":"stock.received","warehouse":"ams1","sku":"apple","location":"A1","quantity":1}"#;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("events.ndjson");
    std::fs::write(&file, format!("{line}\n")).expect("write file");
    let out = ahead(&["publish", "--file", &file.to_string_lossy()]);
    assert_eq!(code(&out), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("line 1"), "{}", stderr(&out));
    // Backdated far enough, the same clock is no problem.
    let out = ahead(&[
        "publish",
        "received",
        "-w",
        "ams1",
        "-s",
        "apple",
        "-l",
        "A43",
        "-q",
        "4",
        "--at",
        &(chrono::Utc::now().timestamp_millis() - 60_000).to_string(),
    ]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert_eq!(
        stack.events().await.len(),
        1,
        "only the backdated event is stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checked_sales_on_a_current_view_leave_no_consumer_behind() {
    let stack = Stack::start();
    let client = stack.server.client().await;
    let (stop, _projector) = stack.spawn_projector(client.clone());
    stack.ok(&[
        "publish", "received", "-w", "ams1", "-s", "apple", "-l", "A1", "-q", "30", "--wait",
    ]);
    let js = jetstream::new(client);
    let consumers = |js: jetstream::Context| async move {
        let mut stream = js
            .get_stream(subjects::INVENTORY_STREAM)
            .await
            .expect("INVENTORY");
        stream.info().await.expect("info").state.consumer_count
    };
    let before = consumers(js.clone()).await;
    for _ in 0..20 {
        stack.ok(&[
            "publish", "sold", "-w", "ams1", "-s", "apple", "-l", "A1", "-q", "1", "--wait",
        ]);
    }
    // Each sale found the view current with one direct get: no consumer was made for it
    // (one made and left would idle on the server for 30 s).
    assert_eq!(consumers(js).await, before);
    let out = stack.ok(&["stock", "-w", "ams1", "-s", "apple", "--json"]);
    let view: Value = serde_json::from_str(out.trim()).expect("stock JSON");
    assert_eq!(view["on_hand"], 10);
    stop.cancel();
}
