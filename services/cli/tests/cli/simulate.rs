//! `stockwire simulate` against a real server, with stock-projector and
//! low-stock-watcher in this process: two days of backfill and half a simulated day live,
//! in a few seconds.

use std::collections::HashMap;
use std::time::Duration;

use super::*;

fn run_simulation(stack: &Stack, seed: &str) -> Value {
    let out = stack.ok(&[
        "simulate",
        "--backfill-days",
        "2",
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
async fn backfill_then_half_a_day_live_never_oversells_and_the_summary_matches_the_log() {
    let stack = Stack::start();
    let client = stack.server.client().await;
    let (stop, _projector) = stack.spawn_projector(client.clone());
    stack.spawn_low_stock_watcher(client, stop.clone());

    let summary = run_simulation(&stack, "5");
    let count = |field: &str| summary[field].as_u64().unwrap_or(u64::MAX);
    let backfilled = count("backfilled") as usize;
    let live_from = count("live_from_ms") as i64;
    let timestamp = |e: &stockwire::read::StoredMessage| {
        e.headers
            .as_ref()
            .and_then(|h| h.get("myorg_timestamp_ms"))
            .and_then(|t| t.as_str().parse::<i64>().ok())
            .unwrap_or(i64::MAX)
    };

    // The log holds what the summary says, every event the simulator's.
    let events = stack.events().await;
    let mut by_type: HashMap<String, u64> = HashMap::new();
    let mut on_hand: HashMap<(String, String), HashMap<String, i64>> = HashMap::new();
    let mut low_since: HashMap<(String, String), i64> = HashMap::new();
    for e in &events {
        let headers = e.headers.as_ref().expect("headers");
        let kind = headers.get("myorg_type").expect("a type").to_string();
        let msg_id = headers.get("myorg_msg_id").expect("a msg id").to_string();
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
        let location = payload["location"].as_str().unwrap_or("A1").to_string();
        let at =
            |stock: &mut HashMap<String, i64>, l: &str| *stock.entry(l.to_string()).or_default();
        match kind.as_str() {
            "stock.received" | "stock.transferred_in" => {
                *stock.entry(location).or_default() += quantity
            }
            "stock.sold" | "stock.destroyed" | "stock.transferred_out" => {
                *stock.entry(location).or_default() -= quantity
            }
            "stock.moved" => {
                let (from, to) = (payload["from"].as_str(), payload["to"].as_str());
                assert_eq!((from, to), (Some("DOCK"), Some("A1")), "a put-away");
                *stock.entry("DOCK".into()).or_default() -= quantity;
                *stock.entry("A1".into()).or_default() += quantity;
            }
            "stock.corrected" => {
                // A count finds what was there, or a unit or two less (or more).
                let drift = quantity - at(stock, &location);
                assert!((-2..=1).contains(&drift), "a count drifted by {drift}");
                stock.insert(location, quantity);
            }
            other => panic!("the simulator wrote {other}"),
        }
        // When it fell below the default threshold, and whether stock came since.
        if matches!(kind.as_str(), "stock.received" | "stock.transferred_in") {
            low_since.remove(&product);
        } else if stock.values().sum::<i64>() < 10 {
            low_since.entry(product.clone()).or_insert(timestamp(e));
        }
        // Every sale, move and breakage went through the checked path (or the books):
        // never below zero anywhere, in log order.
        assert!(
            stock.values().all(|units| *units >= 0),
            "{product:?} below zero at #{}: {stock:?}",
            e.sequence
        );
        if e.sequence as usize <= backfilled {
            assert!(timestamp(e) < live_from, "#{} is backfill", e.sequence);
        }
    }
    // Every product that went low got stock again (by an order or a transfer) within
    // the longest lead time, unless the simulator discontinued it.
    let discontinued: Vec<String> = stack
        .ok(&["threshold", "list", "--json"])
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("a threshold"))
        .filter(|t| t["low_stock_below"] == 0)
        .map(|t| t["key"].as_str().unwrap_or_default().to_string())
        .collect();
    let replenished_by = count("to_ms") as i64 - 6 * 3_600_000;
    for ((w, s), since) in &low_since {
        assert!(
            *since > replenished_by || discontinued.contains(&format!("{w}.{s}")),
            "{w}/{s} went low at {since} and got nothing until {}",
            count("to_ms")
        );
    }
    let of = |t: &str| by_type.get(t).copied().unwrap_or(0);
    assert_eq!(count("events"), events.len() as u64, "{summary}");
    assert_eq!(count("sales"), of("stock.sold"), "{summary}");
    assert_eq!(count("received"), of("stock.received"), "{summary}");
    assert_eq!(count("moves"), of("stock.moved"), "{summary}");
    assert_eq!(count("counts"), of("stock.corrected"), "{summary}");
    assert_eq!(count("destroyed"), of("stock.destroyed"), "{summary}");
    assert_eq!(count("transfers"), of("stock.transferred_out"), "{summary}");
    assert_eq!(count("transfers"), of("stock.transferred_in"), "{summary}");
    assert_eq!(count("failed"), 0, "{summary}");
    // 16 products got their first stock; low stock brought orders, which arrived at the
    // dock and were put on the shelf; the staff counted shelves.
    assert!(count("orders") > 0, "{summary}");
    assert!(count("received") > 16, "replenishment arrived: {summary}");
    assert!(count("moves") > 0, "{summary}");
    assert!(count("counts") > 0, "{summary}");
    assert!(count("sales") > 500, "{summary}");
    assert!(count("backfilled") > 500, "{summary}");
    // It kept up: hardly a customer waited a second of wall clock past the planned time
    // (the other tests of this binary share the two cores meanwhile).
    assert!(
        count("late_over_1s") * 20 <= count("live_attempts"),
        "{summary}"
    );
    assert!(count("live_attempts") > 0 && count("live_attempts") < count("attempts"));
    // Every customer who came was served or counted as a lost sale.
    assert_eq!(
        count("attempts"),
        count("sales") + count("lost_sales"),
        "{summary}"
    );
    // Simulated time ends at the clock: two days of backfill, then 12 hours live (6 s at
    // 7,200 times).
    assert_eq!(count("live_from_ms") - count("from_ms"), 48 * 3_600_000);
    let live = count("to_ms") - count("live_from_ms");
    assert!(
        (12 * 3_600_000..=13 * 3_600_000).contains(&live),
        "{live} ms simulated live"
    );
    // Live alerts fired for live stock, and the live run acted on them or the books did.
    let alerts = stack.ok(&["alerts", "--json"]);
    assert!(
        alerts.contains("stock.low"),
        "the watcher saw low stock: {alerts}"
    );

    stockwire::testing::wait_until("the view caught up", Duration::from_secs(30), || async {
        stack.run(&["verify"]).status.success()
    })
    .await;

    // A restart reads the view: every product below its threshold (and not at the dock,
    // not discontinued) gets units again, by an order or a transfer.
    let low = stack
        .ok(&["stock", "--json"])
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("a stock row"))
        .filter(|v| v["on_hand"].as_i64().unwrap_or(0) < 10 && v["locations"].get("DOCK").is_none())
        .count() as u64;
    let out = stack.ok(&[
        "simulate",
        "--warehouses",
        "2",
        "--skus",
        "8",
        "--rate",
        "1",
        "--speed",
        "2",
        "--duration-s",
        "0.5",
        "--allow-existing",
        "--json",
    ]);
    let again: Value = serde_json::from_str(out.lines().last().unwrap_or_default()).expect("JSON");
    let restocked =
        again["orders"].as_u64().unwrap_or(0) + again["transfers"].as_u64().unwrap_or(0);
    assert!(
        restocked + count("discontinued") >= low,
        "{low} low, restocked: {again}"
    );
    let events = stack.events().await;

    // A backfill makes up history for warehouses that have none: refused for these.
    let out = stack.run(&["simulate", "--backfill-days", "1", "--allow-existing"]);
    assert_eq!(code(&out), Some(2));
    assert!(
        stderr(&out).contains("ams1 already has events"),
        "{}",
        stderr(&out)
    );

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
