//! The stock view through the CLI, with stock-projector running in this process:
//! `stock`, `--as-of`, `publish --wait`, `verify` and `rebuild`.

use std::time::Duration;

use super::*;

fn stock_json(stack: &Stack, args: &[&str]) -> Vec<Value> {
    let mut full = vec!["stock", "--json"];
    full.extend_from_slice(args);
    stack
        .ok(&full)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_wait_then_stock_shows_the_articles_apples() {
    let stack = Stack::start();
    let (projector, _task) = stack.spawn_projector(stack.server.client().await);
    stack.ok(&[
        "publish",
        "corrected",
        "-w",
        "ams1",
        "-s",
        "apple",
        "-l",
        "A43",
        "-q",
        "5",
        "--wait",
    ]);
    stack.ok(&[
        "publish", "moved", "-w", "ams1", "-s", "apple", "--from", "A43", "--to", "G15", "-q", "3",
        "--wait",
    ]);
    let views = stock_json(&stack, &["-w", "ams1"]);
    assert_eq!(views.len(), 1);
    assert_eq!(views[0]["on_hand"], 5);
    assert_eq!(views[0]["locations"], json!({"A43": 2, "G15": 3}));

    stack.ok(&[
        "publish", "sold", "-w", "ams1", "-s", "apple", "-l", "G15", "-q", "2", "--wait",
    ]);
    stack.ok(&[
        "publish", "received", "-w", "rtm1", "-s", "pear", "-l", "B1", "-q", "7", "--wait",
    ]);
    let views = stock_json(&stack, &["-s", "apple"]);
    assert_eq!(views[0]["locations"], json!({"A43": 2, "G15": 1}));
    assert_eq!(views[0]["on_hand"], 3);
    let table = stack.ok(&["stock"]);
    assert!(
        table.contains("ams1") && table.contains("A43: 2, G15: 1"),
        "{table}"
    );
    assert!(table.contains("rtm1") && table.contains("B1: 7"), "{table}");
    projector.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_without_a_projector_says_so() {
    let stack = Stack::start();
    let started = std::time::Instant::now();
    let out = stack.run(&[
        "publish",
        "received",
        "-w",
        "ams1",
        "-s",
        "apple",
        "-l",
        "A1",
        "-q",
        "1",
        "--wait",
        "--wait-timeout-s",
        "1",
    ]);
    assert_eq!(code(&out), Some(1));
    assert!(
        stderr(&out).contains("is stock-projector running?"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("within 1 s"), "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(stack.events().await.len(), 1, "the event itself is stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_of_shows_the_state_between_two_events() {
    let stack = Stack::start();
    stack.ok(&[
        "publish",
        "received",
        "-w",
        "ams1",
        "-s",
        "apple",
        "-l",
        "A1",
        "-q",
        "10",
        "--at",
        "2026-11-20T10:00:00Z",
    ]);
    stack.ok(&[
        "publish",
        "sold",
        "-w",
        "ams1",
        "-s",
        "apple",
        "-l",
        "A1",
        "-q",
        "4",
        "--at",
        "2026-11-20T12:00:00Z",
    ]);
    // Published later, but it happened before noon: as-of goes by event time.
    stack.ok(&[
        "publish",
        "received",
        "-w",
        "ams1",
        "-s",
        "apple",
        "-l",
        "B1",
        "-q",
        "1",
        "--at",
        "2026-11-20T09:00:00Z",
    ]);

    let before = stock_json(&stack, &["--as-of", "2026-11-20T11:00:00Z"]);
    assert_eq!(before.len(), 1);
    assert_eq!(before[0]["on_hand"], 11);
    assert_eq!(before[0]["locations"], json!({"A1": 10, "B1": 1}));
    let after = stock_json(&stack, &["--as-of", "2026-11-20T12:00:00Z"]);
    assert_eq!(after[0]["on_hand"], 7);
    let long_ago = stock_json(&stack, &["--as-of", "2026-11-20T08:00:00Z"]);
    assert!(long_ago.is_empty());
    let out = stack.run(&["stock", "--as-of", "noon"]);
    assert_eq!(code(&out), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_a_tampered_view_and_rebuild_repairs_it() {
    let stack = Stack::start();
    let client = stack.server.client().await;
    let (projector, _task) = stack.spawn_projector(client.clone());
    let mut text = String::new();
    for i in 0..2000u32 {
        text.push_str(
            &json!({"type": if i % 3 == 0 { "stock.sold" } else { "stock.received" },
                    "warehouse": "ams1", "sku": format!("p{}", i % 40), "location": "A1", "quantity": 1 + i % 3})
            .to_string(),
        );
        text.push('\n');
    }
    stack.ok_with_input(&["publish", "--file", "-", "--wait"], &text);
    let clean = stack.ok(&["verify"]);
    assert!(
        clean.contains("verified 40 keys") && clean.contains("no differences"),
        "{clean}"
    );

    // Somebody writes to the view behind the projector's back.
    let js = jetstream::new(client.clone());
    let kv = js.get_key_value("stock").await.expect("bucket");
    let mut forged: Value =
        serde_json::from_slice(&kv.get("ams1.p7").await.unwrap().unwrap()).unwrap();
    forged["on_hand"] = json!(999);
    kv.put("ams1.p7", forged.to_string().into()).await.unwrap();
    kv.put("ams1.ghost", r#"{"warehouse":"ams1","sku":"ghost","on_hand":1,"locations":{"A1":1},"last_seq":1,"updated_ms":0}"#.into()).await.unwrap();

    let out = stack.run(&["verify"]);
    assert_eq!(code(&out), Some(3));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("ams1.p7") && report.contains("differs from the log"),
        "{report}"
    );
    assert!(report.contains("ams1.ghost"), "{report}");
    assert!(report.contains("2 differences"), "{report}");

    let out = stack.ok(&["rebuild", "stock"]);
    assert!(
        out.contains("rebuilt the stock view: 2000 events replayed"),
        "{out}"
    );
    assert!(out.contains("1 deleted"), "{out}");
    let clean = stack.ok(&["verify"]);
    assert!(clean.contains("no differences"), "{clean}");

    // Events published after the rebuild are applied as usual.
    stack.ok(&[
        "publish", "received", "-w", "ams1", "-s", "p7", "-l", "A1", "-q", "1", "--wait",
    ]);
    assert!(stack.ok(&["verify"]).contains("no differences"));
    projector.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_never_shows_a_half_replayed_value() {
    let stack = Stack::start();
    let client = stack.server.client().await;
    let (projector, _task) = stack.spawn_projector(client.clone());
    let mut text = String::new();
    for i in 0..3000u32 {
        let kind = if i % 2 == 0 {
            "stock.received"
        } else {
            "stock.sold"
        };
        text.push_str(&json!({"type": kind, "warehouse": "ams1", "sku": "apple", "location": "A1", "quantity": 1}).to_string());
        text.push('\n');
    }
    stack.ok_with_input(&["publish", "--file", "-", "--wait"], &text);
    let js = jetstream::new(client.clone());
    let kv = js.get_key_value("stock").await.expect("bucket");
    let mut forged: Value =
        serde_json::from_slice(&kv.get("ams1.apple").await.unwrap().unwrap()).unwrap();
    forged["on_hand"] = json!(999);
    forged["locations"] = json!({"A1": 999});
    kv.put("ams1.apple", forged.to_string().into())
        .await
        .unwrap();

    let mut watch = kv.watch("ams1.apple").await.expect("watch");
    let out = stack.ok(&["rebuild", "stock"]);
    assert!(
        out.contains("3000 events replayed") && out.contains("1 keys written"),
        "{out}"
    );
    // Watchers see one write, with the final value: never a half-replayed one.
    let mut seen = Vec::new();
    while let Ok(Some(entry)) = tokio::time::timeout(
        Duration::from_millis(500),
        futures::StreamExt::next(&mut watch),
    )
    .await
    {
        let entry = entry.expect("watch entry");
        let value: Value = serde_json::from_slice(&entry.value).expect("view JSON");
        seen.push((value["on_hand"].clone(), value["last_seq"].clone()));
    }
    assert_eq!(seen, vec![(json!(0), json!(3000))]);
    let views = stock_json(&stack, &["-s", "apple"]);
    assert_eq!(views[0]["on_hand"], 0);
    projector.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_split_in_two_is_waited_on_verified_and_rebuilt_by_both_partitions() {
    let stack = Stack::start();
    let client = stack.server.client().await;
    let (p0, _t0) = stack.spawn_projector_partition(client.clone(), 0, 2);
    let (p1, t1) = stack.spawn_projector_partition(client.clone(), 1, 2);
    // Each --wait waits for its own product's partition.
    let skus: Vec<String> = (0..12).map(|i| format!("p{i}")).collect();
    for sku in &skus {
        stack.ok(&[
            "publish", "received", "-w", "ams1", "-s", sku, "-l", "A1", "-q", "4", "--wait",
        ]);
        let views = stock_json(&stack, &["-s", sku]);
        assert_eq!(views[0]["on_hand"], 4, "{sku} right after --wait");
    }
    let split = |key: &str| stockwire::partition::of_key(key, 2);
    assert!(
        skus.iter().any(|s| split(&format!("ams1.{s}")) == Some(0))
            && skus.iter().any(|s| split(&format!("ams1.{s}")) == Some(1)),
        "both partitions have products"
    );

    let status =
        serde_json::from_str::<Value>(stack.ok(&["status", "--json"]).trim()).expect("status JSON");
    let stock = &status["projectors"]["stock"];
    assert_eq!(stock["partitions"], 2, "{stock}");
    assert_eq!(stock["checkpoint"], 12, "{stock}");
    assert_eq!(stock["by_partition"][1]["checkpoint"], 12, "{stock}");

    // A forged value and a ghost key: rebuild reaches both partitions.
    let js = jetstream::new(client.clone());
    let kv = js.get_key_value("stock").await.expect("bucket");
    let mut forged: Value =
        serde_json::from_slice(&kv.get("ams1.p3").await.unwrap().unwrap()).unwrap();
    forged["on_hand"] = json!(999);
    kv.put("ams1.p3", forged.to_string().into()).await.unwrap();
    kv.put("ams1.ghost", r#"{"warehouse":"ams1","sku":"ghost","on_hand":1,"locations":{"A1":1},"last_seq":1,"updated_ms":0}"#.into()).await.unwrap();
    assert_eq!(code(&stack.run(&["verify"])), Some(3));
    let out = stack.ok(&["rebuild", "stock"]);
    assert!(
        out.contains(
            "rebuilt the stock view in 2 partitions: 12 events replayed, 1 keys written, 1 deleted"
        ),
        "{out}"
    );
    let clean = stack.ok(&["verify"]);
    assert!(
        clean.contains("the lowest of 2 partitions") && clean.contains("no differences"),
        "{clean}"
    );

    // A partition without an instance fails the health check.
    p1.cancel();
    t1.await.expect("partition 1 stops");
    let out = stack.run(&["status", "--check"]);
    assert_eq!(code(&out), Some(1));
    assert!(
        stderr(&out).contains("no active instance of stock-projector for partition 1 of 2"),
        "{}",
        stderr(&out)
    );
    p0.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_with_no_projector_running_says_so() {
    let stack = Stack::start();
    let out = stack.run(&["rebuild", "stock"]);
    assert_eq!(code(&out), Some(1));
    assert!(
        stderr(&out).contains("no stock-projector is running"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn velocity_lists_the_fastest_first_and_stock_shows_days_of_cover() {
    let stack = Stack::start();
    let client = stack.server.client().await;
    let (stop, _projector) = stack.spawn_projector(client.clone());
    stack.spawn_velocity_projector(client, 1.0, stop.clone());
    let now = chrono::Utc::now().timestamp_millis();
    let ago = |hours: i64| (now - hours * 3_600_000).to_string();
    let mut file = String::new();
    file.push_str(&json!({"type":"stock.received","warehouse":"ams1","sku":"apple","location":"A1","quantity":30}).to_string());
    file.push('\n');
    file.push_str(&json!({"type":"stock.received","warehouse":"ams1","sku":"pear","location":"A1","quantity":30}).to_string());
    file.push('\n');
    // apple: 20 sold on each of the last 7 days; pear: 1 sold two days ago.
    for day in 0..7 {
        let at: i64 = ago(day * 24 + 2).parse().unwrap();
        file.push_str(&json!({"type":"stock.sold","warehouse":"ams1","sku":"apple","location":"A1","quantity":20,"timestamp_ms":at}).to_string());
        file.push('\n');
    }
    let at: i64 = ago(48).parse().unwrap();
    file.push_str(&json!({"type":"stock.sold","warehouse":"ams1","sku":"pear","location":"A1","quantity":1,"timestamp_ms":at}).to_string());
    file.push('\n');
    stack.ok_with_input(&["publish", "--file", "-", "--wait"], &file);
    stockwire::testing::wait_until("the velocity view", Duration::from_secs(30), || async {
        stack.ok(&["velocity", "--json"]).lines().count() == 2
    })
    .await;
    let rows: Vec<Value> = stack
        .ok(&["velocity", "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(rows[0]["sku"], "apple", "fastest first");
    assert_eq!(
        (
            rows[0]["sold_last_day"].as_u64(),
            rows[0]["sold_last_week"].as_u64()
        ),
        (Some(20), Some(140))
    );
    assert_eq!(rows[0]["units_per_day"], 20.0);
    assert!(rows[0].get("hours").is_none(), "working state is not shown");
    assert_eq!(
        (
            rows[1]["sold_last_day"].as_u64(),
            rows[1]["sold_last_week"].as_u64()
        ),
        (Some(0), Some(1))
    );
    let table = stack.ok(&["stock", "-w", "ams1"]);
    assert!(table.contains("days of cover"), "{table}");
    // apple: -110 on hand (the import is unchecked) -> 0.0 days; pear: 29 / (1/7) = 203 days.
    assert!(table.contains("203.0"), "{table}");
    stop.cancel();
}
