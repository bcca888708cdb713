//! The shared NATS plumbing against a real nats-server: provisioning, atomic batches,
//! reading, announcing, leases, instances on the service API.

use std::time::Duration;

use async_nats::jetstream;
use stockwire::batch;
use stockwire::connect::{connect, ConnectArgs, Startup};
use stockwire::domain::{Event, Location, Quantity, Sku, WarehouseId};
use stockwire::envelope::{Envelope, EventMeta, Outbound};
use stockwire::provision::{self, Outcome};
use stockwire::read::Reader;
use stockwire::retry::AppendErrorKind;
use stockwire::subjects;
use stockwire::testing::NatsServer;

#[path = "nats/announce.rs"]
mod announce;
#[path = "nats/instance.rs"]
mod instance;
#[path = "nats/lease.rs"]
mod lease;
#[path = "nats/view.rs"]
mod view;

fn received(sku: &str, n: u64, msg_id: &str) -> Outbound {
    let event = Event::Received {
        warehouse: WarehouseId::parse("ams1").unwrap(),
        sku: Sku::parse(sku).unwrap(),
        location: Location::parse("A43").unwrap(),
        quantity: Quantity::new(n).unwrap(),
    };
    Envelope::default().encode(
        &event,
        &EventMeta {
            msg_id: msg_id.to_string(),
            timestamp_ms: 1_795_176_000_000,
        },
    )
}

async fn provisioned() -> (NatsServer, async_nats::Client, jetstream::Context) {
    let server = NatsServer::start().expect("nats-server");
    let client = server.client().await;
    let js = jetstream::new(client.clone());
    provision::provision(&js, &provision::Options::default())
        .await
        .expect("provision");
    (server, client, js)
}

#[tokio::test]
async fn provisioning_twice_changes_nothing_the_second_time() {
    let (_server, _client, js) = provisioned().await;
    let second = provision::provision(&js, &provision::Options::default())
        .await
        .unwrap();
    assert_eq!(second.len(), 9, "3 streams and 6 buckets");
    assert!(
        second.iter().all(|c| c.outcome == Outcome::Unchanged),
        "{second:?}"
    );

    let mut inventory = js.get_stream(subjects::INVENTORY_STREAM).await.unwrap();
    let config = inventory.info().await.unwrap().config.clone();
    assert!(config.allow_atomic_publish && config.allow_direct);
    assert_eq!(config.duplicate_window, Duration::from_secs(120));
    assert_eq!(config.max_message_size, 64 * 1024);
    let mut stock = js.get_stream("KV_stock").await.unwrap();
    assert!(stock.info().await.unwrap().config.allow_atomic_publish);
    // The backing streams are real KV buckets.
    js.get_key_value(subjects::STOCK_BUCKET).await.unwrap();
    js.get_key_value(subjects::THRESHOLDS_BUCKET).await.unwrap();

    // A changed setting is put back.
    let changed = provision::Options {
        duplicate_window: Duration::from_secs(300),
        ..Default::default()
    };
    let third = provision::provision(&js, &changed).await.unwrap();
    assert_eq!(third[0].outcome, Outcome::Updated);
    assert!(third[1..].iter().all(|c| c.outcome == Outcome::Unchanged));

    // A setting setup does not own (an operator's byte limit) survives a re-run, which
    // sends the whole config: it is taken from the stream as it is.
    let mut inventory = js.get_stream(subjects::INVENTORY_STREAM).await.unwrap();
    let mut config = inventory.info().await.unwrap().config.clone();
    config.max_bytes = 1 << 30;
    js.update_stream(&config).await.unwrap();
    let fourth = provision::provision(&js, &changed).await.unwrap();
    assert!(fourth.iter().all(|c| c.outcome == Outcome::Unchanged));
    let info = inventory.info().await.unwrap();
    assert_eq!(info.config.max_bytes, 1 << 30);
    assert_eq!(info.config.num_replicas, 1);
}

#[tokio::test]
async fn an_atomic_batch_is_stored_whole_or_not_at_all() {
    let (_server, client, js) = provisioned().await;
    let msgs: Vec<_> = (0..1000)
        .map(|i| received("apple", 1, &format!("m-{i}")))
        .collect();
    let ack = batch::publish_atomic(&client, msgs, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        (ack.first_sequence(), ack.sequence, ack.count),
        (1, 1000, 1000)
    );

    // One message repeats a stored msg id: the whole batch is refused.
    let again = vec![received("pear", 1, "new-1"), received("pear", 1, "m-5")];
    let err = batch::publish_atomic(&client, again, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), AppendErrorKind::BatchDuplicate, "{err}");
    let mut stream = js.get_stream(subjects::INVENTORY_STREAM).await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 1000);

    let too_many: Vec<_> = (0..1001)
        .map(|i| received("kiwi", 1, &format!("k-{i}")))
        .collect();
    assert!(
        batch::publish_atomic(&client, too_many, Duration::from_secs(5))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_reader_returns_one_filter_in_order_and_stops_at_the_end() {
    let (_server, client, js) = provisioned().await;
    let msgs: Vec<_> = (0..30)
        .map(|i| {
            received(
                if i % 3 == 0 { "apple" } else { "pear" },
                i + 1,
                &format!("r-{i}"),
            )
        })
        .collect();
    batch::publish_atomic(&client, msgs, Duration::from_secs(5))
        .await
        .unwrap();

    let mut reader = Reader::open(
        &js,
        subjects::INVENTORY_STREAM,
        "warehouse.ams1.product.apple.*",
        1,
    )
    .await
    .unwrap();
    let mut seqs = Vec::new();
    while let Some(msg) = reader.next().await {
        let msg = msg.unwrap();
        assert_eq!(msg.subject, "warehouse.ams1.product.apple.received");
        seqs.push(msg.sequence);
    }
    assert_eq!(seqs, (0..10).map(|i| 1 + 3 * i).collect::<Vec<u64>>());

    let mut empty = Reader::open(
        &js,
        subjects::INVENTORY_STREAM,
        "warehouse.ams1.product.kiwi.*",
        1,
    )
    .await
    .unwrap();
    assert!(empty.next().await.is_none());
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, made now.
fn certificates(dir: &std::path::Path) -> [std::path::PathBuf; 5] {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "stockwire test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, &ca_key);
    let leaf = |names: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(vec!["127.0.0.1".into(), "localhost".into()]);
    let (client_cert, client_key) = leaf(vec!["stock-projector".into()]);
    let files = [
        ("ca.pem", ca_cert.pem()),
        ("server-cert.pem", server_cert),
        ("server-key.pem", server_key),
        ("client-cert.pem", client_cert),
        ("client-key.pem", client_key),
    ];
    files.map(|(name, pem)| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    })
}

#[tokio::test]
async fn tls_with_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let [ca, server_cert, server_key, client_cert, client_key] = certificates(dir.path());
    let conf = format!(
        "listen: 127.0.0.1:4222\n\
         tls {{\n  cert_file: {server_cert:?}\n  key_file: {server_key:?}\n  ca_file: {ca:?}\n  verify: true\n}}\n\
         jetstream {{\n  store_dir: \"x\"\n}}\n"
    );
    let server = NatsServer::with_config(&conf, &[]).expect("nats-server with TLS");
    let tls = ConnectArgs {
        tls_ca: Some(ca.clone()),
        tls_cert: Some(client_cert.clone()),
        tls_key: Some(client_key.clone()),
        ..server.connect_args()
    };

    // With the CA and a client certificate: the whole JetStream round trip works.
    let client = connect(&tls, "stockwire-test", Startup::FailFast)
        .await
        .expect("connect over TLS");
    let js = jetstream::new(client);
    provision::provision(&js, &provision::Options::default())
        .await
        .expect("provision over TLS");
    let out = received("apple", 5, "tls-1");
    js.publish_with_headers(out.subject, out.headers, out.payload)
        .await
        .expect("publish")
        .await
        .expect("ack");

    // Without a client certificate the server refuses; without the CA we refuse the server.
    let no_cert = ConnectArgs {
        tls_cert: None,
        tls_key: None,
        ..tls.clone()
    };
    let no_ca = ConnectArgs {
        tls_ca: None,
        ..tls.clone()
    };
    for (what, args) in [("no client certificate", no_cert), ("no CA", no_ca)] {
        let result = connect(&args, "stockwire-test", Startup::FailFast).await;
        assert!(result.is_err(), "connected with {what}");
    }

    // A missing file is named, not reported as a TLS failure.
    let missing = ConnectArgs {
        tls_ca: Some(dir.path().join("nope.pem")),
        ..tls.clone()
    };
    let error = connect(&missing, "stockwire-test", Startup::Retry)
        .await
        .expect_err("connected with a missing CA file")
        .to_string();
    assert!(
        error.starts_with("--tls-ca ") && error.contains("nope.pem"),
        "{error}"
    );
    let half = ConnectArgs {
        tls_key: None,
        ..tls
    };
    let error = connect(&half, "stockwire-test", Startup::FailFast)
        .await
        .expect_err("connected with a certificate and no key")
        .to_string();
    assert_eq!(error, "--tls-cert and --tls-key go together");
}

/// Partitions as the projectors compute them are the ones nats-server's subject transform
/// `{{partition(N,1,2)}}` gives the same products.
#[tokio::test]
async fn partitions_agree_with_the_server_subject_transform() {
    const PARTITIONS: u32 = 7;
    let server = NatsServer::start().expect("nats-server");
    let js = jetstream::new(server.client().await);
    let stream = js
        .create_stream(jetstream::stream::Config {
            name: "PARTS".to_string(),
            subjects: vec!["warehouse.*.product.*.*".to_string()],
            subject_transform: Some(jetstream::stream::SubjectTransform {
                source: "warehouse.*.product.*.*".to_string(),
                destination: format!(
                    "part.{{{{partition({PARTITIONS},1,2)}}}}.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}"
                ),
            }),
            ..Default::default()
        })
        .await
        .expect("a stream that partitions by transform");
    let mut products = Vec::new();
    for warehouse in ["ams1", "rtm-2", "b"] {
        for n in 0..100 {
            products.push((warehouse.to_string(), format!("sku-{n}")));
        }
    }
    for (warehouse, sku) in &products {
        js.publish(
            format!("warehouse.{warehouse}.product.{sku}.sold"),
            "{}".into(),
        )
        .await
        .expect("publish")
        .await
        .expect("stored");
    }
    let mut used = std::collections::BTreeSet::new();
    for (seq, (warehouse, sku)) in (1..).zip(&products) {
        let stored = stream.get_raw_message(seq).await.expect("stored message");
        let ours = stockwire::partition::of(warehouse, sku, PARTITIONS);
        assert_eq!(
            stored.subject.as_str(),
            format!("part.{ours}.{warehouse}.{sku}"),
            "{warehouse} {sku}"
        );
        used.insert(ours);
    }
    assert_eq!(
        used.len(),
        PARTITIONS as usize,
        "300 products use every partition"
    );
}
