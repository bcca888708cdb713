//! Atomic batch publish (nats-server 2.12+, stream setting `allow_atomic`): up to 1,000
//! messages that are stored together or not at all; and the single acknowledged publish
//! beside it, with the same typed error.
//!
//! async-nats has no builder for it, so this sets the raw `Nats-Batch-*` headers: every
//! message but the last goes out as a plain publish, the last carries `Nats-Batch-Commit: 1`
//! and waits for the one PubAck of the whole batch. With fsync before ack, one commit of
//! 1,000 messages costs about what one single publish costs.

use std::time::Duration;

use async_nats::header::{
    NATS_BATCH_COMMIT, NATS_BATCH_ID, NATS_BATCH_SEQUENCE, NATS_EXPECTED_LAST_SEQUENCE,
};
use async_nats::{Client, HeaderMap};
use serde::Deserialize;

use crate::envelope::Outbound;
use crate::retry::{AppendError, AppendErrorKind};

/// The server refuses batches of more messages than this.
pub const MAX_BATCH: usize = 1000;

/// The PubAck of a committed batch.
#[derive(Debug, Clone, Deserialize)]
pub struct BatchAck {
    pub stream: String,
    /// The stream sequence of the last message of the batch.
    #[serde(rename = "seq")]
    pub sequence: u64,
    #[serde(rename = "batch", default)]
    pub batch_id: String,
    #[serde(default)]
    pub count: u64,
}

impl BatchAck {
    /// The stream sequence of the first message of the batch.
    pub fn first_sequence(&self) -> u64 {
        self.sequence + 1 - self.count.max(1)
    }
}

#[derive(Debug, Deserialize)]
struct ApiError {
    #[serde(default)]
    code: u64,
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (code {}, err_code {})",
            self.description, self.code, self.err_code
        )
    }
}

impl std::error::Error for ApiError {}

#[derive(Deserialize)]
#[serde(untagged)]
enum Response {
    Err { error: ApiError },
    Ok(BatchAck),
}

/// Publishes one message and waits for its PubAck; a failure says which subject.
pub async fn publish_acked(
    js: &async_nats::jetstream::Context,
    out: Outbound,
) -> Result<async_nats::jetstream::publish::PublishAck, AppendError> {
    let subject = out.subject.clone();
    async {
        js.publish_with_headers(out.subject, out.headers, out.payload)
            .await?
            .await
    }
    .await
    .map_err(|e| AppendError::from(e).context(format!("publishing to {subject}")))
}

/// Publishes `messages` as one atomic batch and waits for its PubAck.
pub async fn publish_atomic(
    client: &Client,
    messages: Vec<Outbound>,
    timeout: Duration,
) -> Result<BatchAck, AppendError> {
    send_atomic(client, messages, None, timeout)
        .await?
        .ack()
        .await
}

/// A batch sent and committed, its PubAck still to come.
pub struct SentBatch {
    replies: async_nats::Subscriber,
    batch_id: String,
    count: usize,
    timeout: Duration,
}

/// Sends `messages` as one atomic batch without waiting for the PubAck, so the next
/// batch can be sent while the server stores this one. With `expected_last`, the first
/// message carries `Nats-Expected-Last-Sequence`: the batch is stored only if the
/// stream's last message is that one (batches sent back to back then land in order
/// and contiguous, or not at all).
///
/// The messages are taken, not borrowed: each one's headers gain the batch headers and
/// go out as they are, without a copy.
pub async fn send_atomic(
    client: &Client,
    mut messages: Vec<Outbound>,
    expected_last: Option<u64>,
    timeout: Duration,
) -> Result<SentBatch, AppendError> {
    let count = messages.len();
    let size = || {
        AppendError::new(AppendErrorKind::TooLarge).context(format!(
            "a batch holds 1 to {MAX_BATCH} messages, not {count}"
        ))
    };
    if count > MAX_BATCH {
        return Err(size());
    }
    let Some(mut last) = messages.pop() else {
        return Err(size());
    };
    let request_error = |e: &dyn std::fmt::Display| {
        AppendError::with_source(AppendErrorKind::Connection, e.to_string())
    };
    let batch_id = uuid::Uuid::new_v4().simple().to_string();
    let inbox = client.new_inbox();
    let replies = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| request_error(&e))?;
    let with_batch_headers = |headers: &mut HeaderMap, seq: usize| {
        headers.insert(NATS_BATCH_ID, batch_id.as_str());
        headers.insert(NATS_BATCH_SEQUENCE, seq.to_string());
        if let (1, Some(expected)) = (seq, expected_last) {
            headers.insert(NATS_EXPECTED_LAST_SEQUENCE, expected.to_string());
        }
    };
    for (i, mut msg) in messages.into_iter().enumerate() {
        with_batch_headers(&mut msg.headers, i + 1);
        client
            .publish_with_headers(msg.subject, msg.headers, msg.payload)
            .await
            .map_err(|e| request_error(&e))?;
    }
    with_batch_headers(&mut last.headers, count);
    last.headers.insert(NATS_BATCH_COMMIT, "1");
    client
        .publish_with_reply_and_headers(last.subject, inbox, last.headers, last.payload)
        .await
        .map_err(|e| request_error(&e))?;
    Ok(SentBatch {
        replies,
        batch_id,
        count,
        timeout,
    })
}

impl SentBatch {
    /// Waits for the batch's PubAck: stored whole, or refused whole.
    pub async fn ack(mut self) -> Result<BatchAck, AppendError> {
        use futures::StreamExt;
        let reply = match tokio::time::timeout(self.timeout, self.replies.next()).await {
            Ok(Some(reply)) => reply,
            Ok(None) => {
                return Err(AppendError::new(AppendErrorKind::Connection)
                    .context("the batch's reply subscription ended"))
            }
            Err(_) => {
                return Err(AppendError::new(AppendErrorKind::TimedOut)
                    .context(format!("no PubAck for the batch within {:?}", self.timeout)))
            }
        };
        if reply.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
            return Err(AppendError::new(AppendErrorKind::NoResponders));
        }
        match serde_json::from_slice::<Response>(&reply.payload) {
            Ok(Response::Ok(ack))
                if ack.batch_id == self.batch_id && ack.count == self.count as u64 =>
            {
                Ok(ack)
            }
            Ok(Response::Ok(ack)) => Err(AppendError::new(AppendErrorKind::BadAnswer).context(
                format!(
                    "batch {:?} of {} messages acknowledged as batch {:?} of {}",
                    self.batch_id, self.count, ack.batch_id, ack.count
                ),
            )),
            Ok(Response::Err { error }) => {
                let kind = if error.code == 503 {
                    AppendErrorKind::NoResponders
                } else {
                    AppendErrorKind::from_err_code(error.err_code)
                };
                Err(AppendError::with_source(kind, error))
            }
            Err(e) => Err(AppendError::with_source(
                AppendErrorKind::BadAnswer,
                format!("{e}: {}", String::from_utf8_lossy(&reply.payload)),
            )),
        }
    }
}

/// Atomic batches sent in order, up to `window` of them before the oldest is
/// acknowledged. With a chain (`expected`), each batch expects the stream to end where the
/// one before it ends, so they land in order and back to back, or not at all; a batch
/// acknowledged anywhere else is an error. Each batch carries a tag of the caller's (which
/// lines, which keys) that comes back with its acknowledgement.
pub struct Pipeline<T> {
    client: Client,
    timeout: Duration,
    window: usize,
    expected: Option<u64>,
    in_flight: std::collections::VecDeque<(T, SentBatch, Option<u64>)>,
}

impl<T> Pipeline<T> {
    /// `window`: batches in flight at most (at least 1); `expected`: where the stream ends
    /// now, to chain the batches, or `None` for no expectation.
    pub fn new(client: &Client, timeout: Duration, window: usize, expected: Option<u64>) -> Self {
        Self {
            client: client.clone(),
            timeout,
            window: window.max(1),
            expected,
            in_flight: std::collections::VecDeque::new(),
        }
    }

    /// Where the next batch sent expects the stream to end (`None`: no chain).
    pub fn expected(&self) -> Option<u64> {
        self.expected
    }

    /// Whether another batch may be sent before the oldest is acknowledged.
    pub fn has_room(&self) -> bool {
        self.in_flight.len() < self.window
    }

    /// Sends `messages` as the next batch, without waiting for its acknowledgement.
    pub async fn send(&mut self, tag: T, messages: Vec<Outbound>) -> Result<(), AppendError> {
        let count = messages.len() as u64;
        let sent = send_atomic(&self.client, messages, self.expected, self.timeout).await?;
        let after = self.expected;
        if let Some(expected) = self.expected.as_mut() {
            *expected += count;
        }
        self.in_flight.push_back((tag, sent, after));
        Ok(())
    }

    /// The oldest batch's acknowledgement, or `None` when nothing is in flight.
    pub async fn next(&mut self) -> Option<(T, Result<BatchAck, AppendError>)> {
        let (tag, sent, after) = self.in_flight.pop_front()?;
        let result = match (sent.ack().await, after) {
            (Ok(ack), Some(after)) if ack.first_sequence() != after + 1 => Err(AppendError::new(
                AppendErrorKind::BadAnswer,
            )
            .context(format!(
                "batch stored after sequence {}, expected after {after}",
                ack.first_sequence() - 1
            ))),
            (result, _) => result,
        };
        Some((tag, result))
    }

    /// Chains the batches sent from now on to `expected` (after a refusal, say: the
    /// caller takes what is in flight first).
    pub fn expect(&mut self, expected: Option<u64>) {
        self.expected = expected;
    }
}
