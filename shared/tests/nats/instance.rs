//! Instances on the NATS service API: plain `$SRV.*` requests find each one under its
//! service's name with its instance id, version and state, and `instance::list` agrees.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use serde_json::Value;
use stockwire::instance::{self, Counters, Registration};
use stockwire::lease::{Lease, Timing};
use stockwire::testing::NatsServer;

/// Every answer to one request on `subject`, until none came for 300 ms.
async fn ask_all(client: &async_nats::Client, subject: &str) -> Vec<Value> {
    let inbox = client.new_inbox();
    let mut answers = client.subscribe(inbox.clone()).await.unwrap();
    client
        .publish_with_reply(subject.to_string(), inbox, "".into())
        .await
        .unwrap();
    let mut all = Vec::new();
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(300), answers.next()).await
    {
        // No one there: the server says so with an empty status message.
        if !msg.payload.is_empty() {
            all.push(serde_json::from_slice(&msg.payload).unwrap());
        }
    }
    all
}

#[tokio::test]
async fn each_instance_answers_the_service_api_active_or_standby() {
    let server = NatsServer::start().expect("nats-server");
    let client = server.client().await;
    let js = jetstream::new(client.clone());
    stockwire::provision::provision(&js, &stockwire::provision::Options::default())
        .await
        .expect("provision");
    let timing = Timing::default();
    let first = Lease::hold(&js, "stock-projector", "instance-a", timing);
    first.active().wait_for(|a| *a).await.unwrap();
    let second = Lease::hold(&js, "stock-projector", "instance-b", timing);
    let counters = Arc::new(Counters::default());
    counters.applied(7);
    counters.committed();
    let a = Registration::start(
        &client,
        "stock-projector",
        "instance-a",
        first.active(),
        counters,
    )
    .await;
    let b = Registration::start(
        &client,
        "stock-projector",
        "instance-b",
        second.active(),
        Arc::default(),
    )
    .await;

    let pings = ask_all(&client, "$SRV.PING").await;
    assert_eq!(pings.len(), 2, "{pings:?}");
    assert!(pings.iter().all(|p| p["name"] == "stock-projector"));
    assert!(pings.iter().all(|p| p["version"] == instance::VERSION));

    let infos = ask_all(&client, "$SRV.INFO.stock-projector").await;
    let mut ids: Vec<_> = infos
        .iter()
        .map(|i| {
            i["metadata"][instance::INSTANCE_METADATA]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    ids.sort();
    assert_eq!(ids, ["instance-a", "instance-b"]);

    let stats = ask_all(&client, "$SRV.STATS.stock-projector").await;
    let data: Vec<&Value> = stats.iter().map(|s| &s["endpoints"][0]["data"]).collect();
    assert_eq!(data.len(), 2);
    let active: Vec<_> = data.iter().filter(|d| d["active"] == true).collect();
    assert_eq!(active.len(), 1, "{data:?}");
    assert_eq!(active[0]["instance"], "instance-a");
    assert_eq!(
        (active[0]["applied"].as_u64(), active[0]["commits"].as_u64()),
        (Some(7), Some(1))
    );
    assert!(ask_all(&client, "$SRV.PING.low-stock-watcher")
        .await
        .is_empty());

    let listed = instance::list(&client, Duration::from_millis(300))
        .await
        .unwrap();
    let seen: Vec<_> = listed
        .iter()
        .map(|l| {
            (
                l.service.as_str(),
                l.stats.instance.as_str(),
                l.stats.active,
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("stock-projector", "instance-a", true),
            ("stock-projector", "instance-b", false)
        ]
    );

    // Stopped, an instance is no longer listed.
    a.stop().await;
    b.stop().await;
    assert!(ask_all(&client, "$SRV.PING").await.is_empty());
}
