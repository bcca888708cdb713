//! Reading a stream, or the part of it under one filter, in stream order up to its end.
//!
//! An ordered consumer (no acks, no redelivery, recreated by the client on a gap) is
//! created at the start point; reading stops after the message the server reports as
//! the last one pending. Used by `history`, and by anything that replays the log.
//!
//! Every reader here passes over a message at or before the last one it delivered (or
//! before its start): async-nats re-creates an ordered consumer that has delivered nothing
//! yet from the stream's first message, whatever its start was (0.51, `pull::Ordered`:
//! stream sequence 0 means `DeliverPolicy::All`). Seen on a cluster under node kills: a
//! checked sale that read its product from a view's value plus "the events after it" got
//! every event of the product again, counted them twice, and oversold.

use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
use async_nats::jetstream::{self, Context};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;

use crate::error::Error;

/// One stored message.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub sequence: u64,
    /// When the server stored it, in milliseconds since the epoch.
    pub stored_ms: i64,
    pub subject: String,
    pub headers: Option<HeaderMap>,
    pub payload: Bytes,
}

/// Why a read of a stream failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadErrorKind {
    /// The consumer could not be made (no such stream, no permission, no answer).
    Open,
    /// No message came for a while although more were to come (purged meanwhile?).
    Stalled,
    /// The consumer ended or failed before the end.
    Broken,
}

impl std::fmt::Display for ReadErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Open => "cannot open a consumer",
            Self::Stalled => "no message arrived in time",
            Self::Broken => "the consumer failed",
        })
    }
}

pub type ReadError = Error<ReadErrorKind>;

fn read_error(
    kind: ReadErrorKind,
    stream: &str,
    filter: &str,
    source: impl std::fmt::Display,
) -> ReadError {
    ReadError::with_source(kind, source.to_string())
        .context(format!("reading stream {stream} ({filter})"))
}

/// How long a read to the end waits for the next message before it gives up.
const IDLE: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads a stream in order from a start sequence to its end.
pub struct Reader {
    messages: Option<jetstream::consumer::pull::Ordered>,
    stream: String,
    filter: String,
    /// Messages still to come, as the server last counted them.
    remaining: u64,
    /// The last sequence delivered (before the first: the one before the start).
    delivered: u64,
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
        let delivered = match deliver_policy {
            DeliverPolicy::ByStartSequence { start_sequence } => start_sequence.saturating_sub(1),
            _ => 0,
        };
        let consumer = ordered_consumer(js, stream, filter, deliver_policy).await?;
        Self::reading(consumer, stream, filter, delivered).await
    }

    /// Reads what `consumer` delivers after sequence `delivered`.
    async fn reading(
        consumer: jetstream::consumer::Consumer<OrderedConfig>,
        stream: &str,
        filter: &str,
        delivered: u64,
    ) -> Result<Self, ReadError> {
        let fail = |e: &dyn std::fmt::Display| read_error(ReadErrorKind::Open, stream, filter, e);
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
            delivered,
        })
    }

    /// How many messages are still to come, as last counted by the server.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// The next message, or `None` at the end. One at or before the last delivered is
    /// passed over (see the module's note).
    pub async fn next(&mut self) -> Option<Result<StoredMessage, ReadError>> {
        loop {
            let messages = self.messages.as_mut()?;
            let next = tokio::time::timeout(IDLE, messages.next()).await;
            let result = match next {
                Err(_) => Err((
                    ReadErrorKind::Stalled,
                    format!(
                        "none within {} s although {} were still to come (purged or deleted meanwhile?)",
                        IDLE.as_secs(),
                        self.remaining
                    ),
                )),
                Ok(None) => Err((ReadErrorKind::Broken, "it ended early".to_string())),
                Ok(Some(Err(e))) => Err((ReadErrorKind::Broken, e.to_string())),
                Ok(Some(Ok(msg))) => match msg.info() {
                    Ok(info) => {
                        self.remaining = info.pending;
                        if info.stream_sequence <= self.delivered {
                            if self.remaining == 0 {
                                self.messages = None;
                            }
                            continue;
                        }
                        self.delivered = info.stream_sequence;
                        Ok(StoredMessage {
                            sequence: info.stream_sequence,
                            stored_ms: stored_ms(&info),
                            subject: msg.subject.to_string(),
                            headers: msg.headers.clone(),
                            payload: msg.payload.clone(),
                        })
                    }
                    Err(e) => Err((ReadErrorKind::Broken, e.to_string())),
                },
            };
            if result.is_err() || self.remaining == 0 {
                self.messages = None;
            }
            return Some(
                result.map_err(|(kind, why)| read_error(kind, &self.stream, &self.filter, why)),
            );
        }
    }
}

/// Follows a stream from a sequence on, for ever: every message once, in stream order,
/// across errors and server restarts. The consumer is opened again from the next sequence
/// when it fails or the connection comes back (dropped, never deleted: the server removes
/// an idle ordered consumer by itself, and a user may lack the right to delete one).
pub struct Follower {
    js: Context,
    stream: String,
    filter: String,
    next_seq: u64,
    messages: Option<jetstream::consumer::pull::Ordered>,
    reconnects: crate::connect::Reconnects,
    backoff: crate::retry::Backoff,
}

impl Follower {
    /// Follows `stream` (subjects matching `filter`) from `start_sequence` (1: the beginning).
    pub fn new(js: &Context, stream: &str, filter: &str, start_sequence: u64) -> Self {
        Self {
            js: js.clone(),
            stream: stream.to_string(),
            filter: filter.to_string(),
            next_seq: start_sequence.max(1),
            messages: None,
            reconnects: crate::connect::Reconnects::new(&js.client()),
            backoff: crate::retry::Backoff::new(
                std::time::Duration::from_millis(100),
                std::time::Duration::from_secs(5),
            ),
        }
    }

    /// The next message; waits for it as long as it takes (select on a shutdown signal).
    pub async fn next(&mut self) -> StoredMessage {
        loop {
            let Some(messages) = self.messages.as_mut() else {
                match self.open().await {
                    Ok(messages) => self.messages = Some(messages),
                    Err(e) => {
                        tracing::warn!(stream = %self.stream, error = %e, "cannot follow the stream yet; retrying");
                        tokio::time::sleep(self.backoff.next_delay()).await;
                    }
                }
                continue;
            };
            let msg = tokio::select! {
                msg = messages.next() => msg,
                _ = self.reconnects.changed() => {
                    tracing::debug!(stream = %self.stream, "reconnected; following from #{}", self.next_seq);
                    self.messages = None;
                    continue;
                }
            };
            let info = match &msg {
                Some(Ok(msg)) => msg.info().map(|i| (i.stream_sequence, stored_ms(&i))),
                _ => Err("no message".into()),
            };
            match (msg, info) {
                (Some(Ok(msg)), Ok((sequence, stored_ms))) if sequence >= self.next_seq => {
                    self.backoff.reset();
                    self.next_seq = sequence + 1;
                    return StoredMessage {
                        sequence,
                        stored_ms,
                        subject: msg.subject.to_string(),
                        headers: msg.headers.clone(),
                        payload: msg.payload.clone(),
                    };
                }
                (Some(Ok(_)), Ok(_)) => continue,
                (msg, _) => {
                    let why = match msg {
                        Some(Err(e)) => e.to_string(),
                        None => "the consumer ended".to_string(),
                        Some(Ok(_)) => "a message without its metadata".to_string(),
                    };
                    tracing::warn!(stream = %self.stream, error = %why, "following again from #{}", self.next_seq);
                    self.messages = None;
                    tokio::time::sleep(self.backoff.next_delay()).await;
                }
            }
        }
    }

    /// Opens the consumer from where the follower stands. It borrows no part of `self`
    /// across the wait (only clones), so a follower can live in a spawned task: the open
    /// consumer it holds is `Send` but not `Sync`.
    fn open(
        &self,
    ) -> impl std::future::Future<Output = Result<jetstream::consumer::pull::Ordered, ReadError>>
           + Send
           + 'static {
        let (js, stream, filter, next_seq) = (
            self.js.clone(),
            self.stream.clone(),
            self.filter.clone(),
            self.next_seq,
        );
        async move { messages_from(&js, &stream, &filter, next_seq).await }
    }
}

/// An ordered consumer (no acks, no redelivery, re-created by the client on a gap) on
/// `stream`, only subjects matching `filter` (empty: all; several separated by spaces),
/// starting where `deliver_policy`
/// says. Every reader of a stream opens its consumer here.
pub async fn ordered_consumer(
    js: &Context,
    stream: &str,
    filter: &str,
    deliver_policy: DeliverPolicy,
) -> Result<jetstream::consumer::Consumer<OrderedConfig>, ReadError> {
    let fail = |e: &dyn std::fmt::Display| read_error(ReadErrorKind::Open, stream, filter, e);
    let handle = js.get_stream_no_info(stream).await.map_err(|e| fail(&e))?;
    handle
        .create_consumer(ordered_config(filter, deliver_policy))
        .await
        .map_err(|e| fail(&e))
}

/// An ordered consumer's config for `filter`: one subject, or several separated by spaces
/// (a view that reads two kinds of event, e.g. both legs of a transfer).
pub fn ordered_config(filter: &str, deliver_policy: DeliverPolicy) -> OrderedConfig {
    let mut subjects: Vec<String> = filter.split_whitespace().map(str::to_string).collect();
    let (filter_subject, filter_subjects) = if subjects.len() > 1 {
        (String::new(), subjects)
    } else {
        (subjects.pop().unwrap_or_default(), Vec::new())
    };
    OrderedConfig {
        filter_subject,
        filter_subjects,
        deliver_policy,
        ..Default::default()
    }
}

/// The messages of `stream` under `filter` from `start_sequence` on, for ever.
pub async fn messages_from(
    js: &Context,
    stream: &str,
    filter: &str,
    start_sequence: u64,
) -> Result<jetstream::consumer::pull::Ordered, ReadError> {
    let deliver_policy = DeliverPolicy::ByStartSequence {
        start_sequence: start_sequence.max(1),
    };
    let consumer = ordered_consumer(js, stream, filter, deliver_policy).await?;
    consumer
        .messages()
        .await
        .map_err(|e| read_error(ReadErrorKind::Open, stream, filter, e))
}

/// A message's stored time in milliseconds since the epoch.
pub fn stored_ms(info: &async_nats::jetstream::message::Info<'_>) -> i64 {
    (info.published.unix_timestamp_nanos() / 1_000_000) as i64
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    use super::*;
    use crate::testing::NatsServer;

    /// The consumer is gone before its first pull: async-nats re-creates it from the
    /// stream's first message. The reader still gives only what follows its start, once.
    #[tokio::test]
    async fn a_consumer_recreated_before_its_first_message_delivers_nothing_twice() {
        let server = NatsServer::start().expect("nats-server");
        let js = jetstream::new(server.client().await);
        js.create_stream(jetstream::stream::Config {
            name: "READ".into(),
            subjects: vec!["read.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
        for n in 1..=6 {
            js.publish(format!("read.{n}"), "x".into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
        let start = DeliverPolicy::ByStartSequence { start_sequence: 4 };
        let mut consumer = ordered_consumer(&js, "READ", "", start).await.unwrap();
        let name = consumer.info().await.unwrap().name.clone();
        js.delete_consumer_from_stream(&name, "READ").await.unwrap();

        let mut reader = Reader::reading(consumer, "READ", "", 3).await.unwrap();
        let mut read = Vec::new();
        while let Some(msg) = reader.next().await {
            read.push(msg.unwrap().sequence);
        }
        assert_eq!(read, [4, 5, 6]);
    }
}
