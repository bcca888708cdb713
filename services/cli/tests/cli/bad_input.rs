//! The bad-input matrix: each kind of bad input, what the CLI says about it (exit 2, the
//! field, nothing published), and what the projectors do when it is published raw (a dead
//! letter with the reason, and the events after it still applied).

use std::time::Duration;

use async_nats::HeaderMap;
use stockwire::domain::{Event, Location, Quantity, Sku, WarehouseId};
use stockwire::envelope::{Envelope, EventMeta, Outbound};
use stockwire::read::Reader;
use stockwire::testing::wait_until;

use super::*;

const DAY_MS: i64 = 86_400_000;

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[tokio::test]
async fn the_cli_refuses_each_bad_line_with_exit_2_and_publishes_nothing() {
    let stack = Stack::start();
    let sold = |extra: Value| {
        let mut line = json!({"type":"stock.sold","warehouse":"ams1","sku":"apple","location":"A1","quantity":1});
        for (k, v) in extra.as_object().expect("object") {
            line[k] = v.clone();
        }
        line.to_string()
    };
    let huge_reason = "x".repeat(70_000);
    let tomorrow = now_ms() + DAY_MS;
    // The CLI writes the headers and the subject itself, so those rows of the matrix
    // (missing header, unsupported version, subject/payload disagreement) cannot come
    // from it; the services' test below covers them.
    let matrix: Vec<(&str, String, &str)> = vec![
        (
            "bad JSON",
            r#"{"type":"stock.sold", oops"#.into(),
            "line 1: not valid JSON",
        ),
        ("empty object", "{}".into(), "line 1: type: is missing"),
        ("not an object", "[1, 2]".into(), "line 1:"),
        (
            "missing field",
            sold(json!({"sku": null})),
            "line 1: sku: is missing",
        ),
        (
            "unknown type",
            sold(json!({"type": "stock.stolen"})),
            "line 1: type: unknown event type \"stock.stolen\"",
        ),
        (
            "invalid token",
            sold(json!({"warehouse": "ams.1"})),
            "line 1: warehouse:",
        ),
        (
            "quantity 0",
            sold(json!({"quantity": 0})),
            "line 1: quantity: must be at least 1",
        ),
        (
            "negative quantity",
            sold(json!({"quantity": -3})),
            "line 1: quantity: -3 is negative",
        ),
        (
            "quantity beyond u32",
            sold(json!({"quantity": 4_294_967_296u64})),
            "line 1: quantity:",
        ),
        (
            "payload over 64 KiB",
            json!({"type":"stock.destroyed","warehouse":"ams1","sku":"apple","location":"A1",
                   "quantity":1,"reason":huge_reason})
            .to_string(),
            "line 1: reason: is 70000 characters long; at most 200 are allowed",
        ),
        (
            "event time far in the future",
            sold(json!({"timestamp_ms": tomorrow})),
            "line 1: timestamp_ms:",
        ),
    ];
    for (what, line, says) in &matrix {
        let out = stack.run_with_input(&["publish", "--file", "-"], Some(line));
        assert_eq!(code(&out), Some(2), "{what}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{what}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("nothing was published"),
            "{what}: {}",
            stderr(&out)
        );
    }
    // A header prefix that cannot name a header: refused before anything is read.
    let line = sold(json!({}));
    let out = stack.run_with_input(
        &["--header-prefix", "my:org", "publish", "--file", "-"],
        Some(&line),
    );
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(r#"--header-prefix: "my:org" is not allowed"#),
        "{}",
        stderr(&out)
    );
    assert!(stack.events().await.is_empty(), "bad input was published");
}

/// A valid `sold` of 1 apple from A1 at `at_ms`, as a producer would publish it.
fn sale(at_ms: i64, msg_id: &str) -> Outbound {
    let event = Event::Sold {
        warehouse: WarehouseId::parse("ams1").expect("warehouse"),
        sku: Sku::parse("apple").expect("sku"),
        location: Location::parse("A1").expect("location"),
        quantity: Quantity::new(1).expect("quantity"),
    };
    Envelope::default().encode(
        &event,
        &EventMeta {
            msg_id: msg_id.into(),
            timestamp_ms: at_ms,
        },
    )
}

fn without(headers: &HeaderMap, name: &str) -> HeaderMap {
    let mut kept = HeaderMap::new();
    for (k, v) in headers.iter() {
        if AsRef::<str>::as_ref(k) != name {
            for value in v {
                kept.append(k.clone(), value.clone());
            }
        }
    }
    kept
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_projectors_dead_letter_each_bad_event_and_go_on() {
    let stack = Stack::start();
    let client = stack.server.client().await;
    let js = jetstream::new(client.clone());
    let (stop, _projector) = stack.spawn_projector(client.clone());
    stack.spawn_velocity_projector(client, 60.0, stop.clone());
    let publish = |out: Outbound| {
        let js = js.clone();
        async move {
            js.publish_with_headers(out.subject, out.headers, out.payload)
                .await?
                .await
        }
    };

    stack.ok(&[
        "publish", "received", "-w", "ams1", "-s", "apple", "-l", "A1", "-q", "10",
    ]);
    let now = now_ms();
    let mut matrix: Vec<(&str, Outbound, &str)> = Vec::new();
    let mut row = |what: &'static str, reason: &'static str, change: &dyn Fn(&mut Outbound)| {
        let mut out = sale(now, &format!("bad-{}", matrix.len()));
        change(&mut out);
        matrix.push((what, out, reason));
    };
    row("bad JSON", "bad_json", &|o| {
        o.payload = "{\"warehouse\": oops".into()
    });
    row("empty payload", "bad_json", &|o| o.payload = "".into());
    for header in ["format", "type", "msg_id", "timestamp_ms", "version"] {
        let name = format!("myorg_{header}");
        row("missing header", "missing_header", &move |o| {
            o.headers = without(&o.headers, &name)
        });
    }
    row("unknown type", "unknown_type", &|o| {
        o.headers.insert("myorg_type", "stock.stolen")
    });
    row("unsupported version", "unsupported_version", &|o| {
        o.headers.insert("myorg_version", "9")
    });
    row("invalid token in the subject", "invalid_field", &|o| {
        o.subject = "warehouse.AMS!1.product.apple.sold".into();
        o.payload = r#"{"warehouse":"AMS!1","sku":"apple","location":"A1","quantity":1}"#.into();
    });
    row("payload names another SKU", "subject_mismatch", &|o| {
        o.payload = r#"{"warehouse":"ams1","sku":"pear","location":"A1","quantity":1}"#.into();
    });
    for quantity in ["0", "-1", "4294967296"] {
        let payload = format!(
            r#"{{"warehouse":"ams1","sku":"apple","location":"A1","quantity":{quantity}}}"#
        );
        row("bad quantity", "invalid_field", &move |o| {
            o.payload = payload.clone().into()
        });
    }
    row("event time a day ahead", "future_time", &|o| {
        o.headers
            .insert("myorg_timestamp_ms", (now + DAY_MS).to_string().as_str())
    });

    let mut bad_seqs = Vec::new();
    for (what, out, _) in &matrix {
        let ack = publish(out.clone())
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        bad_seqs.push(ack.sequence);
    }
    // Over the stream's 64 KiB limit: the server itself refuses it, nothing is stored.
    let mut big = sale(now, "too-big");
    big.payload = format!(r#"{{"pad":"{}"}}"#, "x".repeat(70_000)).into();
    let refused = publish(big).await.expect_err("the server stored 70 KB");
    assert!(refused.to_string().contains("maximum"), "{refused}");

    let good = publish(sale(now, "good-after"))
        .await
        .expect("good sale")
        .sequence;
    assert_eq!(
        good,
        bad_seqs.last().copied().unwrap_or(0) + 1,
        "a refused message took a sequence"
    );

    // Both projectors go on past the poison to the good sale.
    wait_until(
        "the stock view to apply the sale",
        Duration::from_secs(30),
        || async { stock_of(&stack).is_some_and(|v| v["last_seq"] == good) },
    )
    .await;
    assert_eq!(stock_of(&stack).expect("stock")["on_hand"], 9);
    wait_until(
        "the velocity view to count the sale",
        Duration::from_secs(30),
        || async {
            let out = stack.ok(&["velocity", "-w", "ams1", "--json"]);
            out.contains("\"sold_last_hour\":1")
        },
    )
    .await;

    // One dead letter per bad event and view, with the reason.
    for view in ["stock", "sales_velocity"] {
        let letters = dead_letters(&js, view).await;
        let expected: Vec<(u64, String)> = matrix
            .iter()
            .zip(&bad_seqs)
            .map(|((_, _, reason), seq)| (*seq, reason.to_string()))
            .collect();
        assert_eq!(letters, expected, "{view}: dead letters");
    }
    stop.cancel();
}

fn stock_of(stack: &Stack) -> Option<Value> {
    let out = stack.ok(&["stock", "-w", "ams1", "-s", "apple", "--json"]);
    serde_json::from_str(out.lines().next()?).ok()
}

/// (source sequence, reason) of the dead letters of `view`, in order.
async fn dead_letters(js: &jetstream::Context, view: &str) -> Vec<(u64, String)> {
    let filter = format!("deadletter.{view}.>");
    let mut reader = Reader::open(js, subjects::DEADLETTER_STREAM, &filter, 1)
        .await
        .expect("read dead letters");
    let mut found = Vec::new();
    while let Some(letter) = reader.next().await {
        let letter = letter.expect("dead letter");
        let headers = letter.headers.as_ref().expect("headers");
        let get = |name: &str| headers.get(name).map(|v| v.to_string()).unwrap_or_default();
        found.push((
            get(subjects::DEADLETTER_SOURCE_SEQUENCE)
                .parse()
                .unwrap_or(0),
            get(subjects::DEADLETTER_REASON),
        ));
    }
    found
}
