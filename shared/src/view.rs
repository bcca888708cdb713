//! A view bucket as its owning projector sees it: values cached with their revisions,
//! and every change committed as one atomic batch together with the `_checkpoint`.
//!
//! Each key is written with `Nats-Expected-Last-Subject-Sequence` set to the revision it
//! was read at (0: must not exist), so a stale value refuses the whole commit instead of
//! overwriting a newer one; the checkpoint is part of the same batch, so the view and its
//! checkpoint never disagree, whatever crashes in between.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};
use async_nats::HeaderMap;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::batch::{self, err_code, BatchError, MAX_BATCH};
use crate::envelope::Outbound;
use crate::subjects;

/// The value of a view's `_checkpoint` key: every event up to `last_seq` is applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub last_seq: u64,
}

/// Keys besides the checkpoint one commit may hold.
pub const MAX_KEYS_PER_COMMIT: usize = MAX_BATCH - 1;

#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    /// Another writer changed a key (or the checkpoint) since it was read: reload, redo.
    #[error("view {bucket}: a key changed since it was read (another writer?)")]
    Conflict { bucket: String },
    #[error("view {bucket}: {message}")]
    Nats { bucket: String, message: String },
    #[error("view {bucket}: a commit holds at most {MAX_KEYS_PER_COMMIT} keys, not {keys}")]
    TooLarge { bucket: String, keys: usize },
}

#[derive(Debug, Clone)]
struct Cached<V> {
    value: Option<V>,
    /// The stream sequence of the key's last message; 0 when the key never existed.
    revision: u64,
}

/// A change to one key.
#[derive(Debug, Clone)]
pub enum Change<V> {
    Put(V),
    Delete,
}

/// A view bucket owned by this process.
pub struct ViewStore<V> {
    client: async_nats::Client,
    kv: kv::Store,
    bucket: String,
    timeout: Duration,
    cache: HashMap<String, Cached<V>>,
    /// True when the cache holds every key of the bucket: a miss is then a key that does
    /// not exist, with no round trip to find out.
    complete: bool,
    checkpoint: Option<Cached<Checkpoint>>,
}

impl<V: Serialize + DeserializeOwned + Clone> ViewStore<V> {
    pub async fn open(
        client: async_nats::Client,
        bucket: &str,
        timeout: Duration,
    ) -> Result<Self, ViewError> {
        let js = async_nats::jetstream::new(client.clone());
        let kv = open_bucket(&js, bucket).await?;
        Ok(Self {
            client,
            kv,
            bucket: bucket.to_string(),
            timeout,
            cache: HashMap::new(),
            complete: false,
            checkpoint: None,
        })
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Forgets every cached value; the next reads go to the bucket.
    pub fn invalidate(&mut self) {
        self.cache.clear();
        self.complete = false;
        self.checkpoint = None;
    }

    /// Every cached key that holds a value (all of them after [`load_all`](Self::load_all)).
    pub fn cached(&self) -> impl Iterator<Item = (&String, &V)> {
        self.cache
            .iter()
            .filter_map(|(k, c)| c.value.as_ref().map(|v| (k, v)))
    }

    /// True when every key of the bucket is cached (after [`load_all`](Self::load_all)).
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    fn nats_error(&self, what: &str, e: impl std::fmt::Display) -> ViewError {
        ViewError::Nats {
            bucket: self.bucket.clone(),
            message: format!("{what}: {e}"),
        }
    }

    async fn load<T: DeserializeOwned>(&self, key: &str) -> Result<Cached<T>, ViewError> {
        let entry = self
            .kv
            .entry(key)
            .await
            .map_err(|e| self.nats_error(&format!("reading key {key}"), e))?;
        Ok(match entry {
            None => Cached {
                value: None,
                revision: 0,
            },
            Some(entry) if entry.operation != Operation::Put => Cached {
                value: None,
                revision: entry.revision,
            },
            Some(entry) => Cached {
                value: match serde_json::from_slice(&entry.value) {
                    Ok(v) => Some(v),
                    Err(e) => {
                        tracing::error!(bucket = %self.bucket, key, error = %e,
                            "unreadable view value; treating it as absent (run `stockwire rebuild`)");
                        None
                    }
                },
                revision: entry.revision,
            },
        })
    }

    /// The view's checkpoint: every event up to it is applied.
    pub async fn checkpoint(&mut self) -> Result<u64, ViewError> {
        if let Some(c) = &self.checkpoint {
            return Ok(c.value.map_or(0, |c| c.last_seq));
        }
        let loaded: Cached<Checkpoint> = self.load(subjects::CHECKPOINT_KEY).await?;
        let last_seq = loaded.value.map_or(0, |c| c.last_seq);
        self.checkpoint = Some(loaded);
        Ok(last_seq)
    }

    /// The current value of a key.
    pub async fn get(&mut self, key: &str) -> Result<Option<V>, ViewError> {
        if let Some(c) = self.cache.get(key) {
            return Ok(c.value.clone());
        }
        if self.complete {
            return Ok(None);
        }
        let loaded: Cached<V> = self.load(key).await?;
        let value = loaded.value.clone();
        self.cache.insert(key.to_string(), loaded);
        Ok(value)
    }

    /// Commits `changes` and the new checkpoint as one atomic batch.
    /// Every changed key must have been read with [`get`](Self::get) first.
    pub async fn commit(
        &mut self,
        changes: Vec<(String, Change<V>)>,
        checkpoint: u64,
    ) -> Result<(), ViewError> {
        if changes.len() > MAX_KEYS_PER_COMMIT {
            return Err(ViewError::TooLarge {
                bucket: self.bucket.clone(),
                keys: changes.len(),
            });
        }
        self.checkpoint().await?;
        let mut messages = Vec::with_capacity(changes.len() + 1);
        for (key, change) in &changes {
            let revision = self.cache.get(key).map_or(0, |c| c.revision);
            let payload = match change {
                Change::Put(v) => Some(
                    serde_json::to_vec(v)
                        .map_err(|e| self.nats_error(&format!("encoding key {key}"), e))?,
                ),
                Change::Delete => None,
            };
            messages.push(kv_message(&self.bucket, key, payload, revision));
        }
        let cp_revision = self.checkpoint.as_ref().map_or(0, |c| c.revision);
        let cp = Checkpoint {
            last_seq: checkpoint,
        };
        let cp_payload = serde_json::to_vec(&cp).unwrap_or_default();
        messages.push(kv_message(
            &self.bucket,
            subjects::CHECKPOINT_KEY,
            Some(cp_payload),
            cp_revision,
        ));

        let started = std::time::Instant::now();
        match batch::publish_atomic(&self.client, &messages, self.timeout).await {
            Ok(ack) => {
                tracing::debug!(
                    bucket = %self.bucket,
                    keys = changes.len(),
                    checkpoint,
                    ms = started.elapsed().as_secs_f64() * 1000.0,
                    "committed"
                );
                let first = ack.first_sequence();
                for (i, (key, change)) in changes.into_iter().enumerate() {
                    let value = match change {
                        Change::Put(v) => Some(v),
                        Change::Delete => None,
                    };
                    self.cache.insert(
                        key,
                        Cached {
                            value,
                            revision: first + i as u64,
                        },
                    );
                }
                self.checkpoint = Some(Cached {
                    value: Some(cp),
                    revision: ack.sequence,
                });
                Ok(())
            }
            Err(e) => {
                // Whatever happened, what we hold may be stale now.
                self.invalidate();
                match e {
                    BatchError::Refused { err_code: code, .. }
                        if code == err_code::WRONG_LAST_SEQUENCE =>
                    {
                        Err(ViewError::Conflict {
                            bucket: self.bucket.clone(),
                        })
                    }
                    other => Err(self.nats_error("committing", other)),
                }
            }
        }
    }

    /// Reads every key of the bucket (checkpoint included) into the cache; returns the
    /// keys that hold a value, with it, the checkpoint left out.
    pub async fn load_all(&mut self) -> Result<Vec<(String, V)>, ViewError> {
        let js = async_nats::jetstream::new(self.client.clone());
        let entries = snapshot_entries(&js, &self.kv, &self.bucket).await?;
        let mut values = Vec::new();
        self.invalidate();
        for entry in entries {
            if entry.key == subjects::CHECKPOINT_KEY {
                self.checkpoint = Some(Cached {
                    value: entry
                        .value
                        .as_deref()
                        .and_then(|b| serde_json::from_slice(b).ok()),
                    revision: entry.revision,
                });
                continue;
            }
            let value: Option<V> = entry.value.as_deref().and_then(|b| match serde_json::from_slice(b) {
                Ok(v) => Some(v),
                Err(e) => {
                    tracing::error!(bucket = %self.bucket, key = %entry.key, error = %e, "unreadable view value");
                    None
                }
            });
            if let Some(v) = &value {
                values.push((entry.key.clone(), v.clone()));
            }
            self.cache.insert(
                entry.key,
                Cached {
                    value,
                    revision: entry.revision,
                },
            );
        }
        self.complete = true;
        Ok(values)
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
    let fail = |e: &dyn std::fmt::Display| ViewError::Nats {
        bucket: bucket.to_string(),
        message: format!("reading every key: {e}"),
    };
    let mut stream = js
        .get_stream(subjects::kv_stream(bucket))
        .await
        .map_err(|e| fail(&e))?;
    let held = stream.info().await.map_err(|e| fail(&e))?.state.messages;
    let mut out = Vec::with_capacity(held as usize);
    if held == 0 {
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
    js.get_key_value(bucket).await.map_err(|e| ViewError::Nats {
        bucket: bucket.to_string(),
        message: format!("opening bucket (run `stockwire setup`?): {e}"),
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

/// One KV write (or delete) as a raw message with its expected revision.
fn kv_message(bucket: &str, key: &str, payload: Option<Vec<u8>>, revision: u64) -> Outbound {
    let mut headers = HeaderMap::new();
    headers.insert(
        subjects::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
        revision.to_string().as_str(),
    );
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
