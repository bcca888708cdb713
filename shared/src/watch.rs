//! Following a KV bucket for ever: every key's current value first, then every change.
//!
//! `watch_all()` alone gives only new changes, and a watch can end or fail (a server
//! restart, a missed heartbeat); one that silently stops is the classic NATS bug. So each
//! bucket is followed by its own task that starts with `watch_with_history(">")`, remembers
//! the last revision it saw, and on any error or end re-creates the watch from the next
//! revision, with backoff. Entries go to a channel with the name of their bucket; after
//! the initial values comes one [`Followed::CaughtUp`].

use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::retry::Backoff;
use crate::shutdown::pause;
use crate::subjects;

/// What a follower sends.
#[derive(Debug)]
pub enum Followed {
    /// A key's value, or its deletion (see the entry's `operation`).
    Entry {
        bucket: &'static str,
        entry: kv::Entry,
    },
    /// Every key's value at the start has been sent.
    CaughtUp { bucket: &'static str },
}

/// Spawns the task that follows `bucket`; it ends when `shutdown` is cancelled or the
/// receiver is dropped.
pub fn follow(
    js: async_nats::jetstream::Context,
    kv: kv::Store,
    bucket: &'static str,
    tx: mpsc::Sender<Followed>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut next_revision: Option<u64> = None;
        let mut caught_up = false;
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            if !caught_up && is_empty(&js, bucket).await {
                caught_up = true;
                if tx.send(Followed::CaughtUp { bucket }).await.is_err() {
                    return;
                }
            }
            let watch = match next_revision {
                None => kv.watch_with_history(">").await,
                Some(revision) => kv.watch_all_from_revision(revision).await,
            };
            let mut watch = match watch {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(bucket, error = %e, "cannot watch; retrying");
                    pause(&shutdown, backoff.next_delay()).await;
                    continue;
                }
            };
            loop {
                let item = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    item = watch.next() => item,
                };
                match item {
                    // A watch re-created by the client before its first entry may start
                    // over (see `read`): what was sent already is not sent again.
                    Some(Ok(entry)) if next_revision.is_some_and(|next| entry.revision < next) => {}
                    Some(Ok(entry)) => {
                        backoff.reset();
                        next_revision = Some(entry.revision + 1);
                        let last_of_history = entry.delta == 0;
                        if tx.send(Followed::Entry { bucket, entry }).await.is_err() {
                            return;
                        }
                        if !caught_up && last_of_history {
                            caught_up = true;
                            if tx.send(Followed::CaughtUp { bucket }).await.is_err() {
                                return;
                            }
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(bucket, error = %e, "watch failed; re-creating it");
                        break;
                    }
                    None => {
                        tracing::warn!(bucket, "watch ended; re-creating it");
                        break;
                    }
                }
            }
            pause(&shutdown, backoff.next_delay()).await;
        }
    })
}

async fn is_empty(js: &async_nats::jetstream::Context, bucket: &str) -> bool {
    match js.get_stream(subjects::kv_stream(bucket)).await {
        Ok(mut stream) => stream
            .info()
            .await
            .map(|i| i.state.messages == 0)
            .unwrap_or(false),
        Err(_) => false,
    }
}
