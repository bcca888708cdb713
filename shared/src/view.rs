//! A view bucket as its owning projector sees it: every value in memory, and every change
//! committed together with the `_checkpoint`.
//!
//! Two ways to commit, each refused whole or in part the moment the bucket is not as this
//! writer knows it (another writer, an operator's purge); the projector then reloads and
//! redoes from the checkpoint:
//! - Large commits (catching up) go as one atomic batch whose first message carries
//!   `Nats-Expected-Last-Sequence`, the bucket stream's last sequence as we know it: stored
//!   only if nothing at all was written since. One check per commit, not one per key.
//!   Beyond 999 keys, several such batches go one after another, each expecting the
//!   stream to end where the one before it ends.
//! - Small commits (live, a few events at a time) go as single publishes, because
//!   nats-server stages an atomic batch in a store of its own, which costs milliseconds a
//!   live event should not wait. Each key carries its own revision
//!   (`Nats-Expected-Last-Subject-Sequence`), so a stale value never overwrites a newer
//!   one, and the checkpoint goes only once every key is stored. A crash in between leaves
//!   keys ahead of the checkpoint, which is harmless: a key skips an event it already holds
//!   (`last_seq`), and `verify` compares each key at its own `last_seq`.
//!
//! The checkpoint also carries its revision, so it never moves past an event that is not
//! in every key it changes, and a purged bucket is noticed on the next commit.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};
use async_nats::{HeaderMap, HeaderName};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::batch::{self, MAX_BATCH};
use crate::envelope::Outbound;
use crate::error::Error;
use crate::retry::{AppendError, Next};
use crate::subjects;

/// The value of a view's `_checkpoint` key: every event up to `last_seq` is applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub last_seq: u64,
}

/// Keys besides the checkpoint one commit may hold.
pub const MAX_KEYS_PER_COMMIT: usize = MAX_BATCH - 1;

/// Keys a commit writes as single publishes rather than as an atomic batch, at most.
/// Measured with `stockwire bench` (fsync before ack): an atomic batch costs 3-5 ms
/// whatever its size, a single publish about 0.4 ms plus its share of the disk. Of 4, 8
/// and 16, 8 gave the lowest alert latency at 1,000 events/s; at 4 the projector tips
/// into atomic batches and stays there.
pub const SINGLE_PUBLISHES_UP_TO: usize = 8;

/// Parts of a commit (atomic batches of keys) sent before the oldest is acknowledged.
const PARTS_IN_FLIGHT: usize = 3;

/// Why a view could not be read or written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViewErrorKind {
    /// Something else changed the bucket since this writer read it: reload, redo.
    Conflict,
    /// Reading the bucket or the log failed.
    Read,
    /// A commit failed for another reason (the source says which).
    Write,
}

impl std::fmt::Display for ViewErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Conflict => "the bucket changed since it was read (another writer?)",
            Self::Read => "reading",
            Self::Write => "writing",
        })
    }
}

pub type ViewError = Error<ViewErrorKind>;

/// A view error of `kind` in `bucket`, doing `what`.
pub(crate) fn view_error(
    kind: ViewErrorKind,
    bucket: &str,
    what: &str,
    source: impl std::fmt::Display,
) -> ViewError {
    ViewError::with_source(kind, source.to_string()).context(format!("view {bucket}: {what}"))
}

/// A change to one key.
#[derive(Debug, Clone)]
pub enum Change<V> {
    Put(V),
    Delete,
}

impl<V> Change<V> {
    /// The key's value after the change (`None`: deleted).
    fn into_value(self) -> Option<V> {
        match self {
            Change::Put(v) => Some(v),
            Change::Delete => None,
        }
    }
}

/// What a commit stored: each key with its value and revision, and the checkpoint's revision.
struct Committed<V> {
    keys: Vec<(String, Option<V>, u64)>,
    checkpoint_revision: u64,
}

/// One key as this writer knows it.
struct Cached<V> {
    /// `None`: deleted.
    value: Option<V>,
    /// The stream sequence of the key's last message.
    revision: u64,
}

/// The whole bucket as this writer knows it.
struct Loaded<V> {
    keys: HashMap<String, Cached<V>>,
    checkpoint: Checkpoint,
    /// The checkpoint's revision (0: there is none yet).
    checkpoint_revision: u64,
}

impl<V> Loaded<V> {
    /// The revision each of `changes`' keys is expected at (0: the key has no message).
    fn revisions(&self, changes: &[(String, Change<V>)]) -> Vec<u64> {
        changes
            .iter()
            .map(|(key, _)| self.keys.get(key).map_or(0, |c| c.revision))
            .collect()
    }
}

/// A view bucket owned by this process.
pub struct ViewStore<V> {
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    kv: kv::Store,
    bucket: String,
    timeout: Duration,
    loaded: Option<Loaded<V>>,
}

impl<V: Serialize + DeserializeOwned + Clone> ViewStore<V> {
    /// Opens the bucket; `timeout` is the time allowed for a commit's PubAcks.
    pub async fn open(
        client: async_nats::Client,
        bucket: &str,
        timeout: Duration,
    ) -> Result<Self, ViewError> {
        let mut js = async_nats::jetstream::new(client.clone());
        js.set_timeout(timeout);
        let kv = open_bucket(&js, bucket).await?;
        Ok(Self {
            client,
            js,
            kv,
            bucket: bucket.to_string(),
            timeout,
            loaded: None,
        })
    }

    /// Forgets what it holds; the next read loads the whole bucket again.
    pub fn invalidate(&mut self) {
        self.loaded = None;
    }

    /// Every key that holds a value (none before [`load_all`](Self::load_all)).
    pub fn cached(&self) -> impl Iterator<Item = (&String, &V)> {
        self.loaded
            .iter()
            .flat_map(|l| l.keys.iter())
            .filter_map(|(k, c)| c.value.as_ref().map(|v| (k, v)))
    }

    /// True when the bucket is loaded (after [`load_all`](Self::load_all)).
    pub fn is_complete(&self) -> bool {
        self.loaded.is_some()
    }

    fn nats_error(&self, what: &str, e: impl std::fmt::Display) -> ViewError {
        view_error(ViewErrorKind::Write, &self.bucket, what, e)
    }

    async fn loaded(&mut self) -> Result<&mut Loaded<V>, ViewError> {
        let loaded = match self.loaded.take() {
            Some(loaded) => loaded,
            None => self.fetch().await?,
        };
        Ok(self.loaded.insert(loaded))
    }

    /// The view's checkpoint: every event up to it is applied.
    pub async fn checkpoint(&mut self) -> Result<u64, ViewError> {
        Ok(self.loaded().await?.checkpoint.last_seq)
    }

    /// The current value of a key.
    pub async fn get(&mut self, key: &str) -> Result<Option<V>, ViewError> {
        Ok(self
            .loaded()
            .await?
            .keys
            .get(key)
            .and_then(|c| c.value.clone()))
    }

    /// Commits `changes` and the new checkpoint, if the bucket is still as last read.
    ///
    /// Every key expects its own revision, as this writer last read or wrote it, and the
    /// checkpoint expects its own, so a commit on top of another writer's is refused
    /// (a conflict: reload, redo). Up to [`SINGLE_PUBLISHES_UP_TO`] keys go as single
    /// publishes, then the checkpoint. More go as atomic batches of up to
    /// [`MAX_KEYS_PER_COMMIT`] keys, [`PARTS_IN_FLIGHT`] at a time; the last of them
    /// carries the checkpoint and is sent only once all the others are stored. So the
    /// keys may be ahead of the checkpoint (a projection applies an event to a key only
    /// once), never behind it.
    pub async fn commit(
        &mut self,
        changes: Vec<(String, Change<V>)>,
        checkpoint: u64,
    ) -> Result<(), ViewError> {
        let started = std::time::Instant::now();
        let keys = changes.len();
        let single = keys <= SINGLE_PUBLISHES_UP_TO;
        let stored = if single {
            self.commit_singly(changes, checkpoint).await
        } else {
            self.commit_in_batches(changes, checkpoint).await
        };
        let stored = match stored {
            Ok(stored) => stored,
            Err(e) => {
                // Whatever happened, what we hold may be stale now.
                self.invalidate();
                return Err(e);
            }
        };
        tracing::debug!(
            bucket = %self.bucket,
            keys,
            checkpoint,
            single,
            ms = started.elapsed().as_secs_f64() * 1000.0,
            "committed"
        );
        let loaded = self.loaded().await?;
        for (key, value, revision) in stored.keys {
            loaded.keys.insert(key, Cached { value, revision });
        }
        loaded.checkpoint = Checkpoint {
            last_seq: checkpoint,
        };
        loaded.checkpoint_revision = stored.checkpoint_revision;
        Ok(())
    }

    async fn commit_singly(
        &mut self,
        changes: Vec<(String, Change<V>)>,
        checkpoint: u64,
    ) -> Result<Committed<V>, ViewError> {
        let loaded = self.loaded().await?;
        let (revisions, checkpoint_revision) =
            (loaded.revisions(&changes), loaded.checkpoint_revision);
        let (messages, checkpoint_message) =
            self.messages(&changes, &revisions, checkpoint, checkpoint_revision)?;
        let sequences = self
            .publish_one_by_one(messages, checkpoint_message)
            .await?;
        let checkpoint_revision = sequences.last().copied().unwrap_or(checkpoint_revision);
        Ok(Committed {
            keys: changes
                .into_iter()
                .zip(sequences)
                .map(|((key, change), revision)| (key, change.into_value(), revision))
                .collect(),
            checkpoint_revision,
        })
    }

    async fn commit_in_batches(
        &mut self,
        changes: Vec<(String, Change<V>)>,
        checkpoint: u64,
    ) -> Result<Committed<V>, ViewError> {
        let loaded = self.loaded().await?;
        let (revisions, checkpoint_revision) =
            (loaded.revisions(&changes), loaded.checkpoint_revision);
        let (mut messages, checkpoint_message) =
            self.messages(&changes, &revisions, checkpoint, checkpoint_revision)?;
        // The last part holds the checkpoint; every part before it holds keys only.
        let last_part = (messages.len() - 1) % MAX_KEYS_PER_COMMIT + 1;
        let mut last = messages.split_off(messages.len() - last_part);
        last.push(checkpoint_message);

        // The parts before the last go a few at a time; the last, which moves the
        // checkpoint, only once all of them are stored.
        let mut sequences = Vec::with_capacity(changes.len() + 1);
        let mut pipeline = batch::Pipeline::new(&self.client, self.timeout, PARTS_IN_FLIGHT, None);
        let mut messages = messages.into_iter();
        let mut parts = std::iter::from_fn(|| {
            let part: Vec<Outbound> = messages.by_ref().take(MAX_KEYS_PER_COMMIT).collect();
            (!part.is_empty()).then_some(part)
        });
        let mut refused = None;
        loop {
            while pipeline.has_room() && refused.is_none() {
                let Some(part) = parts.next() else { break };
                if let Err(e) = pipeline.send((), part).await {
                    refused = Some(self.refused(e));
                }
            }
            // A refused part stops the sending; those in flight are still waited for.
            match pipeline.next().await {
                None => break,
                Some((_, Ok(ack))) => sequences.extend(ack.first_sequence()..=ack.sequence),
                Some((_, Err(e))) => {
                    refused.get_or_insert(self.refused(e));
                }
            }
        }
        if let Some(e) = refused {
            return Err(e);
        }
        let ack = batch::publish_atomic(&self.client, last, self.timeout)
            .await
            .map_err(|e| self.refused(e))?;
        sequences.extend(ack.first_sequence()..=ack.sequence);
        if sequences.len() != changes.len() + 1 {
            return Err(self.nats_error(
                "committing",
                format!(
                    "{} messages acknowledged for {} keys and the checkpoint",
                    sequences.len(),
                    changes.len()
                ),
            ));
        }
        let checkpoint_revision = sequences.pop().unwrap_or(checkpoint_revision);
        Ok(Committed {
            keys: changes
                .into_iter()
                .zip(sequences)
                .map(|((key, change), revision)| (key, change.into_value(), revision))
                .collect(),
            checkpoint_revision,
        })
    }

    /// The messages of `changes`, each expecting its key at its revision in `revisions`,
    /// and the checkpoint's, expecting its own revision.
    fn messages(
        &self,
        changes: &[(String, Change<V>)],
        revisions: &[u64],
        checkpoint: u64,
        checkpoint_revision: u64,
    ) -> Result<(Vec<Outbound>, Outbound), ViewError> {
        let expected: HeaderName = subjects::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE
            .parse()
            .map_err(|e| self.nats_error("naming a header", e))?;
        let mut messages = Vec::with_capacity(changes.len() + 1);
        for ((key, change), revision) in changes.iter().zip(revisions) {
            let payload = match change {
                Change::Put(v) => Some(
                    serde_json::to_vec(v)
                        .map_err(|e| self.nats_error(&format!("encoding key {key}"), e))?,
                ),
                Change::Delete => None,
            };
            let mut message = kv_message(&self.bucket, key, payload);
            message
                .headers
                .insert(expected.clone(), revision.to_string());
            messages.push(message);
        }
        let payload = serde_json::to_vec(&Checkpoint {
            last_seq: checkpoint,
        })
        .map_err(|e| self.nats_error("encoding the checkpoint", e))?;
        let mut message = kv_message(&self.bucket, subjects::CHECKPOINT_KEY, Some(payload));
        message
            .headers
            .insert(expected, checkpoint_revision.to_string());
        Ok((messages, message))
    }

    /// Why a part of a commit was not stored: another writer (a conflict), or another failure.
    fn refused(&self, e: AppendError) -> ViewError {
        match e.kind().next() {
            Next::Decide => self.conflict(),
            _ => self.nats_error("committing", e),
        }
    }

    /// Stores `messages` as single publishes, and the checkpoint only once all of them
    /// are stored; returns the sequence each was stored at.
    async fn publish_one_by_one(
        &self,
        messages: Vec<Outbound>,
        checkpoint: Outbound,
    ) -> Result<Vec<u64>, ViewError> {
        let mut acks = Vec::with_capacity(messages.len());
        for msg in messages {
            acks.push(self.send(msg).await?);
        }
        let mut sequences = Vec::with_capacity(acks.len() + 1);
        for ack in acks {
            sequences.push(self.acked(ack).await?);
        }
        let ack = self.send(checkpoint).await?;
        sequences.push(self.acked(ack).await?);
        Ok(sequences)
    }

    async fn send(
        &self,
        msg: Outbound,
    ) -> Result<async_nats::jetstream::context::PublishAckFuture, ViewError> {
        self.js
            .publish_with_headers(msg.subject.clone(), msg.headers, msg.payload)
            .await
            .map_err(|e| self.nats_error(&format!("committing {}", msg.subject), e))
    }

    async fn acked(
        &self,
        ack: async_nats::jetstream::context::PublishAckFuture,
    ) -> Result<u64, ViewError> {
        match ack.await {
            Ok(ack) => Ok(ack.sequence),
            Err(e) => Err(self.refused(AppendError::from(e))),
        }
    }

    fn conflict(&self) -> ViewError {
        ViewError::new(ViewErrorKind::Conflict).context(format!("view {}", self.bucket))
    }

    /// Reads every key of the bucket (checkpoint included); returns the keys that hold a
    /// value, with it, the checkpoint left out.
    pub async fn load_all(&mut self) -> Result<Vec<(String, V)>, ViewError> {
        self.loaded = None;
        let loaded = self.fetch().await?;
        let values = loaded
            .keys
            .iter()
            .filter_map(|(k, c)| c.value.as_ref().map(|v| (k.clone(), v.clone())))
            .collect();
        self.loaded = Some(loaded);
        Ok(values)
    }

    /// Every key of the bucket with its revision, and the checkpoint.
    async fn fetch(&self) -> Result<Loaded<V>, ViewError> {
        let entries = snapshot_entries(&self.js, &self.kv, &self.bucket).await?;
        let mut loaded: Loaded<V> = Loaded {
            keys: HashMap::with_capacity(entries.len()),
            checkpoint: Checkpoint::default(),
            checkpoint_revision: 0,
        };
        for entry in entries {
            if entry.key == subjects::CHECKPOINT_KEY {
                loaded.checkpoint_revision = entry.revision;
                loaded.checkpoint = entry
                    .value
                    .as_deref()
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or_default();
                continue;
            }
            let value = entry
                .value
                .and_then(|bytes| match serde_json::from_slice(&bytes) {
                    Ok(v) => Some(v),
                    Err(e) => {
                        tracing::error!(bucket = %self.bucket, key = %entry.key, error = %e,
                        "unreadable view value; treating it as absent (run `stockwire rebuild`)");
                        None
                    }
                });
            let revision = entry.revision;
            loaded.keys.insert(entry.key, Cached { value, revision });
        }
        Ok(loaded)
    }
}

/// One key of a bucket as it is now.
struct RawEntry {
    key: String,
    /// `None` for a deleted or purged key.
    value: Option<bytes::Bytes>,
    revision: u64,
}

/// Every key's latest entry, read with one history watch (fast for many keys).
async fn snapshot_entries(
    js: &async_nats::jetstream::Context,
    kv: &kv::Store,
    bucket: &str,
) -> Result<Vec<RawEntry>, ViewError> {
    use futures::StreamExt;
    let fail =
        |e: &dyn std::fmt::Display| view_error(ViewErrorKind::Read, bucket, "reading every key", e);
    let mut stream = js
        .get_stream(subjects::kv_stream(bucket))
        .await
        .map_err(|e| fail(&e))?;
    let messages = stream.info().await.map_err(|e| fail(&e))?.state.messages;
    let mut out = Vec::with_capacity(messages as usize);
    if messages == 0 {
        return Ok(out);
    }
    let mut watch = kv.watch_with_history(">").await.map_err(|e| fail(&e))?;
    while let Some(entry) = watch.next().await {
        let entry = entry.map_err(|e| fail(&e))?;
        let done = entry.delta == 0;
        out.push(RawEntry {
            key: entry.key,
            value: (entry.operation == Operation::Put).then_some(entry.value),
            revision: entry.revision,
        });
        if done {
            break;
        }
    }
    Ok(out)
}

/// Opens a view bucket, saying what to do when it is not there.
async fn open_bucket(
    js: &async_nats::jetstream::Context,
    bucket: &str,
) -> Result<kv::Store, ViewError> {
    js.get_key_value(bucket).await.map_err(|e| {
        view_error(
            ViewErrorKind::Read,
            bucket,
            "opening the bucket (run `stockwire setup`?)",
            e,
        )
    })
}

/// Every key of a view bucket with its value, the checkpoint and deleted keys left out,
/// sorted by key.
pub async fn snapshot<V: DeserializeOwned>(
    js: &async_nats::jetstream::Context,
    bucket: &str,
) -> Result<Vec<(String, V)>, ViewError> {
    let kv = open_bucket(js, bucket).await?;
    let mut out = Vec::new();
    for entry in snapshot_entries(js, &kv, bucket).await? {
        let Some(bytes) = entry.value else { continue };
        if entry.key.starts_with('_') {
            continue;
        }
        match serde_json::from_slice(&bytes) {
            Ok(v) => out.push((entry.key, v)),
            Err(e) => tracing::warn!(bucket, key = %entry.key, error = %e, "unreadable view value"),
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// The checkpoint of a view bucket, read by anyone (0 when none).
pub async fn read_checkpoint(kv: &kv::Store) -> Result<u64, async_nats::Error> {
    Ok(match kv.get(subjects::CHECKPOINT_KEY).await? {
        Some(bytes) => serde_json::from_slice::<Checkpoint>(&bytes)?.last_seq,
        None => 0,
    })
}

/// One KV write (or delete) as a raw message.
fn kv_message(bucket: &str, key: &str, payload: Option<Vec<u8>>) -> Outbound {
    let mut headers = HeaderMap::new();
    let payload = match payload {
        Some(p) => Bytes::from(p),
        None => {
            headers.insert(subjects::KV_OPERATION, subjects::KV_OPERATION_DELETE);
            Bytes::new()
        }
    };
    Outbound {
        subject: subjects::kv_subject(bucket, key),
        headers,
        payload,
    }
}
