//! A view bucket as its owning projector sees it: the values of its partition (every one,
//! or the most recently used up to a limit) in memory, and every change committed
//! together with the partition's checkpoint.
//!
//! Every key of a commit expects its own revision (`Nats-Expected-Last-Subject-Sequence`),
//! as this writer last read or wrote it, and so does the checkpoint: the moment the bucket
//! is not as this writer knows it (another writer, an operator's purge) the commit is
//! refused, and the projector reloads and redoes from the checkpoint. Nothing expects the
//! whole bucket to be unchanged, so the partitions of a split view write side by side.
//! - Small commits (live, a few events at a time) go as single publishes, because
//!   nats-server stages an atomic batch in a store of its own, which costs milliseconds a
//!   live event should not wait.
//! - Large commits (catching up) go as atomic batches of up to 999 keys, a few in flight;
//!   the last one, which carries the checkpoint, only once all the others are stored.
//!
//! Either way the checkpoint goes last. A crash in between leaves keys ahead of the
//! checkpoint, which is harmless: a key skips an event it already holds (`last_seq`), and
//! `verify` compares each key at its own `last_seq`.
//!
//! A split view keeps one checkpoint per partition (`_checkpoint.p{i}`, with the number of
//! partitions in its value; `_checkpoint` when the view is whole). Its position is the
//! lowest checkpoint of the current split ([`Checkpoints`], [`Position`]).

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::kv;
use async_nats::{HeaderMap, HeaderName};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use lru::LruCache;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::batch::{self, MAX_BATCH};
use crate::direct;
use crate::envelope::Outbound;
use crate::error::Error;
use crate::partition::{self, Partition};
use crate::read::Reader;
use crate::retry::{AppendError, Next};
use crate::subjects;

/// The value of a view's checkpoint key (`_checkpoint`, or `_checkpoint.p{i}` for one
/// partition of several): every event of the partition up to `last_seq` is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub last_seq: u64,
    /// Into how many partitions the view was split when this was written (1 for a
    /// checkpoint written before partitions existed).
    #[serde(default = "one")]
    pub partitions: u32,
    /// Where the partition started when the view's partitions last changed: a partition
    /// that starts after this one took over an earlier partition's key starts no later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<u64>,
}

fn one() -> u32 {
    1
}

impl Default for Checkpoint {
    fn default() -> Self {
        Self {
            last_seq: 0,
            partitions: 1,
            from: None,
        }
    }
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

/// A commit ready to send: its changes, their messages, and the checkpoint's.
struct Planned<V> {
    changes: Vec<(String, Change<V>)>,
    messages: Vec<Outbound>,
    checkpoint_message: Outbound,
    checkpoint_revision: u64,
}

/// What a commit stored: each key with its value and revision, and the checkpoint's revision.
struct Committed<V> {
    keys: Vec<(String, Option<V>, u64)>,
    checkpoint_revision: u64,
}

/// One key as this writer knows it.
struct Cached<V> {
    /// `None`: deleted, or never written.
    value: Option<V>,
    /// The stream sequence of the key's last message (0: it has none).
    revision: u64,
}

/// This partition's checkpoint as this writer knows it.
#[derive(Debug, Clone, Copy)]
struct Known {
    value: Checkpoint,
    /// The checkpoint key's revision (0: there is none yet).
    revision: u64,
}

/// Key reads (`multi_last` requests of up to 1,024 keys) in flight at once.
const READS_IN_FLIGHT: usize = 4;

/// One partition of a view bucket (the whole view, unless split), owned by this process.
///
/// It keeps the values it reads and writes in memory: all of them, read in one pass at
/// start (`cache_keys` `None`), or at most `cache_keys`, the least recently used
/// forgotten first; a key not in memory is read from the bucket when a batch needs it,
/// many keys to a request (see `direct`).
pub struct ViewStore<V> {
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    bucket: String,
    timeout: Duration,
    partition: Partition,
    cache: LruCache<String, Cached<V>>,
    cache_keys: Option<usize>,
    /// Every key of the partition is in `cache`: a key not there has no value.
    complete: bool,
    /// The partition was found to hold more than `cache_keys` keys: not read through again.
    too_large_to_warm: bool,
    checkpoint: Option<Known>,
    /// The highest sequence of the bucket this writer stored: a key read from a copy of
    /// the bucket that has not reached it might be older than our own write.
    last_write: u64,
    /// How long a value is kept once written (`None`: for ever); see [`Self::expire_with`].
    expiry: Option<fn(&V) -> Option<Duration>>,
}

impl<V: Serialize + DeserializeOwned + Clone> ViewStore<V> {
    /// Opens the whole bucket, every value kept in memory; `timeout` is the time allowed
    /// for a commit's PubAcks and for a read of many keys.
    pub async fn open(
        client: async_nats::Client,
        bucket: &str,
        timeout: Duration,
    ) -> Result<Self, ViewError> {
        Self::open_partition(client, bucket, timeout, Partition::WHOLE, None).await
    }

    /// Opens `partition` of the bucket, keeping at most `cache_keys` values in memory
    /// (`None`: all of the partition's).
    pub async fn open_partition(
        client: async_nats::Client,
        bucket: &str,
        timeout: Duration,
        partition: Partition,
        cache_keys: Option<usize>,
    ) -> Result<Self, ViewError> {
        let mut js = async_nats::jetstream::new(client.clone());
        js.set_timeout(timeout);
        open_bucket(&js, bucket).await?;
        Ok(Self {
            client,
            js,
            bucket: bucket.to_string(),
            timeout,
            partition,
            cache: LruCache::unbounded(),
            cache_keys,
            complete: false,
            too_large_to_warm: false,
            checkpoint: None,
            last_write: 0,
            expiry: None,
        })
    }

    /// Writes each value with the time to live `expiry` gives it (`Nats-TTL`; the bucket
    /// must allow per-message TTLs), after which the server removes the key. A value this
    /// store still holds after that is refused at its next write (its revision is gone)
    /// and read again, like any value another writer changed.
    pub fn expire_with(&mut self, expiry: fn(&V) -> Option<Duration>) {
        self.expiry = Some(expiry);
    }

    /// The share of the view this store writes.
    pub fn partition(&self) -> Partition {
        self.partition
    }

    /// Forgets what it holds; the next read goes to the bucket again.
    pub fn invalidate(&mut self) {
        self.cache.clear();
        self.complete = false;
        self.checkpoint = None;
        // After a refusal or a failure, what it wrote may be gone (a purge, a bucket made
        // anew): reads no longer wait for it. A stale read then makes a commit refused,
        // never wrong.
        self.last_write = 0;
    }

    /// True when every key of the partition is in memory.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// Reads the partition's keys into memory in one pass (one pass beats a round trip
    /// per key on first touch), up to `cache_keys` of them. A partition found larger than
    /// that is not read through again: its keys are read as batches need them.
    pub async fn warm(&mut self) -> Result<(), ViewError> {
        if self.complete || self.too_large_to_warm {
            return Ok(());
        }
        self.invalidate();
        let (partition, most) = (self.partition, self.cache_keys.unwrap_or(usize::MAX));
        let mut cache = LruCache::unbounded();
        let mut complete = true;
        scan(
            &self.js,
            &self.bucket,
            |key| partition.owns_key(key),
            |key, value: Option<V>, revision| {
                if cache.len() >= most {
                    // Full: the rest is read as batches need it.
                    complete = false;
                    return false;
                }
                cache.put(key, Cached { value, revision });
                true
            },
        )
        .await?;
        self.cache = cache;
        self.complete = complete;
        self.too_large_to_warm = !complete;
        if !complete {
            tracing::info!(view = %self.bucket, partition = %self.partition, cache_keys = most,
                "the partition holds more keys than --cache-keys: reading them as needed");
        }
        Ok(())
    }

    fn nats_error(&self, what: &str, e: impl std::fmt::Display) -> ViewError {
        view_error(ViewErrorKind::Write, &self.bucket, what, e)
    }

    /// The partition's checkpoint: every event of it up to there is applied.
    pub async fn checkpoint(&mut self) -> Result<u64, ViewError> {
        Ok(self.known_checkpoint().await?.value.last_seq)
    }

    /// The partition's checkpoint, read when not known. A partition whose checkpoint was
    /// written for another number of partitions (or not at all, while others exist)
    /// starts where every earlier partition had reached (see [`Checkpoints::start_for`]),
    /// and says so at once in its own checkpoint.
    async fn known_checkpoint(&mut self) -> Result<Known, ViewError> {
        if let Some(known) = self.checkpoint {
            return Ok(known);
        }
        let all =
            Checkpoints::read(&self.client, &self.bucket, self.timeout, self.last_write).await?;
        let own = all.own(self.partition);
        // A checkpoint of its own count written before a later split (1, then 4, then 1
        // again) is a leftover: still a safe start, but maybe far behind.
        let leftover = own.is_some_and(|own| {
            all.found
                .iter()
                .any(|c| c.value.partitions != self.partition.count() && c.revision > own.revision)
        });
        let known = match own {
            Some(own) if !leftover => Known {
                value: own.value,
                revision: own.revision,
            },
            None if all.found.is_empty() => Known {
                value: Checkpoint {
                    partitions: self.partition.count(),
                    ..Checkpoint::default()
                },
                revision: 0,
            },
            _ => {
                // Both are points up to which every event of this partition's products is
                // in their keys; the later one is the better start.
                let start = all
                    .start_for(self.partition)
                    .max(own.map_or(0, |own| own.value.last_seq));
                let value = Checkpoint {
                    last_seq: start,
                    partitions: self.partition.count(),
                    from: Some(start),
                };
                let key = self.partition.checkpoint_key();
                let expected = all.revision_of(&key);
                tracing::info!(view = %self.bucket, partition = %self.partition, start,
                    "the view's partitions changed: starting from the lowest earlier checkpoint");
                let message = self.checkpoint_message(value, expected)?;
                let ack = self.send(message).await?;
                let revision = self.acked(ack).await?;
                self.last_write = self.last_write.max(revision);
                Known { value, revision }
            }
        };
        self.checkpoint = Some(known);
        Ok(known)
    }

    /// The current value of a key of the partition.
    pub async fn get(&mut self, key: &str) -> Result<Option<V>, ViewError> {
        self.prepare([key]).await?;
        Ok(self.cache.get(key).and_then(|c| c.value.clone()))
    }

    /// Brings `keys` into memory: those not there are read from the bucket, up to 1,024 to
    /// a request, a few requests at a time.
    pub async fn prepare<'k>(
        &mut self,
        keys: impl IntoIterator<Item = &'k str>,
    ) -> Result<(), ViewError> {
        if self.complete {
            return Ok(());
        }
        let missing: Vec<String> = keys
            .into_iter()
            .filter(|k| !self.cache.contains(*k))
            .map(str::to_string)
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let read: Vec<Vec<(String, Cached<V>)>> = futures::stream::iter(self.reads(missing))
            .buffered(READS_IN_FLIGHT)
            .try_collect()
            .await?;
        for (key, cached) in read.into_iter().flatten() {
            self.cache.put(key, cached);
        }
        Ok(())
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
        self.commit_and_read(changes, checkpoint, Vec::new()).await
    }

    /// [`commit`](Self::commit), and meanwhile brings `next` into memory: the keys the next
    /// batch will need, read from the bucket while the server stores this commit (none of
    /// them is in it, so the reads cannot miss its writes). A failed read is only logged:
    /// the next batch reads what it lacks.
    pub async fn commit_and_read(
        &mut self,
        changes: Vec<(String, Change<V>)>,
        checkpoint: u64,
        next: Vec<String>,
    ) -> Result<(), ViewError> {
        let started = std::time::Instant::now();
        let keys = changes.len();
        let single = keys <= SINGLE_PUBLISHES_UP_TO;
        let planned = match self.plan(changes, checkpoint).await {
            Ok(planned) => planned,
            Err(e) => {
                // Whatever happened, what we hold may be stale now.
                self.invalidate();
                return Err(e);
            }
        };
        let reads = self.reads(next);
        let (stored, read) = futures::join!(self.publish_planned(planned, single), async move {
            futures::stream::iter(reads)
                .buffered(READS_IN_FLIGHT)
                .try_collect::<Vec<Vec<(String, Cached<V>)>>>()
                .await
        });
        let stored = match stored {
            Ok(stored) => stored,
            Err(e) => {
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
        self.last_write = self.last_write.max(stored.checkpoint_revision);
        for (key, value, revision) in stored.keys {
            self.cache.put(key, Cached { value, revision });
        }
        match read {
            Ok(read) => {
                for (key, cached) in read.into_iter().flatten() {
                    self.cache.get_or_insert(key, || cached);
                }
            }
            Err(e) => tracing::debug!(bucket = %self.bucket, error = %e, "keys not read ahead"),
        }
        if let Some(known) = &mut self.checkpoint {
            known.value.last_seq = checkpoint;
            known.revision = stored.checkpoint_revision;
        }
        if let Some(most) = self.cache_keys {
            while self.cache.len() > most {
                self.cache.pop_lru();
                self.complete = false;
            }
        }
        Ok(())
    }

    /// The reads (up to 1,024 keys each) that bring those of `keys` not in memory into it.
    #[allow(clippy::type_complexity)]
    fn reads(
        &self,
        keys: Vec<String>,
    ) -> Vec<impl std::future::Future<Output = Result<Vec<(String, Cached<V>)>, ViewError>> + use<V>>
    {
        if self.complete {
            return Vec::new();
        }
        let mut missing: Vec<String> = keys
            .into_iter()
            .filter(|k| !self.cache.contains(k))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        // Once it has written, each read also names its own checkpoint, which it knows
        // exists: a copy of the bucket that lacks every key asked for then still says how
        // far it reached, instead of passing for a current one.
        let anchor = (self.last_write > 0).then(|| self.partition.checkpoint_key());
        missing
            .chunks(direct::MAX_SUBJECTS - 1)
            .map(|chunk| {
                read_keys::<V>(
                    self.client.clone(),
                    self.bucket.clone(),
                    chunk.to_vec(),
                    anchor.clone(),
                    self.last_write,
                    self.timeout,
                )
            })
            .collect()
    }

    /// A commit's messages, each key expecting its revision and the checkpoint its own.
    async fn plan(
        &mut self,
        changes: Vec<(String, Change<V>)>,
        checkpoint: u64,
    ) -> Result<Planned<V>, ViewError> {
        let known = self.known_checkpoint().await?;
        self.prepare(changes.iter().map(|(k, _)| k.as_str()))
            .await?;
        let revisions: Vec<u64> = changes
            .iter()
            .map(|(key, _)| self.cache.peek(key).map_or(0, |c| c.revision))
            .collect();
        let value = Checkpoint {
            last_seq: checkpoint,
            ..known.value
        };
        let messages = self.messages(&changes, &revisions)?;
        let checkpoint_message = self.checkpoint_message(value, known.revision)?;
        Ok(Planned {
            changes,
            messages,
            checkpoint_message,
            checkpoint_revision: known.revision,
        })
    }

    /// Stores a planned commit: the keys, then the checkpoint.
    async fn publish_planned(
        &self,
        planned: Planned<V>,
        single: bool,
    ) -> Result<Committed<V>, ViewError> {
        let Planned {
            changes,
            messages,
            checkpoint_message,
            checkpoint_revision,
        } = planned;
        let sequences = if single {
            self.publish_one_by_one(messages, checkpoint_message)
                .await?
        } else {
            self.publish_in_batches(messages, checkpoint_message)
                .await?
        };
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

    /// Stores `messages` in atomic batches of up to [`MAX_KEYS_PER_COMMIT`], a few in
    /// flight, and the last batch, with `checkpoint`, once all the others are stored;
    /// returns the sequence each message was stored at.
    async fn publish_in_batches(
        &self,
        mut messages: Vec<Outbound>,
        checkpoint: Outbound,
    ) -> Result<Vec<u64>, ViewError> {
        // The last part holds the checkpoint; every part before it holds keys only.
        let last_part = messages.len().saturating_sub(1) % MAX_KEYS_PER_COMMIT + 1;
        let mut last = messages.split_off(messages.len().saturating_sub(last_part));
        last.push(checkpoint);

        let mut sequences = Vec::with_capacity(messages.len() + last.len());
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
        Ok(sequences)
    }

    /// The messages of `changes`, each expecting its key at its revision in `revisions`.
    fn messages(
        &self,
        changes: &[(String, Change<V>)],
        revisions: &[u64],
    ) -> Result<Vec<Outbound>, ViewError> {
        let expected = self.expected_header()?;
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
            if let (Change::Put(v), Some(expiry)) = (change, self.expiry) {
                if let Some(ttl) = expiry(v) {
                    message.headers.insert(
                        subjects::NATS_TTL,
                        ttl.as_secs().max(1).to_string().as_str(),
                    );
                }
            }
            messages.push(message);
        }
        Ok(messages)
    }

    /// The message of the partition's checkpoint `value`, expecting its key at `revision`.
    fn checkpoint_message(&self, value: Checkpoint, revision: u64) -> Result<Outbound, ViewError> {
        let payload = serde_json::to_vec(&value)
            .map_err(|e| self.nats_error("encoding the checkpoint", e))?;
        let mut message = kv_message(
            &self.bucket,
            &self.partition.checkpoint_key(),
            Some(payload),
        );
        message
            .headers
            .insert(self.expected_header()?, revision.to_string());
        Ok(message)
    }

    fn expected_header(&self) -> Result<HeaderName, ViewError> {
        subjects::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE
            .parse()
            .map_err(|e| self.nats_error("naming a header", e))
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

    /// Reads every key of the partition (in one pass over the bucket) and returns those
    /// that hold a value, with it. They stay in memory if they fit in `cache_keys`.
    pub async fn load_all(&mut self) -> Result<Vec<(String, V)>, ViewError> {
        self.invalidate();
        let mut values = Vec::new();
        let mut cached = Vec::new();
        let partition = self.partition;
        scan(
            &self.js,
            &self.bucket,
            |key| partition.owns_key(key),
            |key, value: Option<V>, revision| {
                if let Some(v) = &value {
                    values.push((key.clone(), v.clone()));
                }
                cached.push((key, Cached { value, revision }));
                true
            },
        )
        .await?;
        if self.cache_keys.is_none_or(|most| cached.len() <= most) {
            for (key, c) in cached {
                self.cache.put(key, c);
            }
            self.complete = true;
        }
        Ok(values)
    }

    /// Applies `f` to every value of the partition (as time passes) and commits those it
    /// changed, the checkpoint where it is. With every key in memory it walks memory;
    /// otherwise it reads the bucket through once, holding one commit's keys at a time.
    /// Returns how many values changed.
    pub async fn update_each(
        &mut self,
        mut f: impl FnMut(&mut V) -> bool,
    ) -> Result<usize, ViewError> {
        let checkpoint = self.checkpoint().await?;
        let mut changed = 0;
        if self.complete {
            let changes: Vec<(String, Change<V>)> = self
                .cache
                .iter()
                .filter_map(|(key, c)| {
                    let mut value = c.value.clone()?;
                    f(&mut value).then(|| (key.clone(), Change::Put(value)))
                })
                .collect();
            changed = changes.len();
            if !changes.is_empty() {
                self.commit(changes, checkpoint).await?;
            }
            return Ok(changed);
        }
        let partition = self.partition;
        let mut reader = Reader::last_per_subject(
            &self.js,
            &subjects::kv_stream(&self.bucket),
            &subjects::kv_subjects(&self.bucket),
        )
        .await
        .map_err(|e| view_error(ViewErrorKind::Read, &self.bucket, "reading every key", e))?;
        let prefix = subjects::kv_subject(&self.bucket, "");
        let mut changes = Vec::new();
        while let Some(stored) = reader.next().await {
            let stored = stored.map_err(|e| {
                view_error(ViewErrorKind::Read, &self.bucket, "reading every key", e)
            })?;
            let Some(key) = stored.subject.strip_prefix(&prefix) else {
                continue;
            };
            if !partition.owns_key(key) {
                continue;
            }
            // What this writer holds is at least as new as what the read found.
            let (value, revision) = match self.cache.peek(key) {
                Some(c) => (c.value.clone(), None),
                None => (
                    kv_value(&self.bucket, key, stored.headers.as_ref(), &stored.payload),
                    Some(stored.sequence),
                ),
            };
            let Some(mut value) = value else { continue };
            let before = value.clone();
            if f(&mut value) {
                // Only a key that changes is kept, with the revision its commit expects.
                if let Some(revision) = revision {
                    let before = Some(before);
                    self.cache.put(
                        key.to_string(),
                        Cached {
                            value: before,
                            revision,
                        },
                    );
                }
                changes.push((key.to_string(), Change::Put(value)));
            }
            if changes.len() >= MAX_KEYS_PER_COMMIT {
                changed += changes.len();
                self.commit(std::mem::take(&mut changes), checkpoint)
                    .await?;
            }
        }
        changed += changes.len();
        if !changes.is_empty() {
            self.commit(changes, checkpoint).await?;
        }
        Ok(changed)
    }
}

/// `keys` of `bucket` as a copy of it at `at_least` or later holds them (a key without a
/// message: no value, revision 0), asked together with `anchor`, a key known to exist.
async fn read_keys<V: DeserializeOwned>(
    client: async_nats::Client,
    bucket: String,
    keys: Vec<String>,
    anchor: Option<String>,
    at_least: u64,
    timeout: Duration,
) -> Result<Vec<(String, Cached<V>)>, ViewError> {
    let subjects: Vec<String> = keys
        .iter()
        .chain(anchor.iter())
        .map(|k| subjects::kv_subject(&bucket, k))
        .collect();
    let found = direct::last_of(
        &client,
        &subjects::kv_stream(&bucket),
        &subjects,
        at_least,
        timeout,
    )
    .await
    .map_err(|e| view_error(ViewErrorKind::Read, &bucket, "reading keys", e))?;
    let prefix = subjects::kv_subject(&bucket, "");
    let mut by_key: HashMap<String, Cached<V>> = keys
        .into_iter()
        .map(|k| {
            (
                k,
                Cached {
                    value: None,
                    revision: 0,
                },
            )
        })
        .collect();
    for last in found {
        let Some(key) = last.subject.strip_prefix(&prefix) else {
            continue;
        };
        let value = kv_value(&bucket, key, Some(&last.headers), &last.payload);
        if let Some(slot) = by_key.get_mut(key) {
            *slot = Cached {
                value,
                revision: last.sequence,
            };
        }
    }
    Ok(by_key.into_iter().collect())
}

/// A key's value as stored (`None`: deleted, purged, or unreadable, which is logged).
fn kv_value<V: DeserializeOwned>(
    bucket: &str,
    key: &str,
    headers: Option<&HeaderMap>,
    payload: &[u8],
) -> Option<V> {
    let deleted = headers
        .and_then(|h| h.get(subjects::KV_OPERATION))
        .is_some_and(|op| op.as_str() != "PUT");
    if deleted {
        return None;
    }
    match serde_json::from_slice(payload) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::error!(bucket, key, error = %e,
                "unreadable view value; treating it as absent (run `stockwire rebuild`)");
            None
        }
    }
}

/// Reads every key of a bucket once, as it is now (its last message), in one ordered
/// pass that holds nothing but the key at hand: `each` gets each key that is `wanted`
/// (the others are not decoded), its value (`None`: deleted) and its revision, and says
/// whether to go on.
async fn scan<V: DeserializeOwned>(
    js: &async_nats::jetstream::Context,
    bucket: &str,
    wanted: impl Fn(&str) -> bool,
    mut each: impl FnMut(String, Option<V>, u64) -> bool,
) -> Result<(), ViewError> {
    let fail =
        |e: &dyn std::fmt::Display| view_error(ViewErrorKind::Read, bucket, "reading every key", e);
    let mut reader = Reader::last_per_subject(
        js,
        &subjects::kv_stream(bucket),
        &subjects::kv_subjects(bucket),
    )
    .await
    .map_err(|e| fail(&e))?;
    let prefix = subjects::kv_subject(bucket, "");
    while let Some(stored) = reader.next().await {
        let stored = stored.map_err(|e| fail(&e))?;
        let Some(key) = stored.subject.strip_prefix(&prefix) else {
            continue;
        };
        if !wanted(key) {
            continue;
        }
        let value = kv_value(bucket, key, stored.headers.as_ref(), &stored.payload);
        if !each(key.to_string(), value, stored.sequence) {
            break;
        }
    }
    Ok(())
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

/// Every key of a view bucket with its value, system keys (`_checkpoint`...) and deleted
/// keys left out, sorted by key.
pub async fn snapshot<V: DeserializeOwned>(
    js: &async_nats::jetstream::Context,
    bucket: &str,
) -> Result<Vec<(String, V)>, ViewError> {
    open_bucket(js, bucket).await?;
    let mut out = Vec::new();
    scan(
        js,
        bucket,
        |key| !key.starts_with('_'),
        |key, value, _| {
            if let Some(v) = value {
                out.push((key, v));
            }
            true
        },
    )
    .await?;
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// One checkpoint key of a view as stored.
#[derive(Debug, Clone)]
struct StoredCheckpoint {
    key: String,
    index: u32,
    value: Checkpoint,
    revision: u64,
}

impl StoredCheckpoint {
    /// Whether the key is the one its own count of partitions names (else it is not
    /// one of ours to read).
    fn is_well_formed(&self) -> bool {
        self.value.partitions <= partition::MAX_PARTITIONS
            && self.index < self.value.partitions
            && partition::checkpoint_key(self.index, self.value.partitions) == self.key
    }
}

/// Every checkpoint key of a view: `_checkpoint` and `_checkpoint.p{i}`.
#[derive(Debug, Clone, Default)]
pub struct Checkpoints {
    found: Vec<StoredCheckpoint>,
}

impl Checkpoints {
    /// Reads them all in one request, from a copy of the bucket at `at_least` or later.
    pub async fn read(
        client: &async_nats::Client,
        bucket: &str,
        timeout: Duration,
        at_least: u64,
    ) -> Result<Self, ViewError> {
        let subjects = [
            subjects::kv_subject(bucket, subjects::CHECKPOINT_KEY),
            subjects::kv_subject(bucket, &format!("{}.*", subjects::CHECKPOINT_KEY)),
        ];
        let found = direct::last_of(
            client,
            &subjects::kv_stream(bucket),
            &subjects,
            at_least,
            timeout,
        )
        .await
        .map_err(|e| view_error(ViewErrorKind::Read, bucket, "reading the checkpoints", e))?;
        let prefix = subjects::kv_subject(bucket, "");
        let found = found
            .into_iter()
            .filter_map(|last| {
                let key = last.subject.strip_prefix(&prefix)?.to_string();
                let index = partition::index_of_checkpoint_key(&key)?;
                let value: Checkpoint = kv_value(bucket, &key, Some(&last.headers), &last.payload)?;
                Some(StoredCheckpoint {
                    key,
                    index,
                    value,
                    revision: last.sequence,
                })
            })
            .filter(StoredCheckpoint::is_well_formed)
            .collect();
        Ok(Self { found })
    }

    /// Into how many partitions the view is split now: as the checkpoint written last
    /// says (1 when there is none).
    pub fn partitions(&self) -> u32 {
        self.found
            .iter()
            .max_by_key(|c| c.revision)
            .map_or(1, |c| c.value.partitions)
    }

    /// Where every partition of the current split stands.
    pub fn position(&self) -> Position {
        let partitions = self.partitions();
        let checkpoints = (0..partitions)
            .map(|i| {
                let p = Partition::new(i, partitions).ok()?;
                self.own(p).map(|c| c.value.last_seq)
            })
            .collect();
        Position {
            partitions,
            checkpoints,
        }
    }

    /// The checkpoint of `partition` for its own count of partitions, if there is one.
    fn own(&self, partition: Partition) -> Option<&StoredCheckpoint> {
        let key = partition.checkpoint_key();
        self.found
            .iter()
            .find(|c| c.key == key && c.value.partitions == partition.count())
    }

    /// The revision of checkpoint key `key` (0: none).
    fn revision_of(&self, key: &str) -> u64 {
        self.found
            .iter()
            .find(|c| c.key == key)
            .map_or(0, |c| c.revision)
    }

    /// Where `partition`, which has no checkpoint of its own count, starts: the lowest
    /// checkpoint of the split written last before its own, where each partition of it
    /// whose key a partition of the new split has taken over counts as where that one
    /// started (`from`), and one never written as 0. Every event of this partition's
    /// products up to there is in its key, so the keys skip by `last_seq` whatever it
    /// reads again.
    fn start_for(&self, partition: Partition) -> u64 {
        let count = partition.count();
        let started: Vec<u64> = self
            .found
            .iter()
            .filter(|c| c.value.partitions == count)
            .filter_map(|c| c.value.from)
            .collect();
        let earlier = self
            .found
            .iter()
            .filter(|c| c.value.partitions != count)
            .max_by_key(|c| c.revision)
            .map(|c| c.value.partitions);
        let earlier_lowest = earlier.map(|n| {
            (0..n)
                .map(|i| {
                    let key = partition::checkpoint_key(i, n);
                    match self.found.iter().find(|c| c.key == key) {
                        Some(c) if c.value.partitions == n => c.value.last_seq,
                        Some(c) => c.value.from.unwrap_or(0),
                        None => 0,
                    }
                })
                .min()
                .unwrap_or(0)
        });
        earlier_lowest.into_iter().chain(started).min().unwrap_or(0)
    }
}

/// Where a view stands: the checkpoint of each partition of the current split (`None`:
/// no instance of that partition has started yet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Position {
    pub partitions: u32,
    pub checkpoints: Vec<Option<u64>>,
}

impl Position {
    /// Every event up to here is applied in every partition: the view's position.
    pub fn lowest(&self) -> u64 {
        self.checkpoints
            .iter()
            .map(|c| c.unwrap_or(0))
            .min()
            .unwrap_or(0)
    }

    /// Where the partition of the product `sku` in `warehouse` stands.
    pub fn of_product(&self, warehouse: &str, sku: &str) -> u64 {
        let index = partition::of(warehouse, sku, self.partitions) as usize;
        self.checkpoints.get(index).copied().flatten().unwrap_or(0)
    }
}

/// How long a reader waits for the checkpoints.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The view's position, read by anyone: every event up to it is applied in every
/// partition (0 when nothing is).
pub async fn read_checkpoint(client: &async_nats::Client, bucket: &str) -> Result<u64, ViewError> {
    Ok(position(client, bucket, READ_TIMEOUT).await?.lowest())
}

/// Where the view in `bucket` stands, read by anyone.
pub async fn position(
    client: &async_nats::Client,
    bucket: &str,
    timeout: Duration,
) -> Result<Position, ViewError> {
    Ok(Checkpoints::read(client, bucket, timeout, 0)
        .await?
        .position())
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
