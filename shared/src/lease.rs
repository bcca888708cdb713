//! One active instance per job: a lease key in the `leases` bucket, with a time to live.
//!
//! Any service may run in several instances; the one holding its job's lease does the
//! work, the others wait to take over. The lease is a KV key named after the job whose
//! value is the holder's instance id, written with a per-message TTL (`Nats-TTL`):
//! - taking it is a write expecting the key to be empty (never written, expired, or
//!   released), so of two instances exactly one gets it;
//! - the holder renews it well before it expires, each write expecting the revision it
//!   wrote last; a refused renewal means another instance holds it now;
//! - a holder that dies (SIGKILL) stops renewing, the server drops the key when its TTL
//!   runs out, and a standby polling the key takes it: take-over within TTL + poll interval;
//! - a clean stop deletes the key (expecting its revision), so a standby takes over at once;
//!   a stop never waits on the server for more than [`RELEASE_WITHIN`]: a request still in
//!   flight is abandoned (a cluster node that died may hold its answer for seconds), and a
//!   lease the server does not delete in time expires as after a crash.
//!
//! Correctness never depends on it (every write Stockwire makes to a view or to `ALERTS`
//! is a compare-and-set, so a second writer is harmless); the lease only saves the work
//! of two instances doing the same thing.

use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::kv::{Operation, Store};
use async_nats::jetstream::Context;
use async_nats::HeaderMap;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::shutdown::pause;
use crate::subjects;

/// How long a lease lives unrenewed, how often it is renewed, and how often a standby
/// looks whether it is free.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Time to live of each write; whole seconds, at least one.
    pub ttl: Duration,
    pub renew_every: Duration,
    pub poll_every: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(3),
            renew_every: Duration::from_secs(1),
            poll_every: Duration::from_millis(250),
        }
    }
}

/// How long a clean stop waits for the server to delete the lease.
pub const RELEASE_WITHIN: Duration = Duration::from_millis(300);

/// This instance's id: `STOCKWIRE_INSTANCE_ID` when set (1 to 64 of `A-Z a-z 0-9 _ -`:
/// it names a subject too), else a fresh UUID (one per service run: a process runs one
/// service).
pub fn instance_id() -> String {
    let valid = |id: &String| {
        (1..=64).contains(&id.len())
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    match std::env::var("STOCKWIRE_INSTANCE_ID").ok() {
        Some(id) if valid(&id) => id,
        Some(id) => {
            tracing::warn!(%id, "STOCKWIRE_INSTANCE_ID is not 1 to 64 of A-Z a-z 0-9 _ -; using a UUID");
            uuid::Uuid::new_v4().to_string()
        }
        None => uuid::Uuid::new_v4().to_string(),
    }
}

/// The lease of one job, held (or waited for) by a task of its own. Dropping it stops
/// the task without releasing the lease, as a crash would: call [`Lease::release`] on a
/// clean stop.
pub struct Lease {
    active: watch::Receiver<bool>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Lease {
    /// Competes for `job`'s lease as `instance` until released or dropped.
    pub fn hold(js: &Context, job: &str, instance: &str, timing: Timing) -> Self {
        let (tx, active) = watch::channel(false);
        let stop = CancellationToken::new();
        let holder = Holder {
            js: js.clone(),
            job: job.to_string(),
            instance: instance.to_string(),
            timing,
            active: tx,
        };
        let task = tokio::spawn(holder.run(stop.clone()));
        Self { active, stop, task }
    }

    /// Whether this instance holds the lease now, and its changes.
    pub fn active(&self) -> watch::Receiver<bool> {
        self.active.clone()
    }

    /// Gives the lease up at once (if held), so that a standby takes over without waiting
    /// for it to expire.
    pub async fn release(mut self) {
        self.stop.cancel();
        let _ = (&mut self.task).await;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Holder {
    js: Context,
    job: String,
    instance: String,
    timing: Timing,
    active: watch::Sender<bool>,
}

impl Holder {
    async fn run(self, stop: CancellationToken) {
        let Some(kv) = self.open(&stop).await else {
            return;
        };
        // The revision of our last write while we hold the lease, and when it was stored.
        let mut held: Option<(u64, Instant)> = None;
        while !stop.is_cancelled() {
            match held {
                None => {
                    let Some(taken) = until_stopped(&stop, self.take(&kv)).await else {
                        break;
                    };
                    match taken {
                        Ok(Some(revision)) => {
                            tracing::info!(
                                job = self.job,
                                instance = self.instance,
                                "active: lease taken"
                            );
                            held = Some((revision, Instant::now()));
                            self.active.send_replace(true);
                            pause(&stop, self.timing.renew_every).await;
                        }
                        Ok(None) => pause(&stop, self.timing.poll_every).await,
                        Err(e) => {
                            tracing::warn!(job = self.job, error = %e, "cannot take the lease; retrying");
                            pause(&stop, self.timing.poll_every).await;
                        }
                    }
                }
                Some((revision, since)) => {
                    let Some(renewed) = until_stopped(&stop, self.write(revision)).await else {
                        break;
                    };
                    match renewed {
                        Ok(Some(revision)) => held = Some((revision, Instant::now())),
                        Ok(None) => {
                            tracing::info!(
                                job = self.job,
                                "standby: another instance holds the lease"
                            );
                            held = None;
                        }
                        Err(e) if since.elapsed() + self.timing.renew_every >= self.timing.ttl => {
                            tracing::warn!(job = self.job, error = %e, "standby: lease not renewed in time");
                            held = None;
                        }
                        Err(e) => {
                            tracing::warn!(job = self.job, error = %e, "cannot renew the lease; retrying")
                        }
                    }
                    if held.is_none() {
                        self.active.send_replace(false);
                        continue;
                    }
                    pause(&stop, self.timing.renew_every).await;
                }
            }
        }
        self.active.send_replace(false);
        if let Some((revision, _)) = held {
            let deleted = kv.delete_expect_revision(&self.job, Some(revision));
            match tokio::time::timeout(RELEASE_WITHIN, deleted).await {
                Ok(Ok(())) => tracing::info!(job = self.job, "lease released"),
                Ok(Err(e)) => {
                    tracing::warn!(job = self.job, error = %e, "lease not released; it expires")
                }
                Err(_) => tracing::warn!(
                    job = self.job,
                    "lease not released: no answer in time; it expires"
                ),
            }
        }
    }

    /// The leases bucket, waited for until it exists; `None` if stopped first.
    async fn open(&self, stop: &CancellationToken) -> Option<Store> {
        let mut backoff =
            crate::retry::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            match until_stopped(stop, self.js.get_key_value(subjects::LEASES_BUCKET)).await? {
                Ok(kv) => return Some(kv),
                Err(e) => {
                    tracing::warn!(job = self.job, error = %e, "cannot open the leases bucket (run `stockwire setup`?); retrying");
                    pause(stop, backoff.next_delay()).await;
                    if stop.is_cancelled() {
                        return None;
                    }
                }
            }
        }
    }

    /// Takes the lease if it is free (or still ours); `None` when another instance holds it.
    async fn take(&self, kv: &Store) -> Result<Option<u64>, async_nats::Error> {
        let expected = match kv.entry(&self.job).await? {
            None => 0,
            Some(e) if e.operation != Operation::Put => e.revision,
            Some(e) if e.value == self.instance.as_bytes() => e.revision,
            Some(_) => return Ok(None),
        };
        self.write(expected).await
    }

    /// Writes the lease expecting `revision` (0: none); `None` when refused.
    async fn write(&self, revision: u64) -> Result<Option<u64>, async_nats::Error> {
        let mut headers = HeaderMap::new();
        let ttl = self.timing.ttl.as_secs().max(1);
        headers.insert(subjects::NATS_TTL, ttl.to_string().as_str());
        headers.insert(
            subjects::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            revision.to_string().as_str(),
        );
        let subject = subjects::kv_subject(subjects::LEASES_BUCKET, &self.job);
        let ack = self
            .js
            .publish_with_headers(subject, headers, self.instance.clone().into())
            .await?;
        match ack.await {
            Ok(ack) => Ok(Some(ack.sequence)),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// `request`'s answer, or `None` if `stop` is cancelled first (the request is abandoned).
async fn until_stopped<T>(
    stop: &CancellationToken,
    request: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        _ = stop.cancelled() => None,
        answer = request => Some(answer),
    }
}
