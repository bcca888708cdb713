//! The users of nats.conf: each role can do its job, and is refused what is not its job,
//! quickly and with the server's reason.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use stockwire::connect::{connect, ConnectArgs, Startup};
use stockwire::subjects;
use stockwire::testing::{wait_until, NatsServer};
use tokio_util::sync::CancellationToken;

use super::{code, stderr, Stack};

pub(super) use stockwire::testing::{repo_passwords, test_password as password};

/// Settings for `user`, with a short request timeout so that a refusal is quick.
pub(super) fn connect_as(server: &NatsServer, user: &str) -> ConnectArgs {
    ConnectArgs {
        request_timeout_ms: 2000,
        ..server.connect_args().as_user(user, &password(user))
    }
}

async fn client_as(server: &NatsServer, user: &str) -> async_nats::Client {
    connect(&connect_as(server, user), user, Startup::FailFast)
        .await
        .unwrap_or_else(|e| panic!("connect as {user}: {e}"))
}

/// The four services in this process, each as its own user, until the token is cancelled.
async fn start_services(stack: &Stack) -> CancellationToken {
    let stop = CancellationToken::new();
    let server = &stack.server;
    let args = |user: &str| {
        let c = connect_as(server, user);
        vec![
            user.to_string(),
            "--nats-url".into(),
            c.nats_url,
            "--user".into(),
            user.into(),
            "--password".into(),
            password(user),
        ]
    };
    let (projector, _) = stack.spawn_projector(client_as(server, "stock-projector").await);
    let token = stop.clone();
    tokio::spawn(async move {
        token.cancelled().await;
        projector.cancel();
    });

    let config = <low_stock_watcher::Config as clap::Parser>::parse_from(args("low-stock-watcher"));
    let client = client_as(server, "low-stock-watcher").await;
    let token = stop.clone();
    tokio::spawn(async move {
        if let Err(e) = low_stock_watcher::run(client, &config, token).await {
            panic!("low-stock-watcher failed: {e:#}");
        }
    });

    stack.spawn_velocity_projector(
        client_as(server, "velocity-projector").await,
        1.0,
        stop.clone(),
    );

    let config = <velocity_watcher::Config as clap::Parser>::parse_from(args("velocity-watcher"));
    let client = client_as(server, "velocity-watcher").await;
    let token = stop.clone();
    tokio::spawn(async move {
        if let Err(e) = velocity_watcher::run(client, &config, token).await {
            panic!("velocity-watcher failed: {e:#}");
        }
    });
    stop
}

fn alerts_of(stack: &Stack, kind: &str) -> Vec<serde_json::Value> {
    let out = stack.ok(&["alerts", "--json"]);
    out.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("alert JSON"))
        .filter(|a| a["type"] == kind)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_does_its_job_under_nats_conf() {
    let mut stack = Stack::secured();
    let stop = start_services(&stack).await;

    stack.ok(&[
        "threshold",
        "set",
        "-w",
        "ams1",
        "-s",
        "apple",
        "--low-stock-below",
        "10",
    ]);
    let product = ["-w", "ams1", "-s", "apple", "-l", "A1"];
    stack.ok(&[
        &["publish", "received"][..],
        &product,
        &["-q", "12", "--wait"],
    ]
    .concat());
    stack.ok(&[&["publish", "sold"][..], &product, &["-q", "5", "--wait"]].concat());

    let stock: serde_json::Value = serde_json::from_str(
        stack
            .ok(&["stock", "-w", "ams1", "-s", "apple", "--json"])
            .trim(),
    )
    .expect("stock JSON");
    assert_eq!(stock["on_hand"], 7, "{stock}");
    wait_until("the low-stock alert", Duration::from_secs(20), || async {
        alerts_of(&stack, "stock.low").len() == 1
    })
    .await;
    wait_until("a velocity band", Duration::from_secs(20), || async {
        !alerts_of(&stack, "sales.velocity").is_empty()
    })
    .await;
    let velocity = stack.ok(&["velocity", "-w", "ams1", "--json"]);
    assert!(velocity.contains("\"sold_last_hour\":5"), "{velocity}");

    // What people do day to day works as cli; rebuilding is for admin.
    for args in [
        &["status"][..],
        &["history", "-w", "ams1", "-s", "apple"],
        &["verify"],
        &["deadletter", "list"],
        &["threshold", "list"],
    ] {
        stack.ok(args);
    }
    let out = stack.run_as("admin", &["rebuild", "stock"]);
    assert!(out.status.success(), "rebuild as admin: {}", stderr(&out));

    // Every service answers the service API as its own user, and each has one instance
    // active: the health check passes.
    let status: serde_json::Value =
        serde_json::from_str(stack.ok(&["status", "--json"]).trim()).expect("status JSON");
    let instances = status["instances"].as_array().expect("instances");
    let mut active: Vec<&str> = instances
        .iter()
        .filter(|i| i["active"] == true)
        .filter_map(|i| i["service"].as_str())
        .collect();
    active.sort();
    assert_eq!(
        active,
        [
            "low-stock-watcher",
            "stock-projector",
            "transit-projector",
            "velocity-projector",
            "velocity-watcher"
        ],
        "{status}"
    );
    stack.ok(&["status", "--check"]);

    // After a server restart the services re-create their consumers and watches, which
    // asks the server for more than the first start did; they still may.
    stack.server.restart().expect("restart nats-server");
    stack.ok(&[
        &["publish", "received"][..],
        &product,
        &["-q", "20", "--wait"],
    ]
    .concat());
    wait_until("the recovery alert", Duration::from_secs(30), || async {
        alerts_of(&stack, "stock.recovered").len() == 1
    })
    .await;

    let log = stack.server.log();
    assert!(
        !log.contains("Violation"),
        "a role was refused its job:\n{log}"
    );
    stop.cancel();
}

#[tokio::test]
async fn each_role_is_refused_outside_its_job() {
    let stack = Stack::secured();
    let server = &stack.server;

    // Each of these waits for an ack that never comes: run them side by side.
    let watcher = jetstream::new(client_as(server, "low-stock-watcher").await);
    let cli = jetstream::new(client_as(server, "cli").await);
    let projector = jetstream::new(client_as(server, "stock-projector").await);
    let (event, view, alert) = tokio::join!(
        async {
            watcher
                .publish("warehouse.ams1.product.apple.sold", "{}".into())
                .await?
                .await
        },
        async {
            cli.publish(
                subjects::kv_subject(subjects::STOCK_BUCKET, "ams1.apple"),
                "{}".into(),
            )
            .await?
            .await
        },
        async { projector.publish("alerts.x", "{}".into()).await?.await },
    );
    assert!(
        event.is_err(),
        "low-stock-watcher published an event of record"
    );
    assert!(view.is_err(), "cli wrote to the stock view");
    assert!(alert.is_err(), "stock-projector published an alert");

    for (user, subject) in [
        ("low-stock-watcher", "warehouse.ams1.product.apple.sold"),
        ("cli", "$KV.stock.ams1.apple"),
        ("stock-projector", "alerts.x"),
    ] {
        let said = format!("user:{user}\" - Publish Violation - Subject \"{subject}\"");
        wait_until(&said, Duration::from_secs(5), || async {
            server.log().contains(&said)
        })
        .await;
    }
    let admin = jetstream::new(client_as(server, "admin").await);
    for stream in [subjects::INVENTORY_STREAM, subjects::ALERTS_STREAM] {
        let mut stream = admin.get_stream(stream).await.expect("stream");
        let info = stream.info().await.expect("stream info");
        assert_eq!(
            info.state.messages, 0,
            "{} took a refused message",
            info.config.name
        );
    }
    let kv = admin
        .get_key_value(subjects::STOCK_BUCKET)
        .await
        .expect("stock bucket");
    assert_eq!(kv.get("ams1.apple").await.expect("get"), None);

    // The CLI says what the server refused, at once rather than after its request timeout.
    let started = Instant::now();
    let out = stack.run(&["rebuild", "stock"]);
    assert_eq!(code(&out), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(
            "the NATS server refused stockwire-cli (user cli): \
             Permissions Violation for Publish to \"stockwire.rebuild.stock\""
        ),
        "{}",
        stderr(&out)
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_wrong_password_fails_at_once_with_the_reason() {
    let stack = Stack::secured();
    let started = Instant::now();
    let out = stack.command(&["stock"], None, None);
    // No user at all on a server that requires one.
    assert_eq!(code(&out), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("authorization violation"),
        "{}",
        stderr(&out)
    );

    let mut wrong = connect_as(&stack.server, "cli");
    wrong.password = Some("not-the-password".into());
    // A service keeps trying while the server is not there, but not when it refuses.
    let error = connect(&wrong, "stock-projector", Startup::Retry)
        .await
        .expect_err("connected with a wrong password");
    let error = error.to_string();
    assert!(
        error.contains("as user cli") && error.contains("authorization violation"),
        "{error}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// Runs `stockwire alerts --follow --json` as cli; its lines arrive on the channel.
fn follow_alerts(stack: &Stack) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_stockwire"))
        .args(["alerts", "--follow", "--json"])
        .env("NATS_URL", stack.server.url())
        .env("NATS_USER", "cli")
        .env("NATS_PASSWORD", password("cli"))
        .env("STOCKWIRE_REQUEST_TIMEOUT_MS", "2000")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run stockwire alerts --follow");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (child, rx)
}

/// Stores one low-stock alert as admin (as a watcher would), expecting nothing of the subject.
async fn announce_as_admin(server: &NatsServer, sku: &str) {
    let js = jetstream::new(client_as(server, "admin").await);
    let meta = stockwire::envelope::EventMeta {
        msg_id: format!("test-alert-{sku}"),
        timestamp_ms: chrono::Utc::now().timestamp_millis(),
    };
    let headers = stockwire::envelope::Envelope::default().headers("stock.low", &meta);
    let payload = format!(r#"{{"warehouse":"ams1","sku":"{sku}","on_hand":1,"threshold":10}}"#);
    let warehouse = stockwire::domain::WarehouseId::parse("ams1").expect("warehouse");
    let sku = stockwire::domain::Sku::parse(sku).expect("sku");
    js.publish_with_headers(
        subjects::low_stock_alert(&warehouse, &sku),
        headers,
        payload.into(),
    )
    .await
    .expect("publish alert")
    .await
    .expect("alert stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_may_not_delete_consumers_and_still_follows_alerts_across_a_restart() {
    let mut stack = Stack::secured();
    // A service's consumer is out of cli's reach.
    let admin = jetstream::new(client_as(&stack.server, "admin").await);
    let inventory = admin
        .get_stream(subjects::INVENTORY_STREAM)
        .await
        .expect("INVENTORY");
    inventory
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("a-service".into()),
            ..Default::default()
        })
        .await
        .expect("a durable consumer");
    let cli = jetstream::new(client_as(&stack.server, "cli").await);
    assert!(
        cli.delete_consumer_from_stream("a-service", subjects::INVENTORY_STREAM)
            .await
            .is_err(),
        "cli deleted a service's consumer"
    );
    assert!(
        inventory.consumer_info("a-service").await.is_ok(),
        "the consumer is gone"
    );

    // `alerts --follow` goes on across a server restart, although async-nats's attempt to
    // delete its old ordered consumer is refused.
    let (mut child, lines) = follow_alerts(&stack);
    announce_as_admin(&stack.server, "apple").await;
    let first = lines
        .recv_timeout(Duration::from_secs(15))
        .expect("the first alert followed");
    assert!(first.contains("\"sku\":\"apple\""), "{first}");
    stack.server.restart().expect("restart nats-server");
    announce_as_admin(&stack.server, "pear").await;
    let second = lines
        .recv_timeout(Duration::from_secs(30))
        .expect("an alert stored after the restart followed");
    assert!(second.contains("\"sku\":\"pear\""), "{second}");
    assert!(
        child.try_wait().expect("child status").is_none(),
        "alerts --follow stopped"
    );
    child.kill().expect("stop alerts --follow");
    let _ = child.wait();
}
