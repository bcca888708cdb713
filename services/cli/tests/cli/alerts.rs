//! Thresholds and alerts through the CLI, with stock-projector and low-stock-watcher
//! running in this process.

use std::io::{BufRead, BufReader};
use std::time::Duration;

use super::*;

#[tokio::test]
async fn thresholds_are_set_merged_and_listed() {
    let stack = Stack::start();
    let none = stack.ok(&["threshold", "list"]);
    assert!(none.contains("no thresholds set"), "{none}");
    stack.ok(&["threshold", "set", "--default", "--low-stock-below", "5"]);
    stack.ok(&[
        "threshold",
        "set",
        "-w",
        "ams1",
        "-s",
        "apple",
        "--stockout-days",
        "2",
    ]);
    stack.ok(&[
        "threshold",
        "set",
        "-w",
        "ams1",
        "-s",
        "apple",
        "--low-stock-below",
        "7",
    ]);
    let rows: Vec<Value> = stack
        .ok(&["threshold", "list", "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["key"], "default");
    assert_eq!(
        (
            rows[0]["low_stock_below"].as_i64(),
            rows[0]["stockout_days"].as_f64()
        ),
        (Some(5), Some(3.0))
    );
    assert_eq!(rows[1]["key"], "ams1.apple");
    // Both values kept: the second set changed only the one it named.
    assert_eq!(
        rows[1]["set"],
        json!({"low_stock_below": 7, "stockout_days": 2.0})
    );

    for (args, says) in [
        (
            vec!["threshold", "set", "--low-stock-below", "5"],
            "give -w WAREHOUSE -s SKU, or --default",
        ),
        (vec!["threshold", "set", "--default"], "nothing to set"),
        (
            vec!["threshold", "set", "--default", "--stockout-days", "0"],
            "not a number of days",
        ),
        (
            vec!["threshold", "set", "--default", "--low-stock-below", "-1"],
            "invalid value",
        ),
        (
            vec!["threshold", "set", "-w", "ams1", "--low-stock-below", "3"],
            "--sku",
        ),
    ] {
        let out = stack.run(&args);
        assert_eq!(code(&out), Some(2), "{args:?}");
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_lists_what_the_watcher_announced_and_follows_new_ones() {
    let stack = Stack::start();
    let client = stack.server.client().await;
    let (stop, _projector) = stack.spawn_projector(client.clone());
    stack.spawn_low_stock_watcher(client, stop.clone());
    assert!(stack.ok(&["alerts"]).contains("no alerts"));
    stack.ok(&[
        "publish", "received", "-w", "ams1", "-s", "apple", "-l", "A1", "-q", "12", "--wait",
    ]);
    stack.ok(&[
        "publish", "sold", "-w", "ams1", "-s", "apple", "-l", "A1", "-q", "3", "--wait",
    ]);
    stockwire::testing::wait_until("the low-stock alert", Duration::from_secs(30), || async {
        stack.ok(&["alerts"]).contains("stock.low")
    })
    .await;
    let listed: Vec<Value> = stack
        .ok(&["alerts", "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["type"], "stock.low");
    assert_eq!(listed[0]["subject"], "alerts.low_stock.ams1.apple");
    assert_eq!(
        listed[0]["payload"],
        json!({"warehouse":"ams1","sku":"apple","on_hand":9,"threshold":10})
    );
    let text = stack.ok(&["alerts"]);
    assert!(
        text.contains("ams1/apple") && text.contains("on hand 9, threshold 10"),
        "{text}"
    );

    // --follow prints the old one, then the new one when it comes.
    let mut follower = Command::new(env!("CARGO_BIN_EXE_stockwire"))
        .args(["alerts", "--follow", "--json"])
        .env("NATS_URL", stack.server.url())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("alerts --follow");
    let stdout = follower.stdout.take().expect("stdout");
    let lines = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .take(2)
            .collect::<Vec<String>>()
    });
    stack.ok(&[
        "publish", "received", "-w", "ams1", "-s", "apple", "-l", "A1", "-q", "20", "--wait",
    ]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !lines.is_finished() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = follower.kill();
    let _ = follower.wait();
    let lines = lines.join().expect("reader");
    assert_eq!(lines.len(), 2, "{lines:?}");
    let second: Value = serde_json::from_str(&lines[1]).expect("JSON line");
    assert_eq!(second["type"], "stock.recovered");
    assert_eq!(second["payload"]["on_hand"], 29);
    stop.cancel();
}
