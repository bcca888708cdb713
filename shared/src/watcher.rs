//! The loop every watcher runs: follow the thresholds and the views, keep what they say
//! of every product, judge a product again when something it depends on changes, and
//! announce each change of state exactly once.
//!
//! A watcher says what it is ([`Watcher`]: the views it judges on, and its [`Rule`]s, each
//! a pure `react` of `stockwire::domain` on one line of alerts); the rest is here:
//! - Inputs: the thresholds first, then the views once every threshold is known, each
//!   followed for ever in its own task (`watch`).
//! - Nothing is judged until every view has delivered its current values: a product's
//!   velocity without its stock is not its state. Then every product is judged once (after
//!   a restart, that compares it with its last alert: at most one alert), and after that a
//!   product is judged again when one of its values changes, or a threshold covering it.
//! - Announcing: a rule decides against the last alert on the product's subject and the
//!   alert is published expecting that one (`announce`); when another watcher got there
//!   first, it decides again against what that one said.
//! - Time (the alerts' timestamp) comes from the [`Clock`] passed in.
//! - Of several instances, only the one holding the job's lease (see `lease`) follows
//!   and announces; the others wait, reading nothing.

mod known;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::Operation;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::announce::{AnnounceErrorKind, Announced, Announcer};
use crate::clock::Clock;
use crate::domain::{Alert, AlertTopic, LastAlert};
use crate::envelope::Envelope;
use crate::instance::{Counters, Registration};
use crate::lease::{self, Lease, Timing};
use crate::retry::Backoff;
use crate::shutdown::{finish_within, pause, GRACE};
use crate::subjects;
use crate::watch::{follow, Followed};

use known::Known;
pub use known::Product;

type React = dyn Fn(Option<&LastAlert>, &Product<'_>) -> Option<Alert> + Send + Sync;

/// One decision a watcher makes about every product, on one line of alerts: given the
/// last alert there and what is known of the product, the alert to announce, if any.
pub struct Rule {
    topic: AlertTopic,
    react: Box<React>,
}

impl Rule {
    /// A rule announcing on `topic`. `react` returns `None` for nothing to announce, and
    /// for a product it cannot judge (a value it needs is not known).
    pub fn new(
        topic: AlertTopic,
        react: impl Fn(Option<&LastAlert>, &Product<'_>) -> Option<Alert> + Send + Sync + 'static,
    ) -> Self {
        Self {
            topic,
            react: Box::new(react),
        }
    }
}

/// What a watcher is: which views it judges products on, and by which rules (one per
/// line of alerts).
pub struct Watcher {
    /// Its service's name: in logs, and the job whose lease its instances share.
    pub name: &'static str,
    /// The view buckets it follows (the thresholds are always followed, first).
    pub views: Vec<&'static str>,
    pub rules: Vec<Rule>,
}

/// Runs `watcher` until `shutdown` is cancelled: while this instance holds the lease of
/// the watcher's job, it watches; otherwise it waits. Transient failures are retried with
/// backoff; the buckets are waited for if they do not exist yet.
pub async fn run(
    client: async_nats::Client,
    watcher: Watcher,
    envelope: Envelope,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) {
    let js = async_nats::jetstream::new(client.clone());
    let instance = lease::instance_id();
    let lease = Lease::hold(&js, watcher.name, &instance, Timing::default());
    let mut active = lease.active();
    let counters = Arc::new(Counters::default());
    let registration = Registration::start(
        &client,
        watcher.name,
        &instance,
        lease.active(),
        counters.clone(),
    )
    .await;
    tracing::info!(watcher = watcher.name, "watcher started");
    // Stopped between changes, or cut short after a grace (see `finish_within`): an alert
    // whose answer never came is stored or not, and the next decision reads which.
    let watching = async {
        while !shutdown.is_cancelled() {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                held = active.wait_for(|a| *a) => if held.is_err() { break },
            }
            tracing::info!(watcher = watcher.name, "active");
            // Watching stops as soon as another instance holds the lease (a late alert of ours
            // expects the last one and is refused if that one has moved).
            let stop = shutdown.child_token();
            let lost = {
                let (mut active, stop) = (active.clone(), stop.clone());
                async move {
                    let _ = active.wait_for(|a| !*a).await;
                    stop.cancel();
                }
            };
            tokio::select! {
                _ = watch(&js, &watcher, &envelope, clock.as_ref(), &counters, &stop) => {
                    if !stop.is_cancelled() {
                        // Its inputs ended: start again, but not in a tight loop.
                        tracing::warn!(watcher = watcher.name, "the inputs ended; restarting");
                        pause(&shutdown, Duration::from_secs(1)).await;
                    }
                }
                _ = lost => tracing::info!(watcher = watcher.name, "standing by"),
            }
            stop.cancel();
        }
    };
    if finish_within(&shutdown, GRACE, watching).await.is_none() {
        tracing::warn!(watcher = watcher.name, "stopped with a request unanswered");
    }
    registration.stop().await;
    lease.release().await;
    tracing::info!(watcher = watcher.name, "watcher stopped");
}

/// The watcher's work, until `stop` is cancelled: its inputs followed, what is known,
/// every product judged on change. Starts afresh each time (a standby knows nothing).
async fn watch(
    js: &async_nats::jetstream::Context,
    watcher: &Watcher,
    envelope: &Envelope,
    clock: &dyn Clock,
    counters: &Counters,
    stop: &CancellationToken,
) {
    let name = watcher.name;
    let mut lines: Vec<(&Rule, Announcer)> = watcher
        .rules
        .iter()
        .map(|rule| {
            let filter = rule.topic.every_subject();
            (rule, Announcer::new(js.clone(), envelope.clone(), filter))
        })
        .collect();
    let followers = stop.child_token();
    let _stop_followers = followers.clone().drop_guard();
    let Some(mut inputs) = inputs(js, &watcher.views, &followers).await else {
        return;
    };
    let mut known = Known::default();
    let mut waiting = watcher.views.clone();
    loop {
        let item = tokio::select! {
            _ = stop.cancelled() => break,
            item = inputs.recv() => item,
        };
        let Some(item) = item else { break };
        let keys = match item {
            Followed::CaughtUp { bucket } => {
                let was_waiting = !waiting.is_empty();
                waiting.retain(|b| *b != bucket);
                if was_waiting && waiting.is_empty() {
                    tracing::info!(watcher = name, "every view read: judging every product");
                    known.products()
                } else {
                    vec![]
                }
            }
            Followed::Entry { entry, .. } if entry.key.starts_with('_') => vec![],
            Followed::Entry { bucket, entry } => {
                counters.applied(1);
                let value = (entry.operation == Operation::Put).then_some(&entry.value[..]);
                match known.update(bucket, &entry.key, value) {
                    Ok(keys) if waiting.is_empty() => keys,
                    Ok(_) => vec![],
                    Err(e) => {
                        tracing::error!(bucket, key = entry.key, error = %e, "unreadable value; skipped");
                        vec![]
                    }
                }
            }
        };
        for key in keys {
            judge(&mut lines, &known, &key, clock, counters, stop).await;
        }
    }
}

/// Runs every rule on the product `key`, announcing what they decide.
async fn judge(
    lines: &mut [(&Rule, Announcer)],
    known: &Known,
    key: &str,
    clock: &dyn Clock,
    counters: &Counters,
    shutdown: &CancellationToken,
) {
    let Some(product) = known.product(key) else {
        return;
    };
    for (rule, announcer) in lines.iter_mut() {
        let subject = rule.topic.subject(product.warehouse, product.sku);
        announce_change(announcer, &subject, clock, counters, shutdown, |last| {
            (rule.react)(last, &product)
        })
        .await;
    }
}

/// Opens the thresholds bucket and `views`, and follows them: the thresholds first, and
/// the views once every threshold has been read, so that no product is judged against a
/// threshold not yet known. Waits (with backoff) until the buckets exist; `None` if shut
/// down first.
async fn inputs(
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
                    pause(shutdown, backoff.next_delay()).await;
                    if shutdown.is_cancelled() {
                        return None;
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
async fn announce_change(
    announcer: &mut Announcer,
    subject: &str,
    clock: &dyn Clock,
    counters: &Counters,
    shutdown: &CancellationToken,
    decide: impl Fn(Option<&LastAlert>) -> Option<Alert>,
) -> Option<u64> {
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
    while !shutdown.is_cancelled() {
        let last = match announcer.last(subject).await {
            Ok(last) => last,
            Err(e) => {
                tracing::warn!(subject, error = %e, "cannot read the last alert; retrying");
                counters.failed();
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
        match announcer.announce(&next, clock.now_ms()).await {
            Ok(Announced::Stored(seq)) => {
                tracing::info!(
                    subject,
                    event_type = next.event_type(),
                    alert_seq = seq,
                    "announced"
                );
                counters.committed();
                return Some(seq);
            }
            Ok(Announced::Superseded) => continue,
            Err(e) if e.kind() == AnnounceErrorKind::Encode => {
                tracing::error!(subject, error = %e, "an alert that cannot be encoded; dropped");
                return None;
            }
            Err(e) => {
                tracing::warn!(subject, error = %e, "cannot announce yet; retrying");
                counters.failed();
                pause(shutdown, backoff.next_delay()).await;
            }
        }
    }
    None
}
