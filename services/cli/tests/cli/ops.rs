//! Operating Stockwire through the CLI: `status` (and `--check` as a health check) and
//! `deadletter list | show | replay | purge`, with dead letters made for real by
//! stock-projector running in this process.

use std::time::Duration;

use stockwire::domain::{Event, Location, Quantity, Sku, WarehouseId};
use stockwire::envelope::{Envelope, EventMeta, Outbound};
use stockwire::testing::wait_until;
use stockwire::view;

use super::*;

const WAIT: Duration = Duration::from_secs(30);

/// `stockwire status --json`, parsed.
fn status_json(stack: &Stack) -> Value {
    serde_json::from_str(stack.ok(&["status", "--json"]).trim()).expect("status JSON")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn dead_letter_count(js: &jetstream::Context) -> u64 {
    let mut stream = js
        .get_stream(subjects::DEADLETTER_STREAM)
        .await
        .expect("DEADLETTER");
    stream.info().await.expect("stream info").state.messages
}

async fn stock_checkpoint(js: &jetstream::Context) -> u64 {
    view::read_checkpoint(&js.client(), subjects::STOCK_BUCKET)
        .await
        .expect("checkpoint")
}

/// An event of record with every standard header (and one of the producer's own), whose
/// payload is then replaced by `payload`.
fn event_with_payload(payload: &str) -> Outbound {
    let event = Event::Received {
        warehouse: WarehouseId::parse("ams1").expect("warehouse"),
        sku: Sku::parse("apple").expect("sku"),
        location: Location::parse("A1").expect("location"),
        quantity: Quantity::new(1).expect("quantity"),
    };
    let mut out = Envelope::default().encode(
        &event,
        &EventMeta {
            msg_id: "poison-1".into(),
            timestamp_ms: 1_795_176_000_000,
        },
    );
    out.headers.insert("x-trace", "t-1");
    out.payload = payload.to_string().into();
    out
}

async fn publish_raw(js: &jetstream::Context, out: &Outbound) -> u64 {
    js.publish_with_headers(
        out.subject.clone(),
        out.headers.clone(),
        out.payload.clone(),
    )
    .await
    .expect("publish")
    .await
    .expect("ack")
    .sequence
}

fn header_of<'a>(msg: &'a StoredMessage, name: &str) -> Option<&'a str> {
    msg.headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.as_str())
}

/// What `status --check` says when no service runs.
fn no_services() -> Vec<String> {
    stockwire::instance::SERVICES
        .iter()
        .map(|s| format!("no instance of {s} is running"))
        .collect()
}

fn receive(stack: &Stack, sku: &str, quantity: &str) {
    stack.ok(&[
        "publish", "received", "-w", "ams1", "-s", sku, "-l", "A1", "-q", quantity,
    ]);
}

#[tokio::test]
async fn status_on_a_fresh_setup_is_healthy() {
    let stack = Stack::start();
    let status = status_json(&stack);
    for stream in ["INVENTORY", "ALERTS", "DEADLETTER"] {
        assert_eq!(status["streams"][stream]["messages"], 0, "{status}");
        assert_eq!(status["streams"][stream]["last_seq"], 0, "{status}");
    }
    for bucket in ["stock", "sales_velocity", "thresholds"] {
        assert_eq!(status["buckets"][bucket]["keys"], 0, "{status}");
    }
    for view in ["stock", "sales_velocity"] {
        assert_eq!(status["projectors"][view]["checkpoint"], 0, "{status}");
        assert_eq!(status["projectors"][view]["lag"], 0, "{status}");
    }
    assert_eq!(status["dead_letters"], 0);
    // The only problem: no service runs here.
    assert_eq!(status["instances"], json!([]));
    assert_eq!(status["problems"], json!(no_services()));

    let table = stack.ok(&["status"]);
    for shown in [
        "INVENTORY",
        "ALERTS",
        "DEADLETTER",
        "sales_velocity",
        "thresholds",
        "dead letters: 0",
    ] {
        assert!(table.contains(shown), "{shown} not in:\n{table}");
    }
    assert!(!table.contains("missing"), "{table}");
    assert!(table.contains("instances: none running"), "{table}");
    let out = stack.run(&["status", "--check"]);
    assert_eq!(code(&out), Some(1));
    assert_eq!(
        stderr(&out).trim(),
        format!(
            "stockwire: status check failed: {}",
            no_services().join("; ")
        )
    );

    // A deleted key is not counted; a set one is.
    let thresholds = stack
        .js()
        .await
        .get_key_value(subjects::THRESHOLDS_BUCKET)
        .await
        .expect("thresholds bucket");
    let value = json!({"low_stock_below": 5, "stockout_days": 2}).to_string();
    for key in [subjects::DEFAULT_THRESHOLD_KEY, "ams1.apple"] {
        thresholds
            .put(key, value.clone().into())
            .await
            .expect("put threshold");
    }
    thresholds.delete("ams1.apple").await.expect("delete");
    assert_eq!(status_json(&stack)["buckets"]["thresholds"]["keys"], 1);
}

#[tokio::test]
async fn status_check_fails_while_a_view_lags() {
    let stack = Stack::start();
    receive(&stack, "apple", "5");
    receive(&stack, "pear", "5");
    receive(&stack, "apple", "2");
    stack.ok(&[
        "publish", "sold", "-w", "ams1", "-s", "apple", "-l", "A1", "-q", "1",
    ]);

    // No projector runs: every event is still to be applied.
    let status = status_json(&stack);
    assert_eq!(status["streams"]["INVENTORY"]["messages"], 4);
    assert_eq!(status["streams"]["INVENTORY"]["first_seq"], 1);
    assert_eq!(status["streams"]["INVENTORY"]["last_seq"], 4);
    assert_eq!(status["projectors"]["stock"]["lag"], 4, "{status}");
    assert_eq!(
        status["projectors"]["sales_velocity"]["lag"], 1,
        "the velocity view reads sales only: {status}"
    );

    let out = stack.run(&["status", "--check", "--max-lag", "0"]);
    assert_eq!(code(&out), Some(1));
    let why = stderr(&out);
    assert!(why.contains("view stock lags by 4 events"), "{why}");
    assert!(why.contains("view sales_velocity lags by 1 event"), "{why}");
    assert!(
        stdout(&out).contains("dead letters: 0"),
        "the status is printed too"
    );

    let out = stack.run(&["status", "--check", "--max-lag", "3"]);
    assert_eq!(code(&out), Some(1));
    assert!(stderr(&out).contains("view stock lags by 4 events"));
    assert!(!stderr(&out).contains("sales_velocity"), "{}", stderr(&out));

    let out = stack.run(&["status", "--check", "--max-lag", "4"]);
    assert!(!stderr(&out).contains("lags"), "{}", stderr(&out));
    // Without --check, a lag is shown but is not a failure.
    let out = stack.run(&["status", "--max-lag", "0"]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("view stock lags by 4 events"));
}

/// The CLI against a server on which `stockwire setup` never ran.
fn run_without_setup(server: &NatsServer, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stockwire"))
        .args(args)
        .env("NATS_URL", server.url())
        .env_remove("NATS_USER")
        .env_remove("NATS_PASSWORD")
        .env_remove("NATS_CREDS")
        .output()
        .expect("run stockwire")
}

#[tokio::test]
async fn status_before_setup_says_to_run_setup() {
    let server = NatsServer::start().expect("nats-server");
    let out = run_without_setup(&server, &["status"]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("missing (run `stockwire setup`)"),
        "{}",
        stdout(&out)
    );
    let out = run_without_setup(&server, &["status", "--json"]);
    let status: Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert_eq!(status["streams"]["INVENTORY"], Value::Null);
    assert_eq!(status["buckets"]["stock"], Value::Null);
    assert_eq!(status["projectors"]["stock"], Value::Null);
    assert_eq!(status["dead_letters"], Value::Null);

    let out = run_without_setup(&server, &["status", "--check"]);
    assert_eq!(code(&out), Some(1));
    assert!(
        stderr(&out).contains("stream INVENTORY is missing (run `stockwire setup`)"),
        "{}",
        stderr(&out)
    );
    let out = run_without_setup(&server, &["deadletter", "list"]);
    assert_eq!(code(&out), Some(1));
    assert!(stderr(&out).contains("stockwire setup"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_is_listed_shown_replayed_and_purged() {
    let stack = Stack::start();
    let js = stack.js().await;
    let (stop, projector) = stack.spawn_projector(stack.server.client().await);
    assert_eq!(stack.ok(&["deadletter", "list"]).trim(), "no dead letters");

    receive(&stack, "apple", "4");
    let bad = r#"{"warehouse": "ams1", oops"#;
    let poison = event_with_payload(bad);
    let poison_seq = publish_raw(&js, &poison).await;
    assert_eq!(poison_seq, 2);
    wait_until("the poison in the dead letters", WAIT, || async {
        dead_letter_count(&js).await == 1
    })
    .await;
    wait_until("the projector past the poison", WAIT, || async {
        stock_checkpoint(&js).await >= poison_seq
    })
    .await;

    let listed: Vec<Value> = stack
        .ok(&["deadletter", "list", "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(listed.len(), 1);
    let letter = &listed[0];
    assert_eq!(letter["seq"], 1);
    assert_eq!(letter["view"], "stock");
    assert_eq!(
        letter["source_subject"],
        "warehouse.ams1.product.apple.received"
    );
    assert_eq!(letter["source_seq"], 2);
    assert_eq!(letter["reason"], "bad_json");
    assert_eq!(letter["truncated"], false);
    assert!(
        letter["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("payload is not a JSON object")),
        "{letter}"
    );
    let table = stack.ok(&["deadletter", "list"]);
    for shown in [
        "bad_json",
        "warehouse.ams1.product.apple.received #2",
        "stock",
    ] {
        assert!(table.contains(shown), "{shown} not in:\n{table}");
    }

    let shown = stack.ok(&["deadletter", "show", "1"]);
    assert!(
        shown.lines().any(|l| l == bad),
        "payload not shown:\n{shown}"
    );
    for line in [
        "  Stockwire-Reason: bad_json",
        "  Stockwire-Source-Sequence: 2",
        "  myorg_msg_id: poison-1",
        "  x-trace: t-1",
    ] {
        assert!(shown.lines().any(|l| l == line), "{line} not in:\n{shown}");
    }
    let shown: Value =
        serde_json::from_str(stack.ok(&["deadletter", "show", "1", "--json"]).trim())
            .expect("show JSON");
    assert_eq!(shown["payload"], bad);
    assert_eq!(shown["headers"]["Stockwire-View"], "stock");
    let out = stack.run(&["deadletter", "show", "99"]);
    assert_eq!(code(&out), Some(2));
    assert!(
        stderr(&out).contains("no dead letter #99"),
        "{}",
        stderr(&out)
    );

    // The stock view is up to date; the dead letter alone fails the health check.
    let status = status_json(&stack);
    assert_eq!(status["projectors"]["stock"]["lag"], 0, "{status}");
    assert_eq!(
        status["buckets"]["stock"]["keys"], 1,
        "_checkpoint is not a key"
    );
    assert_eq!(status["dead_letters"], 1);
    let out = stack.run(&["status", "--check"]);
    assert_eq!(code(&out), Some(1));
    assert!(
        stderr(&out).contains("1 dead letter (see `stockwire deadletter list`)"),
        "{}",
        stderr(&out)
    );

    let out = stack.run(&["deadletter", "replay", "1"]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let said = stdout(&out);
    assert!(
        said.contains("to warehouse.ams1.product.apple.received as #3") && said.contains("kept"),
        "{said}"
    );
    assert!(
        stderr(&out).contains("still does not decode"),
        "{}",
        stderr(&out)
    );
    let events = stack.events().await;
    assert_eq!(events.len(), 3);
    let (original, replayed) = (&events[1], &events[2]);
    assert_eq!(replayed.subject, poison.subject);
    assert_eq!(replayed.payload, poison.payload);
    for name in [
        "myorg_format",
        "myorg_type",
        "myorg_msg_id",
        "myorg_timestamp_ms",
        "myorg_version",
        "x-trace",
    ] {
        assert_eq!(
            header_of(replayed, name),
            header_of(original, name),
            "{name}"
        );
    }
    let fresh_id = header_of(replayed, subjects::NATS_MSG_ID).expect("Nats-Msg-Id");
    assert_ne!(Some(fresh_id), header_of(original, subjects::NATS_MSG_ID));
    for name in [
        subjects::DEADLETTER_REASON,
        subjects::DEADLETTER_VIEW,
        subjects::DEADLETTER_SOURCE_SUBJECT,
        subjects::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
    ] {
        assert_eq!(header_of(replayed, name), None, "{name} carried over");
    }

    // Still bad JSON: the projector dead-letters the replay too, and the first is kept.
    wait_until("the replay in the dead letters", WAIT, || async {
        dead_letter_count(&js).await == 2
    })
    .await;
    wait_until("the projector past the replay", WAIT, || async {
        stock_checkpoint(&js).await >= 3
    })
    .await;
    let listed = stack.ok(&["deadletter", "list"]);
    assert!(
        listed.contains("#2") && listed.contains("#3"),
        "both letters listed:\n{listed}"
    );

    assert_eq!(
        stack.ok(&["deadletter", "purge"]).trim(),
        "removed 2 dead letters"
    );
    assert_eq!(stack.ok(&["deadletter", "list"]).trim(), "no dead letters");
    assert_eq!(dead_letter_count(&js).await, 0);
    // Only the projector runs here: the check fails for the other services alone.
    let out = stack.run(&["status", "--check"]);
    assert!(!stderr(&out).contains("dead letter"), "{}", stderr(&out));
    assert_eq!(status_json(&stack)["dead_letters"], 0);

    stop.cancel();
    projector.await.expect("projector task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_dead_letter_cannot_be_replayed() {
    let stack = Stack::start();
    let js = stack.js().await;
    let (stop, projector) = stack.spawn_projector(stack.server.client().await);
    let huge = format!("{{{}", "x".repeat(60_000));
    let poison = event_with_payload(&huge);
    assert_eq!(publish_raw(&js, &poison).await, 1);
    wait_until("the poison in the dead letters", WAIT, || async {
        dead_letter_count(&js).await == 1
    })
    .await;

    let listed: Value = serde_json::from_str(stack.ok(&["deadletter", "list", "--json"]).trim())
        .expect("list JSON");
    assert_eq!(listed["truncated"], true);
    let shown = stack.ok(&["deadletter", "show", "1"]);
    assert!(
        shown.contains("payload (first 57344 of 60001 bytes):"),
        "{}",
        &shown[..shown.len().min(2000)]
    );

    let out = stack.run(&["deadletter", "replay", "1"]);
    assert_eq!(code(&out), Some(2));
    let why = stderr(&out);
    assert!(
        why.contains("dead letter #1 cannot be replayed")
            && why.contains("still in INVENTORY (#1)"),
        "{why}"
    );
    assert_eq!(stack.events().await.len(), 1, "nothing was replayed");

    for (args, message) in [
        (vec!["deadletter", "replay", "7"], "no dead letter #7"),
        (vec!["deadletter", "show", "0"], "invalid value"),
        (vec!["deadletter", "show", "one"], "invalid value"),
    ] {
        let out = stack.run(&args);
        assert_eq!(code(&out), Some(2), "{args:?}");
        assert!(stderr(&out).contains(message), "{args:?}: {}", stderr(&out));
    }

    stop.cancel();
    projector.await.expect("projector task");
}
