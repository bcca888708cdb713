//! Rebuilding a view from the log, done by the projector that owns it (the only writer).
//!
//! `stockwire rebuild <view>` sends a request to `stockwire.rebuild.{bucket}` with a reply
//! inbox. Each partition's projectors listen in a queue group of their own, so the active
//! instance of every partition answers (a standby is in none). Each replays the whole log,
//! its own products' events into memory (the others passed over by subject), publishing
//! [`Report`]s to that inbox; then writes each of its keys that differs once with its
//! final state (watchers never see a half-replayed value), deletes its keys that should
//! not exist, moves its checkpoint, and goes back to following the log. Events published
//! meanwhile are applied after.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::Context;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::deadletter;
use crate::partition::Partition;
use crate::projection::{Config, Projection};
use crate::read::{ReadError, Reader};
use crate::subjects;
use crate::view::{Change, ViewError, ViewStore};

/// What a rebuilding projector reports to the requester.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Progress {
    /// Replaying the log into memory: `done` of about `total` events.
    Replaying {
        done: u64,
        total: u64,
    },
    /// Writing the keys that differ.
    Writing {
        keys: u64,
    },
    /// Finished: the view now equals a replay of the log up to `checkpoint`.
    Done {
        events: u64,
        written: u64,
        deleted: u64,
        checkpoint: u64,
        millis: u64,
    },
    Failed {
        error: String,
    },
}

/// What one partition's projector reports: its progress, and which partition it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    #[serde(default)]
    pub partition: u32,
    #[serde(default = "one")]
    pub partitions: u32,
    #[serde(flatten)]
    pub progress: Progress,
}

fn one() -> u32 {
    1
}

/// A rebuild request: where to report progress.
pub struct Request {
    reply: Option<async_nats::Subject>,
    client: async_nats::Client,
    partition: Partition,
}

impl Request {
    async fn report(&self, progress: &Progress) {
        let Some(reply) = &self.reply else { return };
        let report = Report {
            partition: self.partition.index(),
            partitions: self.partition.count(),
            progress: progress.clone(),
        };
        if let Ok(body) = serde_json::to_vec(&report) {
            if let Err(e) = self.client.publish(reply.clone(), body.into()).await {
                tracing::warn!(error = %e, "cannot report rebuild progress");
            }
        }
    }
}

/// The rebuild requests of one partition of a view, taken only while this instance is
/// the active one: the requests go to the partition's queue group, and a standby must not
/// be in it.
pub struct Listener {
    client: async_nats::Client,
    bucket: String,
    partition: Partition,
    subscriber: Option<async_nats::Subscriber>,
}

impl Listener {
    /// A listener not yet taking requests (see [`Listener::start`]).
    pub fn new(client: &async_nats::Client, bucket: &str, partition: Partition) -> Self {
        Self {
            client: client.clone(),
            bucket: bucket.to_string(),
            partition,
            subscriber: None,
        }
    }

    /// Joins the queue group, unless already in it.
    pub async fn start(&mut self) {
        if self.subscriber.is_some() {
            return;
        }
        let subject = subjects::rebuild_requests(&self.bucket);
        let group = self.partition.job(&format!("projector-{}", self.bucket));
        match self.client.queue_subscribe(subject.clone(), group).await {
            Ok(s) => self.subscriber = Some(s),
            Err(e) => tracing::error!(%subject, error = %e, "cannot take rebuild requests"),
        }
    }

    /// Leaves the queue group: requests go to the other instances.
    pub fn stop(&mut self) {
        self.subscriber = None;
    }

    /// The next request; pending forever when requests are not taken.
    pub async fn next(&mut self) -> Option<Request> {
        match &mut self.subscriber {
            Some(s) => s.next().await.map(|m| Request {
                reply: m.reply,
                client: self.client.clone(),
                partition: self.partition,
            }),
            None => std::future::pending().await,
        }
    }
}

/// Why a rebuild stopped.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("dead-lettering event {seq}: {source}")]
    DeadLetter {
        seq: u64,
        #[source]
        source: async_nats::Error,
    },
    #[error(transparent)]
    View(#[from] ViewError),
}

/// Rebuilds the view and reports how it went; the caller goes on from the new checkpoint.
pub async fn run<P: Projection>(
    js: &Context,
    projection: &P,
    config: &Config,
    store: &mut ViewStore<P::View>,
    request: Request,
) {
    let bucket = projection.bucket();
    tracing::info!(view = bucket, "rebuild requested");
    let outcome = rebuild(js, projection, config, store, &request).await;
    store.invalidate();
    match outcome {
        Ok(done) => {
            tracing::info!(view = bucket, ?done, "rebuild done");
            request.report(&done).await;
        }
        Err(error) => {
            tracing::error!(view = bucket, %error, "rebuild failed");
            request
                .report(&Progress::Failed {
                    error: error.to_string(),
                })
                .await;
        }
    }
}

async fn rebuild<P: Projection>(
    js: &Context,
    projection: &P,
    config: &Config,
    store: &mut ViewStore<P::View>,
    request: &Request,
) -> Result<Progress, RebuildError> {
    let started = Instant::now();
    let bucket = projection.bucket();
    let partition = store.partition();
    let mut reader = Reader::open(js, subjects::INVENTORY_STREAM, &projection.filter(), 1).await?;
    let total = reader.remaining();
    let mut book: HashMap<String, Option<P::View>> = HashMap::new();
    let (mut events, mut last_seq) = (0u64, 0u64);
    let mut reported = Instant::now();
    request
        .report(&Progress::Replaying { done: 0, total })
        .await;
    while let Some(stored) = reader.next().await {
        let stored = stored?;
        events += 1;
        last_seq = stored.sequence;
        if reported.elapsed() >= Duration::from_millis(200) {
            reported = Instant::now();
            let total = events + reader.remaining();
            request
                .report(&Progress::Replaying {
                    done: events,
                    total,
                })
                .await;
        }
        if !partition.owns_subject(&stored.subject) {
            continue;
        }
        match config.envelope.decode_stored(&stored) {
            Ok(recorded) => {
                let key = projection.key(&recorded.event);
                let slot = book.entry(key).or_insert(None);
                projection.apply(slot, &recorded, stored.sequence);
            }
            Err(error) => deadletter::publish(
                js,
                bucket,
                stored.sequence,
                &stored.subject,
                stored.headers.as_ref(),
                &stored.payload,
                &error,
            )
            .await
            .map_err(|source| RebuildError::DeadLetter {
                seq: stored.sequence,
                source,
            })?,
        }
    }

    // What is there now, with revisions, to write only what differs.
    let current = store.load_all().await?;
    let checkpoint = store.checkpoint().await?.max(last_seq);
    let mut changes: Vec<(String, Change<P::View>)> = Vec::new();
    let mut deleted = 0u64;
    let mut in_view = HashMap::with_capacity(current.len());
    for (key, value) in current {
        if !book.contains_key(&key) {
            changes.push((key.clone(), Change::Delete));
            deleted += 1;
        }
        in_view.insert(key, value);
    }
    let mut keys: Vec<(String, P::View)> = book
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
    keys.sort_by(|a, b| a.0.cmp(&b.0));
    for (key, value) in keys {
        if in_view.get(&key) != Some(&value) {
            changes.push((key, Change::Put(value)));
        }
    }
    let written = changes.len() as u64 - deleted;
    request
        .report(&Progress::Writing {
            keys: changes.len() as u64,
        })
        .await;
    // The checkpoint moves only with the last part of the commit, so a crash in
    // between leaves a view that the projector completes from its old checkpoint.
    store.commit(changes, checkpoint).await?;
    Ok(Progress::Done {
        events,
        written,
        deleted,
        checkpoint,
        millis: started.elapsed().as_millis() as u64,
    })
}
