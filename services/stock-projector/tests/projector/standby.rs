//! Two stock-projector processes: one works, the other stands by reading nothing, and
//! takes over within a bounded time when the first is killed (SIGKILL) or stopped. A
//! standby takes no rebuild request.

use std::time::Instant;

use async_nats::RequestErrorKind;
use stockwire::lease::{Lease, Timing};

use super::*;

fn start_instance(server: &NatsServer, instance: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_stock-projector"))
        .env("NATS_URL", server.url())
        .env("STOCKWIRE_INSTANCE_ID", instance)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start stock-projector")
}

async fn holder(js: &jetstream::Context) -> Option<String> {
    let leases = js.get_key_value(subjects::LEASES_BUCKET).await.unwrap();
    let value = leases.get("stock-projector").await.unwrap()?;
    Some(String::from_utf8_lossy(&value).into_owned())
}

/// The consumers reading the log for the stock view (the transit view's loop, with a
/// lease of its own, reads only transfers).
async fn consumers_on_the_log(js: &jetstream::Context) -> usize {
    use futures::TryStreamExt;
    let stream = js.get_stream(subjects::INVENTORY_STREAM).await.unwrap();
    let infos: Vec<_> = stream.consumers().try_collect().await.unwrap();
    infos
        .iter()
        .filter(|info| info.config.filter_subjects.is_empty())
        .count()
}

/// Publishes one event and returns how long until the view's checkpoint passes it.
async fn time_to_commit(s: &Setup, i: usize) -> Duration {
    let event = &mixed_events(1, 1)[0];
    let started = Instant::now();
    let seq = {
        let out = encode(event, 1_000_000 + i);
        let ack =
            s.js.publish_with_headers(out.subject, out.headers, out.payload);
        ack.await.unwrap().await.unwrap().sequence
    };
    wait_until("the view to pass the new event", WAIT, || async {
        checkpoint(&s.stock).await >= seq
    })
    .await;
    started.elapsed()
}

#[tokio::test]
async fn a_standby_reads_nothing_and_takes_over_when_the_active_one_is_killed() {
    let s = setup().await;
    let mut a = start_instance(&s.server, "instance-a");
    wait_until("instance a to hold the lease", WAIT, || async {
        holder(&s.js).await.as_deref() == Some("instance-a")
    })
    .await;
    let mut b = start_instance(&s.server, "instance-b");
    publish_in_batches(&s.client, &mixed_events(2000, 30), 500).await;
    wait_caught_up(&s).await;
    // Long enough for b to have started and polled the lease many times.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(holder(&s.js).await.as_deref(), Some("instance-a"));
    assert_eq!(
        consumers_on_the_log(&s.js).await,
        1,
        "the standby reads the log"
    );

    a.kill().expect("kill -9");
    a.wait().expect("reap");
    let took = time_to_commit(&s, 0).await;
    eprintln!("take-over after SIGKILL: {took:?} until the standby committed a new event");
    assert_eq!(holder(&s.js).await.as_deref(), Some("instance-b"));
    // TTL 3 s + a renewal interval 1 s + a poll 0.25 s, and the server's expiry timer.
    assert!(took < Duration::from_secs(6), "took over in {took:?}");

    // A clean stop (SIGTERM) releases the lease: a new standby takes over at once.
    let mut c = start_instance(&s.server, "instance-c");
    tokio::time::sleep(Duration::from_millis(500)).await;
    Command::new("kill")
        .args(["-TERM", &b.id().to_string()])
        .status()
        .expect("kill -TERM");
    b.wait().expect("wait");
    let took = time_to_commit(&s, 1).await;
    eprintln!("hand-over after SIGTERM: {took:?} until the standby committed a new event");
    assert!(took < Duration::from_secs(2), "took over in {took:?}");
    c.kill().expect("stop");
    c.wait().expect("reap");
    assert_view_matches_replay(&s).await;
}

#[tokio::test]
async fn a_standby_neither_projects_nor_answers_a_rebuild() {
    let s = setup().await;
    // Another instance holds the lease (and does nothing, here).
    let other = Lease::hold(&s.js, "stock-projector", "elsewhere", Timing::default());
    other.active().wait_for(|a| *a).await.unwrap();
    let (stop, handle) = spawn_projector(&s);
    publish_in_batches(&s.client, &mixed_events(100, 10), 50).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(checkpoint(&s.stock).await, 0, "the standby projected");
    assert_eq!(
        consumers_on_the_log(&s.js).await,
        0,
        "the standby reads the log"
    );
    let asked = s
        .client
        .request(
            subjects::rebuild_requests(subjects::STOCK_BUCKET),
            "".into(),
        )
        .await;
    assert!(
        matches!(&asked, Err(e) if e.kind() == RequestErrorKind::NoResponders),
        "a standby took a rebuild request: {asked:?}"
    );

    // Released, the lease passes to the projector: it catches up and takes requests.
    other.release().await;
    wait_caught_up(&s).await;
    let answer = s
        .client
        .request(
            subjects::rebuild_requests(subjects::STOCK_BUCKET),
            "".into(),
        )
        .await
        .expect("an answer from the active projector");
    assert!(!answer.payload.is_empty());
    stop.cancel();
    handle.await.unwrap();
    assert_view_matches_replay(&s).await;
}
