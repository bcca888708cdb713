//! Atomic batch publish (nats-server 2.12+, stream setting `allow_atomic`): up to 1,000
//! messages that are stored together or not at all.
//!
//! async-nats has no builder for it, so this sets the raw `Nats-Batch-*` headers: every
//! message but the last goes out as a plain publish, the last carries `Nats-Batch-Commit: 1`
//! and waits for the one PubAck of the whole batch. With fsync before ack, one commit of
//! 1,000 messages costs about what one single publish costs.

use std::time::Duration;

use async_nats::Client;
use serde::Deserialize;

use crate::envelope::Outbound;
use crate::subjects;

/// The server refuses batches of more messages than this.
pub const MAX_BATCH: usize = 1000;

/// JetStream error codes Stockwire branches on.
pub mod err_code {
    /// `Nats-Expected-Last-Subject-Sequence` (or `-Sequence`) did not match.
    pub const WRONG_LAST_SEQUENCE: u64 = 10071;
    /// A message of an atomic batch repeats a `Nats-Msg-Id` already stored.
    pub const BATCH_DUPLICATE: u64 = 10201;
}

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

/// Why a batch was not stored. Nothing of it was.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BatchError {
    #[error("a batch holds 1 to {MAX_BATCH} messages, not {0}")]
    Size(usize),
    #[error("JetStream refused the batch: {description} (code {code}, err_code {err_code})")]
    Refused {
        code: u64,
        err_code: u64,
        description: String,
    },
    #[error("no answer to the batch commit: {0}")]
    Request(String),
    #[error("unexpected answer to the batch commit: {0}")]
    BadAck(String),
}

impl BatchError {
    /// The JetStream error code, when the server refused the batch.
    pub fn err_code(&self) -> Option<u64> {
        match self {
            BatchError::Refused { err_code, .. } => Some(*err_code),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
struct ApiError {
    #[serde(default)]
    code: u64,
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Response {
    Err { error: ApiError },
    Ok(BatchAck),
}

/// Publishes `messages` as one atomic batch and waits for its PubAck.
pub async fn publish_atomic(
    client: &Client,
    messages: &[Outbound],
    timeout: Duration,
) -> Result<BatchAck, BatchError> {
    let Some((last, rest)) = messages.split_last() else {
        return Err(BatchError::Size(0));
    };
    if messages.len() > MAX_BATCH {
        return Err(BatchError::Size(messages.len()));
    }
    let batch_id = uuid::Uuid::new_v4().simple().to_string();
    for (i, msg) in rest.iter().enumerate() {
        let mut headers = msg.headers.clone();
        headers.insert(subjects::NATS_BATCH_ID, batch_id.as_str());
        headers.insert(subjects::NATS_BATCH_SEQUENCE, (i + 1).to_string().as_str());
        client
            .publish_with_headers(msg.subject.clone(), headers, msg.payload.clone())
            .await
            .map_err(|e| BatchError::Request(e.to_string()))?;
    }
    let mut headers = last.headers.clone();
    headers.insert(subjects::NATS_BATCH_ID, batch_id.as_str());
    headers.insert(
        subjects::NATS_BATCH_SEQUENCE,
        messages.len().to_string().as_str(),
    );
    headers.insert(subjects::NATS_BATCH_COMMIT, "1");
    let request = async_nats::Request::new()
        .headers(headers)
        .payload(last.payload.clone())
        .timeout(Some(timeout));
    let reply = client
        .send_request(last.subject.clone(), request)
        .await
        .map_err(|e| BatchError::Request(e.to_string()))?;
    match serde_json::from_slice::<Response>(&reply.payload) {
        Ok(Response::Ok(ack)) if ack.batch_id == batch_id && ack.count == messages.len() as u64 => {
            Ok(ack)
        }
        Ok(Response::Ok(ack)) => Err(BatchError::BadAck(format!(
            "batch {:?} of {} messages acknowledged as batch {:?} of {}",
            batch_id,
            messages.len(),
            ack.batch_id,
            ack.count
        ))),
        Ok(Response::Err { error }) => Err(BatchError::Refused {
            code: error.code,
            err_code: error.err_code,
            description: error.description,
        }),
        Err(e) => Err(BatchError::BadAck(format!(
            "{e}: {}",
            String::from_utf8_lossy(&reply.payload)
        ))),
    }
}
