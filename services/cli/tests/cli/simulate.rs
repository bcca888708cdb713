//! `stockwire simulate` against a real server, with stock-projector and
//! low-stock-watcher in this process: half a simulated day in a few seconds.

use std::collections::HashMap;
use std::time::Duration;

use super::*;

fn run_simulation(stack: &Stack, seed: &str) -> Value {
    let out = stack.ok(&[
        "simulate",
        "--warehouses",
        "2",
        "--skus",
        "8",
        "--rate",
        "60",
        "--speed",
        "7200",
        "--duration-s",
        "6",
        "--seed",
        seed,
        "--json",
    ]);
    let last = out.lines().last().expect("a summary line");
    serde_json::from_str(last).expect("the summary as JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_half_day_never_oversells_and_its_summary_matches_the_log() {
    let stack = Stack::start();
    let client = stack.server.client().await;
    let (stop, _projector) = stack.spawn_projector(client.clone());
    stack.spawn_low_stock_watcher(client, stop.clone());

    let summary = run_simulation(&stack, "5");
    let count = |field: &str| summary[field].as_u64().unwrap_or(u64::MAX);

    // The log holds what the summary says, every event the simulator's.
    let events = stack.events().await;
    let mut by_type: HashMap<String, u64> = HashMap::new();
    let mut on_hand: HashMap<(String, String), i64> = HashMap::new();
    for e in &events {
        let headers = e.headers.as_ref().expect("headers");
        let kind = headers.get("myorg_type").expect("a type").to_string();
        let msg_id = headers.get("Nats-Msg-Id").expect("a msg id").to_string();
        assert!(msg_id.starts_with("sim-"), "{msg_id}");
        *by_type.entry(kind.clone()).or_default() += 1;
        let payload: Value = serde_json::from_slice(&e.payload).expect("payload");
        let product = (
            payload["warehouse"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            payload["sku"].as_str().unwrap_or_default().to_string(),
        );
        let quantity = payload["quantity"].as_i64().expect("a quantity");
        let stock = on_hand.entry(product.clone()).or_default();
        match kind.as_str() {
            "stock.received" => *stock += quantity,
            "stock.sold" => *stock -= quantity,
            other => panic!("the simulator wrote {other}"),
        }
        // Every sale went through the checked path: never below zero, in log order.
        assert!(*stock >= 0, "{product:?} below zero at #{}", e.sequence);
    }
    assert_eq!(count("events"), events.len() as u64, "{summary}");
    assert_eq!(count("sales"), by_type["stock.sold"], "{summary}");
    assert_eq!(count("received"), by_type["stock.received"], "{summary}");
    assert_eq!(count("failed"), 0, "{summary}");
    // 16 products got their first stock; low stock brought orders, and some arrived.
    assert!(count("orders") > 0, "{summary}");
    assert!(count("received") > 16, "replenishment arrived: {summary}");
    assert!(count("sales") > 100, "{summary}");
    // Every customer who came was served or counted as a lost sale.
    assert_eq!(
        count("attempts"),
        count("sales") + count("lost_sales"),
        "{summary}"
    );
    // Simulated time ends at the clock, and began half a day before.
    let span = count("to_ms") - count("from_ms");
    assert!(
        (10 * 3_600_000..=13 * 3_600_000).contains(&span),
        "{span} ms simulated"
    );

    stockwire::testing::wait_until("the view caught up", Duration::from_secs(30), || async {
        stack.run(&["verify"]).status.success()
    })
    .await;

    // Simulated facts are permanent: a second run into the same log needs to be asked for.
    let out = stack.run(&["simulate", "--duration-s", "1"]);
    assert_eq!(code(&out), Some(2));
    assert!(
        stderr(&out).contains("--allow-existing"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stack.events().await.len(), events.len(), "nothing written");
    stop.cancel();
}

#[test]
fn speed_above_one_needs_a_duration() {
    let stack = Stack::start();
    let out = stack.run(&["simulate", "--speed", "60"]);
    assert_eq!(code(&out), Some(2));
    assert!(stderr(&out).contains("--duration-s"), "{}", stderr(&out));
}
