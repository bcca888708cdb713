//! The last message of many subjects of a stream in one request: nats-server's direct get
//! with `multi_last` (2.11+), which async-nats has no API for.
//!
//! One request names up to [`MAX_SUBJECTS`] subjects (wildcards allowed, counted by what
//! they match); the stream answers with the last message of each subject that has one, in
//! stream order, then a `204 EOB` status whose `Nats-UpTo-Sequence` says how far the
//! answering server's copy of the stream reached. A subject without a message is simply
//! absent; a deleted KV key answers with its delete marker. With nothing at all to return
//! the answer is `404 No Results` instead.
//!
//! Any replica of a stream with `allow_direct` may answer, and a follower may be a little
//! behind: a caller that must see its own writes passes the sequence of its last one
//! (`at_least`), and an answer from a copy that has not reached it is asked again. An
//! answer cut short by the server's limit on bytes (`Nats-Num-Pending` above 0 on the end
//! of batch) is an error, never a list of keys taken as absent.

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;

/// Subjects one request may match, at most (nats-server answers `413` beyond).
pub const MAX_SUBJECTS: usize = 1024;

/// The last message of one subject.
#[derive(Debug, Clone)]
pub struct Last {
    pub subject: String,
    pub sequence: u64,
    pub headers: HeaderMap,
    pub payload: Bytes,
}

/// Why a multi-last read failed.
#[derive(Debug, thiserror::Error)]
pub enum DirectError {
    #[error("asking stream {stream} for the last messages of {subjects} subjects: {source}")]
    Request {
        stream: String,
        subjects: usize,
        #[source]
        source: async_nats::Error,
    },
    #[error("stream {stream} did not answer within {timeout:?}")]
    Timeout { stream: String, timeout: Duration },
    #[error("stream {stream} refused a read of the last messages of {subjects} subjects: {status} {description}")]
    Refused {
        stream: String,
        subjects: usize,
        status: u16,
        description: String,
    },
    #[error("stream {stream} answered with a message without {header}")]
    Malformed {
        stream: String,
        header: &'static str,
    },
    #[error("stream {stream}: the copies that answered reached sequence {up_to}, not {at_least}")]
    Behind {
        stream: String,
        at_least: u64,
        up_to: u64,
    },
    #[error("stream {stream} cut its answer short: {pending} more messages than it sent")]
    Truncated { stream: String, pending: u64 },
}

/// The last message of each of `subjects` in `stream` that has one, in stream order, from
/// a copy of the stream that holds at least sequence `at_least`. An answer from a copy
/// behind it is asked again, with a growing pause, until `timeout` has passed.
///
/// A copy that holds none of the subjects answers `404 No Results`, which does not say
/// how far it reached: a caller with `at_least` above 0 should name a subject it knows
/// exists (one it wrote), so that a lagging copy cannot pass for a current one.
pub async fn last_of(
    client: &async_nats::Client,
    stream: &str,
    subjects: &[String],
    at_least: u64,
    timeout: Duration,
) -> Result<Vec<Last>, DirectError> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(2);
    loop {
        let (found, up_to) = ask(client, stream, subjects, timeout).await?;
        if up_to >= at_least {
            return Ok(found);
        }
        if Instant::now() + pause > deadline {
            return Err(DirectError::Behind {
                stream: stream.to_string(),
                at_least,
                up_to,
            });
        }
        tracing::debug!(
            stream,
            up_to,
            at_least,
            "a copy behind our writes answered; asking again"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// The messages of `stream` on `filter` after sequence `after`, in stream order, in one
/// request (a batched direct get, 2.11+): `Truncated` when more than `batch` of them follow.
/// Nothing after it is an empty list. A copy of the stream that is behind may answer: a
/// caller that appends on what it read must expect what it read to be the last (as the
/// command executor does), so that a stale answer is refused rather than acted on.
pub async fn after(
    client: &async_nats::Client,
    stream: &str,
    filter: &str,
    after: u64,
    batch: usize,
    timeout: Duration,
) -> Result<Vec<Last>, DirectError> {
    let request = serde_json::json!({ "seq": after + 1, "next_by_subj": filter, "batch": batch });
    match exchange(client, stream, &request, 1, timeout).await {
        Ok((found, _)) => Ok(found),
        // Nothing on the filter from that sequence on.
        Err(DirectError::Refused { status: 404, .. }) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// One request: what it found, and how far the answering copy reached (0 with `No
/// Results`: unknown).
async fn ask(
    client: &async_nats::Client,
    stream: &str,
    subjects: &[String],
    timeout: Duration,
) -> Result<(Vec<Last>, u64), DirectError> {
    let request = serde_json::json!({ "multi_last": subjects });
    exchange(client, stream, &request, subjects.len(), timeout).await
}

/// Sends one direct get `request` (naming `subjects` subjects, for errors) and reads its
/// answer to the end of batch.
async fn exchange(
    client: &async_nats::Client,
    stream: &str,
    request: &serde_json::Value,
    subjects: usize,
    timeout: Duration,
) -> Result<(Vec<Last>, u64), DirectError> {
    let request_failed = |source: async_nats::Error| DirectError::Request {
        stream: stream.to_string(),
        subjects,
        source,
    };
    let body = serde_json::to_vec(request).map_err(|e| request_failed(e.into()))?;
    let inbox = client.new_inbox();
    let mut replies = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| request_failed(e.into()))?;
    client
        .publish_with_reply(format!("$JS.API.DIRECT.GET.{stream}"), inbox, body.into())
        .await
        .map_err(|e| request_failed(e.into()))?;
    let deadline = Instant::now() + timeout;
    let mut found = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = match tokio::time::timeout(left, replies.next()).await {
            Ok(Some(message)) => message,
            Ok(None) | Err(_) => {
                return Err(DirectError::Timeout {
                    stream: stream.to_string(),
                    timeout,
                })
            }
        };
        let headers = message.headers.unwrap_or_default();
        match message.status.map(|s| s.as_u16()) {
            None | Some(200) => {}
            Some(204) => {
                let pending = header_u64(&headers, "Nats-Num-Pending").unwrap_or(0);
                if pending > 0 {
                    return Err(DirectError::Truncated {
                        stream: stream.to_string(),
                        pending,
                    });
                }
                let up_to = header_u64(&headers, "Nats-UpTo-Sequence").unwrap_or(0);
                return Ok((found, up_to));
            }
            // Not one of the subjects has a message on this copy.
            Some(404) if found.is_empty() && no_results(message.description.as_deref()) => {
                return Ok((found, 0))
            }
            Some(status) => {
                return Err(DirectError::Refused {
                    stream: stream.to_string(),
                    subjects,
                    status,
                    description: message.description.unwrap_or_default(),
                })
            }
        }
        let malformed = |header| DirectError::Malformed {
            stream: stream.to_string(),
            header,
        };
        let subject = headers
            .get("Nats-Subject")
            .map(|v| v.as_str().to_string())
            .ok_or_else(|| malformed("Nats-Subject"))?;
        let sequence =
            header_u64(&headers, "Nats-Sequence").ok_or_else(|| malformed("Nats-Sequence"))?;
        found.push(Last {
            subject,
            sequence,
            headers,
            payload: message.payload,
        });
    }
}

/// Whether a 404 says that nothing matched (rather than that a message failed to load,
/// which nats-server words `Message Not Found`).
fn no_results(description: Option<&str>) -> bool {
    description.is_none_or(|d| d.trim().eq_ignore_ascii_case("No Results"))
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name).and_then(|v| v.as_str().parse().ok())
}
