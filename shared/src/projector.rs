//! The projector loop every view shares: read the log in order from the partition's
//! checkpoint, fold a batch of events per key in memory, commit the touched keys and then
//! the new checkpoint, and go on.
//!
//! A view may be split in partitions (`Config::partition`): each instance applies only
//! its own products' events, passing the others over by their subject, never decoding
//! them, and keeps its own checkpoint. Values not kept in memory (`Config::cache_keys`)
//! are read from the bucket many to a request before a batch is folded, and those the
//! next batch needs while this one is committed.
//!
//! Why it is exactly right:
//! - An ordered consumer delivers every event after the checkpoint, in stream order, with
//!   no gap and no redelivery out of order (on a gap the client recreates it).
//! - A key skips an event whose sequence is not above its `last_seq`, so an event read
//!   twice (after a crash, a conflict, or by a second instance) counts once.
//! - A commit expects each of its keys, and the checkpoint, to be as this projector last
//!   read or wrote them (see `view`): a second writer makes it fail, and this projector
//!   then reloads and redoes from the checkpoint. The checkpoint is stored only after every
//!   key it covers.
//! - An event that cannot be decoded is copied to `DEADLETTER` (once: one subject per
//!   event, expected to be empty) before the checkpoint moves past it.
//!
//! A projection says which events it reads and how one changes its value ([`Projection`]);
//! the rest is here. Rebuild requests arrive on `stockwire.rebuild.{bucket}` (see `rebuild`).
//!
//! Of several instances of a partition, only the one holding its lease (its owning
//! service's name, with `.p{I}` for a split view; see `lease`) reads, commits and takes
//! rebuild requests; the others wait.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, Context};
use futures::StreamExt;
use tokio::sync::mpsc::error::TryRecvError;
use tokio_util::sync::CancellationToken;

use crate::deadletter;
use crate::envelope::{DecodeError, Envelope, Recorded};
use crate::instance::{Counters, Registration};
use crate::lease::{self, Lease, Timing};
use crate::partition::Partition;
use crate::projection::{Config, Projection};
use crate::read;
use crate::rebuild;
use crate::retry::Backoff;
use crate::shutdown::{finish_within, pause, GRACE};
use crate::subjects;
use crate::view::{view_error, Change, ViewError, ViewErrorKind, ViewStore};
use crate::views;

/// Runs the projector until `shutdown` is cancelled. Failures are retried with backoff,
/// opening the view's bucket included (it may be electing a leader, or not set up yet).
pub async fn run<P: Projection>(
    client: async_nats::Client,
    projection: P,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), ViewError> {
    let js = jetstream::new(client.clone());
    let bucket = projection.bucket();
    // On a cluster, opening the bucket times out while its stream elects a leader: wait,
    // as for any other transient failure, until it opens or the service is stopped.
    let mut opening = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
    let mut store: ViewStore<P::View> = loop {
        let opened = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            opened = ViewStore::open_partition(client.clone(), bucket, config.commit_timeout, config.partition, config.cache_keys) => opened,
        };
        match opened {
            Ok(store) => break store,
            Err(e) => {
                tracing::warn!(view = bucket, error = %e, "cannot open the view yet; retrying");
                pause(&shutdown, opening.next_delay()).await;
                if shutdown.is_cancelled() {
                    return Ok(());
                }
            }
        }
    };
    store.expire_with(P::expires);
    let partition = config.partition;
    let mut rebuilds = rebuild::Listener::new(&client, bucket, partition);
    let mut reconnects = crate::connect::Reconnects::new(&client);
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
    let owner =
        views::by_bucket(bucket).map_or_else(|| format!("projector-{bucket}"), |v| v.owner.into());
    let job = partition.job(&owner);
    let instance = lease::instance_id();
    let lease = Lease::hold(&js, &job, &instance, Timing::default());
    let mut active = lease.active();
    let counters = Arc::new(Counters::default());
    counters.set_partition(partition);
    let registration =
        Registration::start(&client, &owner, &instance, lease.active(), counters.clone()).await;
    tracing::info!(view = bucket, %partition, "projector started");

    // Stopped between batches, or cut short after a grace (see `finish_within`): every
    // commit is a compare-and-set and the checkpoint comes last, so a commit left midway
    // is redone from the checkpoint by the next instance.
    let working = async {
        'restart: loop {
            if shutdown.is_cancelled() {
                break;
            }
            if !*active.borrow_and_update() {
                // A standby reads nothing and takes no rebuild request; what it cached may be
                // stale by the time it takes over.
                rebuilds.stop();
                store.invalidate();
                tracing::info!(view = bucket, job, "standing by");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    held = active.wait_for(|a| *a) => if held.is_err() { break },
                }
                tracing::info!(view = bucket, job, "active");
                continue;
            }
            rebuilds.start().await;
            // One pass over the bucket beats a round trip per key on first touch.
            if !store.is_complete() {
                if let Err(e) = store.warm().await {
                    tracing::warn!(view = bucket, error = %e, "cannot read the view; retrying");
                    counters.failed();
                    pause(&shutdown, backoff.next_delay()).await;
                    continue;
                }
            }
            let checkpoint = match store.checkpoint().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(view = bucket, error = %e, "cannot read checkpoint; retrying");
                    counters.failed();
                    pause(&shutdown, backoff.next_delay()).await;
                    continue;
                }
            };
            let messages = match read::messages_from(
                &js,
                subjects::INVENTORY_STREAM,
                &projection.filter(),
                checkpoint + 1,
            )
            .await
            {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(view = bucket, error = %e, "cannot read the log; retrying");
                    counters.failed();
                    pause(&shutdown, backoff.next_delay()).await;
                    continue;
                }
            };
            // Reading and decoding run ahead in their own task while a batch is committed.
            let (reader, incoming) = spawn_reader(
                messages,
                checkpoint + 1,
                partition,
                config.envelope.clone(),
                config.max_batch,
            );
            let _stop_reader = AbortOnDrop(reader);
            let mut incoming = Ahead::new(incoming);
            tracing::info!(view = bucket, checkpoint, "reading the log");
            let mut ticker = projection.tick_every().map(|every| {
                let mut t = tokio::time::interval(every);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            });
            loop {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break 'restart,
                    _ = next_tick(&mut ticker) => {
                        if let Err(e) = store.update_each(|value| projection.tick(value)).await {
                            tracing::warn!(view = bucket, error = %e, "tick not committed; reloading");
                            counters.failed();
                            store.invalidate();
                            pause(&shutdown, backoff.next_delay()).await;
                            continue 'restart;
                        }
                    }
                    Ok(()) = active.changed() => {
                        if !*active.borrow() {
                            // Another instance holds the lease: stop now (a late commit of
                            // ours would be refused or redone harmlessly).
                            continue 'restart;
                        }
                    }
                    _ = reconnects.changed() => {
                        // The server may have restarted: read on from the checkpoint with a
                        // new consumer now, rather than once heartbeats are missed.
                        tracing::info!(view = bucket, "reconnected; reopening the log");
                        continue 'restart;
                    }
                    request = rebuilds.next() => {
                        if let Some(request) = request {
                            rebuild::run(&js, &projection, &config, &mut store, request).await;
                        }
                        continue 'restart;
                    }
                    first = incoming.recv() => {
                        let Some(first) = first else {
                            tracing::warn!(view = bucket, "the log reader ended; reopening");
                            continue 'restart;
                        };
                        let chunk = fill_batch(first, &mut incoming, config.max_batch, config.live_linger).await;
                        // Events of this partition (the others are passed over, not applied).
                        let events = chunk.iter().filter(|i| matches!(i, Ok(Incoming { decoded: Some(_), .. }))).count() as u64;
                        let lag = chunk.last().and_then(|i| i.as_ref().ok()).map_or(0, |i| i.pending);
                        match apply_chunk(&js, &projection, &mut store, chunk, &mut incoming, config.max_batch).await {
                            Ok(()) => {
                                backoff.reset();
                                counters.applied(events);
                                counters.committed();
                                counters.set_lag(lag);
                            }
                            Err(e) => {
                                counters.failed();
                                match e.kind() {
                                    ViewErrorKind::Conflict => tracing::info!(view = bucket, "another writer moved the view; reloading"),
                                    _ => tracing::warn!(view = bucket, error = %e, "batch not committed; redoing from the checkpoint"),
                                }
                                store.invalidate();
                                pause(&shutdown, backoff.next_delay()).await;
                                continue 'restart;
                            }
                        }
                    }
                }
            }
        }
    };
    if finish_within(&shutdown, GRACE, working).await.is_none() {
        tracing::warn!(
            view = bucket,
            "stopped with a request unanswered; the next instance redoes it"
        );
    }
    rebuilds.stop();
    registration.stop().await;
    lease.release().await;
    tracing::info!(view = bucket, "projector stopped");
    Ok(())
}

async fn next_tick(ticker: &mut Option<tokio::time::Interval>) {
    match ticker {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Takes what has arrived, and while the log says many more events are waiting (the
/// projector is catching up), waits for them too, up to `max` events: a larger batch
/// touches the same keys fewer times. When it is live, it commits at once, or after
/// `live_linger`.
async fn fill_batch(
    first: Result<Incoming, String>,
    incoming: &mut Ahead,
    max: usize,
    live_linger: Duration,
) -> Vec<Result<Incoming, String>> {
    let live_until = tokio::time::Instant::now() + live_linger;
    let mut more = matches!(&first, Ok(i) if i.pending >= CATCHING_UP);
    let mut chunk = vec![first];
    while chunk.len() < max {
        let next = match incoming.try_recv() {
            Ok(next) => next,
            Err(_) if more => match tokio::time::timeout(LINGER, incoming.recv()).await {
                Ok(Some(next)) => next,
                _ => break,
            },
            Err(_) if !live_linger.is_zero() => {
                match tokio::time::timeout_at(live_until, incoming.recv()).await {
                    Ok(Some(next)) => next,
                    _ => break,
                }
            }
            Err(_) => break,
        };
        more = matches!(&next, Ok(i) if i.pending >= CATCHING_UP);
        chunk.push(next);
    }
    chunk
}

/// How long a batch waits for an event the log says is coming.
const LINGER: Duration = Duration::from_millis(50);

/// Events waiting in the log from which the projector is catching up (and fills its
/// batches); below it, it is live and commits what it has at once, for latency.
const CATCHING_UP: u64 = 256;

/// The events the reader has sent, with those already looked at (to read their keys
/// ahead) kept in front.
struct Ahead {
    looked_at: VecDeque<Result<Incoming, String>>,
    rx: tokio::sync::mpsc::Receiver<Result<Incoming, String>>,
}

impl Ahead {
    fn new(rx: tokio::sync::mpsc::Receiver<Result<Incoming, String>>) -> Self {
        Self {
            looked_at: VecDeque::new(),
            rx,
        }
    }

    async fn recv(&mut self) -> Option<Result<Incoming, String>> {
        match self.looked_at.pop_front() {
            Some(next) => Some(next),
            None => self.rx.recv().await,
        }
    }

    fn try_recv(&mut self) -> Result<Result<Incoming, String>, TryRecvError> {
        match self.looked_at.pop_front() {
            Some(next) => Ok(next),
            None => self.rx.try_recv(),
        }
    }

    /// The keys of the events already here, up to `max` events: what the next batch
    /// will read or write.
    fn next_keys<P: Projection>(&mut self, projection: &P, max: usize) -> Vec<String> {
        while self.looked_at.len() < max {
            match self.rx.try_recv() {
                Ok(next) => self.looked_at.push_back(next),
                Err(_) => break,
            }
        }
        self.looked_at
            .iter()
            .filter_map(|item| match item {
                Ok(Incoming {
                    decoded: Some(Ok(recorded)),
                    ..
                }) => Some(projection.key(&recorded.event)),
                _ => None,
            })
            .collect()
    }
}

/// One event read from the log, decoded (or why it could not be).
struct Incoming {
    seq: u64,
    /// Events after this one still to be delivered, as the server counted.
    pending: u64,
    /// When the server stored it, ms since the epoch.
    stored_ms: i64,
    /// `None`: an event of another partition, passed over undecoded (it still moves the
    /// checkpoint on).
    decoded: Option<Result<Recorded, Box<Poison>>>,
}

/// An event that cannot be decoded, kept whole for its dead letter.
struct Poison {
    error: DecodeError,
    subject: String,
    headers: Option<async_nats::HeaderMap>,
    payload: bytes::Bytes,
}

/// Aborts the task when dropped (the reader of a loop that restarts).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads the ordered consumer from `first_seq` and decodes the events of `partition` (the
/// others by their subject alone, never decoded), up to `2 * max_batch` events ahead of
/// what the loop has taken (which looks at up to `max_batch` more, see [`Ahead`]). A read error ends the channel, and the projector restarts from its checkpoint.
/// An event before the next one expected is passed over (a consumer re-created before its
/// first message starts over from the beginning: see `read`).
fn spawn_reader(
    mut messages: jetstream::consumer::pull::Ordered,
    first_seq: u64,
    partition: Partition,
    envelope: Envelope,
    max_batch: usize,
) -> (
    tokio::task::JoinHandle<()>,
    tokio::sync::mpsc::Receiver<Result<Incoming, String>>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(2 * max_batch.max(1));
    let task = tokio::spawn(async move {
        let mut next_seq = first_seq;
        while let Some(item) = messages.next().await {
            if let Ok(msg) = &item {
                if msg.info().is_ok_and(|info| info.stream_sequence < next_seq) {
                    continue;
                }
            }
            let incoming = item
                .map_err(|e| format!("reading the log: {e}"))
                .and_then(|msg| {
                    let info = msg
                        .info()
                        .map_err(|e| format!("reading a message's sequence: {e}"))?;
                    let (seq, pending) = (info.stream_sequence, info.pending);
                    let stored_ms = crate::read::stored_ms(&info);
                    let decoded = partition.owns_subject(&msg.subject).then(|| {
                        envelope
                            .decode(&msg.subject, msg.headers.as_ref(), &msg.payload, stored_ms)
                            // The raw message is kept only for a dead letter.
                            .map_err(|error| {
                                Box::new(Poison {
                                    error,
                                    subject: msg.subject.to_string(),
                                    headers: msg.headers.clone(),
                                    payload: msg.payload.clone(),
                                })
                            })
                    });
                    Ok(Incoming {
                        seq,
                        pending,
                        stored_ms,
                        decoded,
                    })
                });
            let failed = incoming.is_err();
            if let Ok(incoming) = &incoming {
                next_seq = incoming.seq + 1;
            }
            if tx.send(incoming).await.is_err() || failed {
                return;
            }
        }
    });
    (task, rx)
}

/// Folds a batch of events per key and commits it with the checkpoint, reading meanwhile
/// the keys of the events that have arrived since (the next batch's).
async fn apply_chunk<P: Projection>(
    js: &Context,
    projection: &P,
    store: &mut ViewStore<P::View>,
    chunk: Vec<Result<Incoming, String>>,
    incoming: &mut Ahead,
    max_batch: usize,
) -> Result<(), ViewError> {
    let bucket = projection.bucket();
    let mut pending = Pending::default();
    let mut last_seq = 0;
    if tracing::enabled!(tracing::Level::DEBUG) {
        let oldest_ms = chunk
            .iter()
            .filter_map(|item| item.as_ref().ok().map(|i| i.stored_ms))
            .min();
        if let Some(oldest_ms) = oldest_ms {
            // How long the oldest event of the batch waited in the log before we took it up.
            let waited_ms = chrono::Utc::now().timestamp_millis() - oldest_ms;
            tracing::debug!(
                view = bucket,
                events = chunk.len(),
                waited_ms,
                "applying a batch"
            );
        }
    }
    let chunk = chunk
        .into_iter()
        .map(|item| {
            item.map_err(|why| view_error(ViewErrorKind::Read, bucket, "reading the log", why))
        })
        .collect::<Result<Vec<_>, _>>()?;
    // The keys not in memory are read from the bucket many to a request, before the fold.
    let keys: Vec<String> = chunk
        .iter()
        .filter_map(|msg| match &msg.decoded {
            Some(Ok(recorded)) => Some(projection.key(&recorded.event)),
            _ => None,
        })
        .collect();
    let reading = std::time::Instant::now();
    store.prepare(keys.iter().map(String::as_str)).await?;
    tracing::debug!(
        view = bucket,
        keys = keys.len(),
        ms = reading.elapsed().as_secs_f64() * 1000.0,
        "keys in memory"
    );
    let mut keys = keys.into_iter();
    for msg in chunk {
        let seq = msg.seq;
        match &msg.decoded {
            None => {}
            Some(Err(poison)) => {
                let Poison {
                    error,
                    subject,
                    headers,
                    payload,
                } = poison.as_ref();
                tracing::warn!(view = bucket, stream_seq = seq, %subject, %error, "dead-lettering an event");
                deadletter::publish(js, bucket, seq, subject, headers.as_ref(), payload, error)
                    .await
                    .map_err(|e| {
                        view_error(
                            ViewErrorKind::Write,
                            bucket,
                            &format!("dead-lettering event {seq}"),
                            e,
                        )
                    })?;
            }
            Some(Ok(recorded)) => {
                let Some(key) = keys.next() else { break };
                let at = match pending.find(&key) {
                    Some(at) => at,
                    None => {
                        let current = store.get(&key).await?;
                        pending.insert(key, current)
                    }
                };
                pending.apply(at, |view| projection.apply(view, recorded, seq));
            }
        }
        last_seq = seq;
    }
    if last_seq > 0 {
        let next = if store.is_complete() {
            Vec::new()
        } else {
            incoming.next_keys(projection, max_batch)
        };
        store
            .commit_and_read(pending.take(), last_seq, next)
            .await?;
    }
    Ok(())
}

/// The values a batch touched, in the order first touched, and whether it changed them.
struct Pending<V> {
    index: HashMap<String, usize>,
    touched: Vec<(String, Option<V>, bool)>,
}

impl<V> Default for Pending<V> {
    fn default() -> Self {
        Self {
            index: HashMap::new(),
            touched: Vec::new(),
        }
    }
}

impl<V> Pending<V> {
    /// Where `key` is, if the batch touched it already.
    fn find(&self, key: &str) -> Option<usize> {
        self.index.get(key).copied()
    }

    /// Takes up `key` with its current value; returns where it is.
    fn insert(&mut self, key: String, current: Option<V>) -> usize {
        let at = self.touched.len();
        self.index.insert(key.clone(), at);
        self.touched.push((key, current, false));
        at
    }

    fn apply(&mut self, at: usize, f: impl FnOnce(&mut Option<V>) -> bool) {
        if let Some((_, value, changed)) = self.touched.get_mut(at) {
            if f(value) {
                *changed = true;
            }
        }
    }

    /// The changed values, to commit; empties the batch.
    fn take(&mut self) -> Vec<(String, Change<V>)> {
        self.index.clear();
        self.touched
            .drain(..)
            .filter_map(|(key, value, changed)| match (value, changed) {
                (Some(v), true) => Some((key, Change::Put(v))),
                _ => None,
            })
            .collect()
    }
}
