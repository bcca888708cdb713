//! What every watcher shares: its inputs (the thresholds, then the views it reacts to,
//! each followed for ever) and announcing a change of state exactly once.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::announce::{Announced, Announcer};
use crate::domain::{Alert, LastAlert};
use crate::retry::Backoff;
use crate::shutdown::pause;
use crate::subjects;
use crate::watch::{follow, Followed};

/// Opens the thresholds bucket and `views`, and follows them: the thresholds first, and
/// the views once every threshold has been read, so that no product is judged against a
/// threshold not yet known. Waits (with backoff) until the buckets exist; `None` if shut
/// down first.
pub async fn inputs(
    js: &async_nats::jetstream::Context,
    views: &[&'static str],
    shutdown: &CancellationToken,
) -> Option<mpsc::Receiver<Followed>> {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut buckets = Vec::new();
    for &bucket in std::iter::once(&subjects::THRESHOLDS_BUCKET).chain(views) {
        loop {
            match js.get_key_value(bucket).await {
                Ok(kv) => break buckets.push((bucket, kv)),
                Err(e) => {
                    tracing::warn!(bucket, error = %e, "cannot open the bucket (run `stockwire setup`?); retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return None,
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                }
            }
        }
    }
    let (tx, rx) = mpsc::channel(4096);
    let (out_tx, out_rx) = mpsc::channel(4096);
    let mut buckets = buckets.into_iter();
    if let Some((bucket, kv)) = buckets.next() {
        follow(js.clone(), kv, bucket, tx.clone(), shutdown.clone());
    }
    let (js, shutdown) = (js.clone(), shutdown.clone());
    let mut views: Vec<_> = buckets.collect();
    tokio::spawn(async move {
        let mut rx = rx;
        while let Some(item) = rx.recv().await {
            if let Followed::CaughtUp { bucket } = &item {
                if *bucket == subjects::THRESHOLDS_BUCKET {
                    for (bucket, kv) in views.drain(..) {
                        follow(js.clone(), kv, bucket, tx.clone(), shutdown.clone());
                    }
                }
            }
            if out_tx.send(item).await.is_err() {
                return;
            }
        }
    });
    Some(out_rx)
}

/// Decides against the subject's last announcement and publishes the outcome, expecting
/// that last announcement; when another watcher got there first, decides again against
/// what it said. Transient failures are retried with backoff until done or shut down.
/// Returns the new alert's sequence, if one was stored.
pub async fn announce_change(
    announcer: &mut Announcer,
    subject: &str,
    now_ms: impl Fn() -> i64,
    shutdown: &CancellationToken,
    mut decide: impl FnMut(Option<&LastAlert>) -> Option<Alert>,
) -> Option<u64> {
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
    while !shutdown.is_cancelled() {
        let last = match announcer.last(subject).await {
            Ok(last) => last,
            Err(e) => {
                tracing::warn!(subject, error = %e, "cannot read the last alert; retrying");
                pause(shutdown, backoff.next_delay()).await;
                continue;
            }
        };
        let next = decide(last.as_ref())?;
        if next.subject() != subject {
            // It would not expect the last alert of its own subject: never announce it.
            tracing::error!(
                subject,
                alert_subject = next.subject(),
                "an alert decided for another subject; dropped"
            );
            return None;
        }
        match announcer.announce(&next, now_ms()).await {
            Ok(Announced::Stored(seq)) => {
                tracing::info!(
                    subject,
                    event_type = next.event_type(),
                    alert_seq = seq,
                    "announced"
                );
                return Some(seq);
            }
            Ok(Announced::Superseded) => continue,
            Err(e) => {
                tracing::warn!(subject, error = %e, "cannot announce yet; retrying");
                pause(shutdown, backoff.next_delay()).await;
            }
        }
    }
    None
}
