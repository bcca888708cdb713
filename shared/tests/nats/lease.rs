//! Leases against a real nats-server: of two holders exactly one is active; a holder that
//! dies without a word is replaced once its lease expires, one that stops cleanly at once;
//! a stop does not wait on a server that does not answer.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use stockwire::lease::{Lease, Timing};
use stockwire::subjects;
use stockwire::testing::{wait_until, NatsServer};
use tokio::sync::watch;

const TIMING: Timing = Timing {
    ttl: Duration::from_secs(2),
    renew_every: Duration::from_millis(500),
    poll_every: Duration::from_millis(100),
};

async fn provisioned() -> (NatsServer, jetstream::Context) {
    let server = NatsServer::start().expect("nats-server");
    let js = jetstream::new(server.client().await);
    stockwire::provision::provision(&js, &stockwire::provision::Options::default())
        .await
        .expect("provision");
    (server, js)
}

async fn becomes_active(active: &mut watch::Receiver<bool>, within: Duration) -> Duration {
    let started = Instant::now();
    tokio::time::timeout(within, active.wait_for(|a| *a))
        .await
        .expect("became active in time")
        .expect("the holder is running");
    started.elapsed()
}

/// Two holders of one job: the first active at once, the second standing by.
async fn two_holders(js: &jetstream::Context) -> (Lease, Lease, watch::Receiver<bool>) {
    let first = Lease::hold(js, "stock-projector", "instance-a", TIMING);
    becomes_active(&mut first.active(), Duration::from_secs(2)).await;
    let second = Lease::hold(js, "stock-projector", "instance-b", TIMING);
    let standby = second.active();
    // Several renewals and polls later, still exactly one is active.
    tokio::time::sleep(TIMING.ttl + TIMING.renew_every).await;
    assert!(*first.active().borrow(), "the first lost its lease");
    assert!(!*standby.borrow(), "two instances active at once");
    (first, second, standby)
}

#[tokio::test]
async fn of_two_holders_exactly_one_is_active_and_the_value_names_it() {
    let (_server, js) = provisioned().await;
    let (_first, _second, _) = two_holders(&js).await;
    let leases = js.get_key_value(subjects::LEASES_BUCKET).await.unwrap();
    let holder = leases.get("stock-projector").await.unwrap().unwrap();
    assert_eq!(&holder[..], b"instance-a");
    // Another job's lease is its own.
    let other = Lease::hold(&js, "low-stock-watcher", "instance-b", TIMING);
    becomes_active(&mut other.active(), Duration::from_secs(2)).await;
}

#[tokio::test]
async fn a_dead_holder_is_replaced_within_its_ttl_and_a_poll() {
    let (_server, js) = provisioned().await;
    let (first, _second, mut standby) = two_holders(&js).await;
    // Dropped without a word, as under SIGKILL: the lease stays until it expires.
    drop(first);
    let took = becomes_active(&mut standby, Duration::from_secs(10)).await;
    // The server expires messages on a one-second timer: allow for it.
    let bound = TIMING.ttl + TIMING.poll_every + Duration::from_millis(1500);
    assert!(took <= bound, "took over after {took:?} (bound {bound:?})");
    assert!(
        took >= Duration::from_millis(500),
        "took over before the lease expired ({took:?})"
    );
}

#[tokio::test]
async fn a_clean_stop_hands_over_at_once() {
    let (_server, js) = provisioned().await;
    let (first, _second, mut standby) = two_holders(&js).await;
    first.release().await;
    let took = becomes_active(&mut standby, Duration::from_secs(10)).await;
    assert!(
        took <= TIMING.poll_every + Duration::from_millis(300),
        "took over after {took:?}"
    );
}

#[tokio::test]
async fn a_holder_waits_for_the_bucket_and_gives_it_back_when_stolen() {
    let server = NatsServer::start().expect("nats-server");
    let js = jetstream::new(server.client().await);
    let holder = Lease::hold(&js, "velocity-watcher", "instance-a", TIMING);
    let mut active = holder.active();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!*active.borrow(), "active without a leases bucket");
    stockwire::provision::provision(&js, &stockwire::provision::Options::default())
        .await
        .expect("provision");
    becomes_active(&mut active, Duration::from_secs(10)).await;

    // Someone else overwrites the key: the holder's next renewal is refused.
    let leases = js.get_key_value(subjects::LEASES_BUCKET).await.unwrap();
    leases
        .put("velocity-watcher", "intruder".into())
        .await
        .unwrap();
    wait_until("the holder to stand by", Duration::from_secs(5), || {
        let active = active.clone();
        async move { !*active.borrow() }
    })
    .await;
}

#[tokio::test]
async fn a_release_while_the_server_is_gone_ends_within_its_bound() {
    let (server, js) = provisioned().await;
    let holder = Lease::hold(&js, "stock-projector", "instance-a", TIMING);
    becomes_active(&mut holder.active(), Duration::from_secs(2)).await;
    // The server dies; the holder's next renewal waits for an answer that never comes
    // (as a request to a cluster's dead leader does) when the service is asked to stop.
    drop(server);
    tokio::time::sleep(TIMING.renew_every + Duration::from_millis(200)).await;
    let started = Instant::now();
    holder.release().await;
    let took = started.elapsed();
    let bound = stockwire::lease::RELEASE_WITHIN + Duration::from_millis(300);
    assert!(took < bound, "released after {took:?} (bound {bound:?})");
}
