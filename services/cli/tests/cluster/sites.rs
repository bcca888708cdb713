//! Edge sites: a hub (the repo's nats.conf) and a site's own server (site/site.conf) as a
//! leaf node, with a relay in the leaf link that the test cuts and restores.

use std::process::Output;
use std::time::Duration;

use async_nats::jetstream;
use stockwire::connect::{connect, Startup};
use stockwire::read::Reader;
use stockwire::subjects;
use stockwire::testing::{
    repo_nats_conf, repo_passwords, repo_site_conf, test_password as password, wait_until,
    NatsServer, Relay,
};

use super::{msg_id, ONE_AT_A_TIME};

fn start(conf: &str, extra: &[(&str, String)]) -> NatsServer {
    let mut env = repo_passwords();
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    NatsServer::with_config(conf, &env).expect("nats-server")
}

fn stockwire(server: &NatsServer, user: &str, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_stockwire"))
        .env("NATS_URL", server.url())
        .env("NATS_USER", user)
        .env("NATS_PASSWORD", password(user))
        .env("STOCKWIRE_REQUEST_TIMEOUT_MS", "3000")
        .env_remove("NATS_CREDS")
        .env_remove("STOCKWIRE_HEADER_PREFIX")
        .env_remove("STOCKWIRE_SITE_OFFLINE_S")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run stockwire")
}

fn ok(server: &NatsServer, user: &str, args: &[&str]) -> String {
    let out = stockwire(server, user, args);
    assert!(
        out.status.success(),
        "stockwire {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The command fails with exit 2 and says `clue`.
fn refused(server: &NatsServer, user: &str, args: &[&str], clue: &str) {
    let out = stockwire(server, user, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stockwire {args:?}: {stderr}");
    assert!(stderr.contains(clue), "stockwire {args:?} says: {stderr}");
}

async fn js_as(server: &NatsServer, user: &str) -> jetstream::Context {
    let args = server.connect_args().as_user(user, &password(user));
    let client = connect(&args, "sites-test", Startup::FailFast)
        .await
        .expect("connect");
    jetstream::new(client)
}

/// A plain NATS client of `server` as `user`.
async fn hub_conf_client(server: &NatsServer, user: &str) -> async_nats::Client {
    let args = server.connect_args().as_user(user, &password(user));
    connect(&args, "sites-test", Startup::FailFast)
        .await
        .expect("connect")
}

/// The msg ids of `filter`'s events in `INVENTORY`, in stream order.
async fn ids(js: &jetstream::Context, filter: &str) -> Vec<String> {
    let mut reader = Reader::open(js, subjects::INVENTORY_STREAM, filter, 1)
        .await
        .expect("read INVENTORY");
    let mut ids = Vec::new();
    while let Some(msg) = reader.next().await {
        ids.extend(msg_id(&msg.expect("a message")));
    }
    ids
}

/// The stock-projector service (with its transit loop) at `server`, as its own user,
/// until `stop` is cancelled.
async fn projector(server: &NatsServer, stop: &tokio_util::sync::CancellationToken) {
    let connect = server
        .connect_args()
        .as_user("stock-projector", &password("stock-projector"));
    let client = connect_as(&connect).await;
    let config = stock_projector::Config {
        scale: Default::default(),
        connect,
        header_prefix: "myorg".into(),
        batch: 1000,
    };
    let stop = stop.clone();
    tokio::spawn(async move {
        if let Err(e) = stock_projector::run(client, &config, stop).await {
            panic!("stock-projector failed: {e:#}");
        }
    });
}

async fn connect_as(args: &stockwire::connect::ConnectArgs) -> async_nats::Client {
    connect(args, "sites-test", Startup::FailFast)
        .await
        .expect("connect")
}

fn transits(server: &NatsServer) -> Vec<serde_json::Value> {
    ok(server, "cli", &["--json", "transit", "list", "--all"])
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

fn site_list(hub: &NatsServer, offline_s: &str) -> serde_json::Value {
    let out = ok(
        hub,
        "cli",
        &["--json", "site", "list", "--site-offline-s", offline_s],
    );
    let line = out.lines().next().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("site list: {e}: {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_records_while_its_link_is_down_and_the_hub_gets_each_event_once_in_order() {
    let _one = ONE_AT_A_TIME.lock().await;
    let hub_conf = repo_nats_conf().expect("nats.conf");
    let mut hub = start(&hub_conf, &[]);
    let leaf_port = hub.leafnode_port().expect("the hub's leafnode port");
    let relay = Relay::start(leaf_port).await.expect("relay");
    let site_conf = repo_site_conf().expect("site/site.conf");
    let mut site = start(
        &site_conf,
        &[
            ("STOCKWIRE_SITE", "ams1".into()),
            ("STOCKWIRE_SITE_LISTEN", "127.0.0.1:-1".into()),
            ("STOCKWIRE_SITE_STORE", "unused".into()),
            (
                "STOCKWIRE_HUB_LEAFNODE_URL",
                format!(
                    "nats-leaf://site:{}@127.0.0.1:{}",
                    password("site"),
                    relay.port()
                ),
            ),
        ],
    );

    // Each server is set up as what it is, and refuses to be set up as the other.
    ok(&hub, "admin", &["setup"]);
    refused(&hub, "admin", &["setup", "--site"], "the hub's");
    refused(&site, "admin", &["setup"], "stockwire setup --site");
    ok(&site, "admin", &["setup", "--site"]);
    refused(&site, "admin", &["site", "list"], "at the hub");
    let stop = tokio_util::sync::CancellationToken::new();
    let _stop_on_drop = stop.clone().drop_guard();
    projector(&hub, &stop).await;
    projector(&site, &stop).await;

    // A warehouse with history at the hub cannot become a site as it is.
    ok(
        &hub,
        "cli",
        &[
            "publish", "received", "-w", "nyc1", "-s", "pear", "-l", "A1", "-q", "5", "--msg-id",
            "d1",
        ],
    );
    refused(
        &hub,
        "admin",
        &["site", "add", "nyc1"],
        "already has 1 events",
    );

    ok(&hub, "admin", &["site", "add", "ams1"]);
    let again = ok(&hub, "admin", &["site", "add", "ams1"]);
    assert!(again.contains("already there"), "{again}");
    // One home per warehouse: ams1's events are refused at the hub, whole files too,
    // and a site records its own warehouse only.
    refused(
        &hub,
        "cli",
        &[
            "publish", "received", "-w", "ams1", "-s", "apple", "-l", "A1", "-q", "1",
        ],
        "warehouse ams1 is an edge site",
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("events.ndjson");
    let line = |w: &str| {
        format!(
            r#"{{"type":"stock.received","warehouse":"{w}","sku":"apple","location":"A1","quantity":1}}"#
        )
    };
    std::fs::write(&file, format!("{}\n{}\n", line("nyc1"), line("ams1"))).expect("file");
    refused(
        &hub,
        "cli",
        &["publish", "--file", &file.to_string_lossy()],
        "line 2: warehouse ams1 is an edge site",
    );
    refused(
        &hub,
        "cli",
        &[
            "transfer",
            "-s",
            "pear",
            "--from-warehouse",
            "ams1",
            "--from",
            "A1",
            "--to-warehouse",
            "nyc1",
            "--to",
            "A1",
            "-q",
            "1",
        ],
        "warehouse ams1 is an edge site",
    );
    refused(
        &site,
        "cli",
        &[
            "publish", "received", "-w", "nyc1", "-s", "pear", "-l", "A1", "-q", "1",
        ],
        "records ams1's events only",
    );

    // The hub's permissions refuse a raw publish of the site's events too, once its
    // refused-events.conf is written from the registry and the server reloads it.
    let generated = ok(&hub, "admin", &["site", "conf"]);
    assert!(
        generated.contains(r#"deny: ["warehouse.ams1.>"]"#),
        "{generated}"
    );
    let reloaded = hub_conf.replace("deny: []", &generated);
    assert_ne!(reloaded, hub_conf, "nats.conf includes refused-events.conf");
    hub.reload_config(&reloaded).expect("reload the hub");
    let raw = hub_conf_client(&hub, "cli").await;
    wait_until(
        "the hub refuses a raw publish of ams1",
        Duration::from_secs(10),
        || {
            let (raw, hub) = (raw.clone(), &hub);
            async move {
                let _ = raw
                    .publish("warehouse.ams1.product.apple.received", "{}".into())
                    .await;
                let _ = raw.flush().await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                hub.log().lines().any(|l| {
                    l.contains("Publish Violation")
                        && l.contains("warehouse.ams1.product.apple.received")
                })
            }
        },
    )
    .await;

    // A re-run of setup at the hub keeps the source it does not own.
    ok(&hub, "admin", &["setup"]);
    let hub_js = js_as(&hub, "admin").await;
    let sources = hub_js
        .get_stream(subjects::INVENTORY_STREAM)
        .await
        .expect("INVENTORY")
        .info()
        .await
        .expect("info")
        .config
        .sources
        .clone()
        .unwrap_or_default();
    assert_eq!(
        sources.len(),
        1,
        "one source after setup ran again: {sources:?}"
    );
    let nyc1 = subjects::warehouse_events(&"nyc1".parse().expect("id"));
    assert_eq!(
        ids(&hub_js, &nyc1).await.len(),
        1,
        "nothing of the refused file or transfer"
    );

    // A transfer from the hub to the site: the out leg is recorded at the hub; the site
    // records the arrival itself (below, while its link is down).
    let shipped = ok(
        &hub,
        "cli",
        &[
            "transfer",
            "-s",
            "pear",
            "--from-warehouse",
            "nyc1",
            "--from",
            "A1",
            "--to-warehouse",
            "ams1",
            "--to",
            "A1",
            "-q",
            "3",
            "--transfer-id",
            "t1",
        ],
    );
    assert!(shipped.contains("shipped 3 pear"), "{shipped}");
    assert!(
        shipped.contains("stockwire transit receive --transfer-id t1"),
        "{shipped}"
    );
    wait_until(
        "the hub's transit view has t1",
        Duration::from_secs(15),
        || async { transits(&hub).len() == 1 },
    )
    .await;
    let on_its_way = ok(&hub, "cli", &["--json", "transit", "list"]);
    let on_its_way: serde_json::Value =
        serde_json::from_str(on_its_way.trim()).expect("one JSON line");
    assert_eq!(on_its_way["state"], "in transit", "{on_its_way}");
    // The site reads the hub's view, mirrored: it knows what is coming.
    wait_until(
        "the site's copy of the transit view has t1",
        Duration::from_secs(15),
        || async { transits(&site).len() == 1 },
    )
    .await;
    assert_eq!(on_its_way["sent"], 3);
    assert!(on_its_way["received"].is_null());

    // The site records; the hub gets it.
    let sell = |q: &str| {
        [
            "publish", "sold", "-w", "ams1", "-s", "apple", "-l", "A1", "-q",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([q.to_string()])
        .collect::<Vec<String>>()
    };
    // The same msg id as the hub's first delivery, picked by another home: both stored.
    ok(
        &site,
        "cli",
        &[
            "publish", "received", "-w", "ams1", "-s", "apple", "-l", "A1", "-q", "10", "--msg-id",
            "d1",
        ],
    );
    let args = sell("3");
    ok(
        &site,
        "cli",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let site_js = js_as(&site, "admin").await;
    let filter = subjects::warehouse_events(&"ams1".parse().expect("id"));
    wait_until(
        "the hub has the site's first two events",
        Duration::from_secs(15),
        || {
            let (hub_js, filter) = (hub_js.clone(), filter.clone());
            async move { ids(&hub_js, &filter).await.len() == 2 }
        },
    )
    .await;
    assert_eq!(ids(&hub_js, &filter).await, ids(&site_js, &filter).await);
    // Nothing but the events crosses: an alert or a view write at the site stays there.
    site_js
        .publish("alerts.low_stock.ams1.apple", "{}".into())
        .await
        .expect("publish an alert at the site")
        .await
        .expect("its ack");
    site_js
        .get_key_value(subjects::THRESHOLDS_BUCKET)
        .await
        .expect("thresholds at the site")
        .put("ams1.apple", r#"{"low_stock_below":40}"#.into())
        .await
        .expect("a threshold at the site");
    let listed = site_list(&hub, "60");
    assert_eq!(listed["warehouse"], "ams1");
    assert_eq!(listed["online"], true, "{listed}");
    assert_eq!(listed["events"], 2, "{listed}");

    // The link goes down: the site goes on, its checks against its own log.
    relay.cut();
    let receive = |q: &str| {
        [
            "transit",
            "receive",
            "--transfer-id",
            "t1",
            "-l",
            "A1",
            "-q",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([q.to_string()])
        .collect::<Vec<String>>()
    };
    refused(
        &site,
        "cli",
        &[
            "transit",
            "receive",
            "--transfer-id",
            "t1",
            "-s",
            "apple",
            "-q",
            "2",
        ],
        "transfer t1 was shipped with -s pear, not apple",
    );
    // A short receipt: 2 of the 3 arrived; the product and the source from the view.
    let args = receive("2");
    let received = ok(
        &site,
        "cli",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(
        received.contains("received 2 pear at ams1/A1 from nyc1"),
        "{received}"
    );
    // The same receipt again (a retry after a lost reply): the one stored, exit 0.
    let again = ok(
        &site,
        "cli",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(
        again.contains("already received, not stored again"),
        "{again}"
    );
    // Another receipt of it is refused, whatever the window.
    let args = receive("1");
    let out = stockwire(
        &site,
        "cli",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert_eq!(out.status.code(), Some(3), "a second receipt: {out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("transfer t1 was already received"),
        "{out:?}"
    );
    ok(
        &site,
        "cli",
        &[
            "publish", "received", "-w", "ams1", "-s", "apple", "-l", "A1", "-q", "5",
        ],
    );
    let args = sell("20");
    let out = stockwire(
        &site,
        "cli",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "an oversell at the site is refused"
    );
    let args = sell("12");
    ok(
        &site,
        "cli",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    // The site's server dies and comes back during the outage: nothing is lost.
    site.restart().expect("restart the site");
    let args = sell("1");
    let out = stockwire(
        &site,
        "cli",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "nothing left after the restart: {out:?}"
    );
    wait_until(
        "the hub sees the site silent",
        Duration::from_secs(15),
        || async { site_list(&hub, "2")["online"] == false },
    )
    .await;
    assert_eq!(
        ids(&hub_js, &filter).await.len(),
        2,
        "nothing crossed the cut link"
    );
    let status = ok(&hub, "cli", &["--json", "status", "--site-offline-s", "2"]);
    let status: serde_json::Value = serde_json::from_str(status.trim()).expect("status JSON");
    assert_eq!(status["sites"][0]["online"], false, "{status}");
    let problems = status["problems"].to_string();
    assert!(problems.contains("site ams1 silent for"), "{problems}");

    // The link is back: the hub catches up, each event once, in the site's order.
    relay.restore();
    let site_js = js_as(&site, "admin").await;
    wait_until("the hub has caught up", Duration::from_secs(30), || {
        let (hub_js, filter) = (hub_js.clone(), filter.clone());
        async move { ids(&hub_js, &filter).await.len() == 5 }
    })
    .await;
    let at_site = ids(&site_js, &filter).await;
    assert_eq!(at_site.len(), 5);
    assert_eq!(
        ids(&hub_js, &filter).await,
        at_site,
        "the site's order, each once"
    );
    wait_until(
        "the site is online again",
        Duration::from_secs(15),
        || async { site_list(&hub, "60")["online"] == true },
    )
    .await;
    // Both legs are at the hub now: the transfer is short by one unit, lost in transit.
    wait_until(
        "the hub's transit view pairs the two legs",
        Duration::from_secs(15),
        || async {
            transits(&hub)
                .first()
                .is_some_and(|t| !t["received"].is_null())
        },
    )
    .await;
    let transits = transits(&hub);
    assert_eq!(transits.len(), 1, "{transits:?}");
    assert_eq!(transits[0]["transfer_id"], "t1");
    assert_eq!(transits[0]["sent"], 3);
    assert_eq!(transits[0]["received"], 2);
    assert_eq!(transits[0]["lost"], 1);
    assert_eq!(transits[0]["state"], "short: lost in transit");
    // Both legs are in: the key goes a week from now (the server's per-message TTL).
    let closed = hub_js
        .get_stream("KV_transit")
        .await
        .expect("KV_transit")
        .direct_get_last_for_subject("$KV.transit.t1")
        .await
        .expect("the key t1");
    assert_eq!(
        closed.headers.get("Nats-TTL").map(|v| v.as_str()),
        Some("604800")
    );
    // The view is rebuilt from the log like every view, to the same answer.
    let rebuilt = ok(&hub, "admin", &["rebuild", "transit"]);
    assert!(rebuilt.contains("rebuilt"), "{rebuilt}");
    let after = self::transits(&hub);
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(
        (&after[0]["sent"], &after[0]["received"], &after[0]["state"]),
        (
            &transits[0]["sent"],
            &transits[0]["received"],
            &transits[0]["state"]
        )
    );
    let clean = ok(&hub, "cli", &["verify"]);
    assert!(
        clean.contains("verified 1 keys of the transit view")
            && clean.ends_with("no differences\n"),
        "{clean}"
    );
    // A value the log does not explain is found, and a rebuild puts it right.
    let kv = hub_js
        .get_key_value(subjects::TRANSIT_BUCKET)
        .await
        .expect("transit");
    let mut wrong: serde_json::Value =
        serde_json::from_slice(&kv.get("t1").await.expect("read t1").expect("t1")).expect("JSON");
    wrong["received"] = 3.into();
    kv.put("t1", wrong.to_string().into())
        .await
        .expect("tamper");
    let out = stockwire(&hub, "cli", &["verify"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("transit t1: differs from the log"),
        "{out:?}"
    );
    ok(&hub, "admin", &["rebuild", "transit"]);
    ok(&hub, "cli", &["verify"]);

    let hub_alerts = hub_js
        .get_stream(subjects::ALERTS_STREAM)
        .await
        .expect("ALERTS")
        .info()
        .await
        .expect("info")
        .state
        .messages;
    assert_eq!(hub_alerts, 0, "the site's alert stayed at the site");
    let hub_threshold = hub_js
        .get_key_value(subjects::THRESHOLDS_BUCKET)
        .await
        .expect("thresholds at the hub")
        .get("ams1.apple")
        .await
        .expect("read");
    assert!(
        hub_threshold.is_none(),
        "the site's view write stayed at the site"
    );

    // The site's copy of the registry follows the hub's.
    wait_until(
        "the site's registry has itself",
        Duration::from_secs(15),
        || {
            let site_js = site_js.clone();
            async move {
                match site_js.get_key_value(subjects::SITES_BUCKET).await {
                    Ok(kv) => kv.get("ams1").await.ok().flatten().is_some(),
                    Err(_) => false,
                }
            }
        },
    )
    .await;
}
