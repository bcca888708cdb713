//! Reading a stream, or the part of it under one filter, in stream order up to its end.
//!
//! An ordered consumer (no acks, no redelivery, recreated by the client on a gap) is
//! created at the start point; reading stops after the message the server reports as
//! the last one pending. Used by `history`, and by anything that replays the log.

use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
use async_nats::jetstream::{self, Context};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;

/// One stored message.
#[derive(Debug, Clone)]
pub struct Stored {
    pub sequence: u64,
    /// When the server stored it, in milliseconds since the epoch.
    pub stored_ms: i64,
    pub subject: String,
    pub headers: Option<HeaderMap>,
    pub payload: Bytes,
}

#[derive(Debug, thiserror::Error)]
#[error("reading stream {stream} ({filter}): {message}")]
pub struct ReadError {
    pub stream: String,
    pub filter: String,
    pub message: String,
}

/// Reads a stream in order from a start sequence to its end.
pub struct Reader {
    messages: Option<jetstream::consumer::pull::Ordered>,
    stream: String,
    filter: String,
    /// Messages still to come, as the server last counted them.
    remaining: u64,
}

impl Reader {
    /// Starts reading `stream` at `start_sequence` (1 for the beginning), only subjects
    /// matching `filter` (empty: all).
    pub async fn open(
        js: &Context,
        stream: &str,
        filter: &str,
        start_sequence: u64,
    ) -> Result<Self, ReadError> {
        let deliver_policy = if start_sequence <= 1 {
            DeliverPolicy::All
        } else {
            DeliverPolicy::ByStartSequence { start_sequence }
        };
        Self::open_with(js, stream, filter, deliver_policy).await
    }

    /// Reads only the last message of each subject under `filter`.
    pub async fn last_per_subject(
        js: &Context,
        stream: &str,
        filter: &str,
    ) -> Result<Self, ReadError> {
        Self::open_with(js, stream, filter, DeliverPolicy::LastPerSubject).await
    }

    async fn open_with(
        js: &Context,
        stream: &str,
        filter: &str,
        deliver_policy: DeliverPolicy,
    ) -> Result<Self, ReadError> {
        let fail = |e: &dyn std::fmt::Display| ReadError {
            stream: stream.to_string(),
            filter: filter.to_string(),
            message: e.to_string(),
        };
        let handle = js.get_stream(stream).await.map_err(|e| fail(&e))?;
        let consumer = handle
            .create_consumer(OrderedConfig {
                filter_subject: filter.to_string(),
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(|e| fail(&e))?;
        let remaining = consumer.cached_info().num_pending;
        let messages = if remaining == 0 {
            None
        } else {
            Some(consumer.messages().await.map_err(|e| fail(&e))?)
        };
        Ok(Self {
            messages,
            stream: stream.to_string(),
            filter: filter.to_string(),
            remaining,
        })
    }

    /// How many messages are still to come, as last counted by the server.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// The next message, or `None` at the end.
    pub async fn next(&mut self) -> Option<Result<Stored, ReadError>> {
        let messages = self.messages.as_mut()?;
        let result = match messages.next().await {
            None => Err("the consumer ended early".to_string()),
            Some(Err(e)) => Err(e.to_string()),
            Some(Ok(msg)) => match msg.info() {
                Ok(info) => {
                    self.remaining = info.pending;
                    Ok(Stored {
                        sequence: info.stream_sequence,
                        stored_ms: stored_ms(&info),
                        subject: msg.subject.to_string(),
                        headers: msg.headers.clone(),
                        payload: msg.payload.clone(),
                    })
                }
                Err(e) => Err(e.to_string()),
            },
        };
        if result.is_err() || self.remaining == 0 {
            self.messages = None;
        }
        Some(result.map_err(|message| ReadError {
            stream: self.stream.clone(),
            filter: self.filter.clone(),
            message,
        }))
    }
}

/// A message's stored time in milliseconds since the epoch.
pub fn stored_ms(info: &async_nats::jetstream::message::Info<'_>) -> i64 {
    (info.published.unix_timestamp_nanos() / 1_000_000) as i64
}
