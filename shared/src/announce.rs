//! Announcing derived events exactly once per change of state.
//!
//! What was last announced for a product is the last message on its alert subject in
//! `ALERTS`. The next announcement is published with `Nats-Expected-Last-Subject-Sequence`
//! set to that message's sequence (0 when there is none), so whoever announces first wins
//! and a restarted or second watcher cannot say the same thing twice, whatever the
//! duplicate window. The last announcement of every subject under a filter is read once at
//! start (one pass, last per subject) and kept up to date in memory.
//!
//! A refusal that means "someone else wrote first" (`retry::Next::Decide`: a wrong last
//! sequence, or on a replicated stream another checked write still in flight) is not an
//! error: the subject is read again and the caller decides again.

use std::collections::HashMap;
use std::fmt;

use async_nats::jetstream::stream::LastRawMessageErrorKind;
use async_nats::jetstream::Context;
use async_nats::HeaderMap;
use bytes::Bytes;

use crate::domain::{Alert, AlertBody, LastAlert};
use crate::envelope::{Envelope, EventMeta};
use crate::error::Error;
use crate::read::Reader;
use crate::retry::{AppendError, AppendErrorKind, Next};
use crate::subjects;

/// What [`Announcer::announce`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announced {
    /// Stored at this sequence.
    Stored(u64),
    /// Someone announced on this subject first: re-read and decide again.
    Superseded,
}

/// Why an announcement could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnnounceErrorKind {
    /// The last alerts could not be read from `ALERTS`.
    Read,
    /// The alert's payload could not be encoded; trying again will not help.
    Encode,
    /// The server did not store it, for this reason (its `next()` says what to do).
    Append(AppendErrorKind),
}

impl fmt::Display for AnnounceErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read => f.write_str("cannot read the last alerts"),
            Self::Encode => f.write_str("cannot encode the alert"),
            Self::Append(_) => f.write_str("not stored"),
        }
    }
}

/// An announcement not made: a kind to branch on, where, and the cause.
pub type AnnounceError = Error<AnnounceErrorKind>;

/// The last announcement of every subject under one filter, and the way to add the next.
pub struct Announcer {
    js: Context,
    envelope: Envelope,
    filter: String,
    last: HashMap<String, LastAlert>,
    /// True when `last` holds every subject under the filter (a miss: nothing announced).
    complete: bool,
}

impl Announcer {
    pub fn new(js: Context, envelope: Envelope, filter: &str) -> Self {
        Self {
            js,
            envelope,
            filter: filter.to_string(),
            last: HashMap::new(),
            complete: false,
        }
    }

    /// Reads the last announcement of every subject under the filter.
    pub async fn load(&mut self) -> Result<(), AnnounceError> {
        let unreadable =
            |e| AnnounceError::with_source(AnnounceErrorKind::Read, e).context(self.filter.clone());
        let mut reader = Reader::last_per_subject(&self.js, subjects::ALERTS_STREAM, &self.filter)
            .await
            .map_err(unreadable)?;
        let mut last = HashMap::new();
        while let Some(msg) = reader.next().await {
            let msg = msg.map_err(unreadable)?;
            let alert = self.read(
                &msg.subject,
                msg.sequence,
                msg.headers.as_ref(),
                &msg.payload,
            );
            last.insert(msg.subject, alert);
        }
        self.last = last;
        self.complete = true;
        Ok(())
    }

    /// Re-reads the last announcement of one subject from `ALERTS`.
    async fn refresh(&mut self, subject: &str) -> Result<(), AnnounceError> {
        let unreadable = |e: Box<dyn std::error::Error + Send + Sync>| {
            AnnounceError::with_source(AnnounceErrorKind::Read, e).context(subject)
        };
        let stream = self
            .js
            .get_stream(subjects::ALERTS_STREAM)
            .await
            .map_err(|e| unreadable(e.into()))?;
        match stream.get_last_raw_message_by_subject(subject).await {
            Ok(msg) => {
                let alert = self.read(subject, msg.sequence, Some(&msg.headers), &msg.payload);
                self.last.insert(subject.to_string(), alert);
            }
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {
                self.last.remove(subject);
            }
            Err(e) => return Err(unreadable(e.into())),
        }
        Ok(())
    }

    /// What a stored alert says; one that cannot be read counts as nothing said.
    fn read(
        &self,
        subject: &str,
        sequence: u64,
        headers: Option<&HeaderMap>,
        payload: &[u8],
    ) -> LastAlert {
        let event_type = headers
            .and_then(|h| h.get(self.envelope.type_header()))
            .map(|v| v.to_string())
            .unwrap_or_default();
        let said = AlertBody::decode(&event_type, payload)
            .inspect_err(|e| {
                tracing::warn!(subject, alert_seq = sequence, error = %e, "unreadable alert: taken as nothing said");
            })
            .ok();
        LastAlert { sequence, said }
    }

    /// The last announcement on `subject`, if any.
    pub async fn last(&mut self, subject: &str) -> Result<Option<LastAlert>, AnnounceError> {
        if !self.complete {
            self.load().await?;
        }
        Ok(self.last.get(subject).cloned())
    }

    /// Publishes `alert` on its subject, if the subject's last announcement is still the
    /// one it follows (0: none), stamped `timestamp_ms`.
    pub async fn announce(
        &mut self,
        alert: &Alert,
        timestamp_ms: i64,
    ) -> Result<Announced, AnnounceError> {
        let subject = alert.subject();
        let body = alert.payload().map_err(|e| {
            AnnounceError::with_source(AnnounceErrorKind::Encode, e).context(subject.clone())
        })?;
        let meta = EventMeta {
            msg_id: alert.msg_id(),
            timestamp_ms,
        };
        let mut headers = self.envelope.headers(alert.event_type(), &meta);
        headers.insert(
            subjects::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            alert.follows.to_string().as_str(),
        );
        let result = async {
            self.js
                .publish_with_headers(subject.clone(), headers, Bytes::from(body))
                .await?
                .await
        }
        .await;
        match result {
            Ok(ack) if ack.duplicate => {
                // Another watcher stored this very announcement (same id) first.
                self.refresh(&subject).await?;
                Ok(Announced::Superseded)
            }
            Ok(ack) => {
                self.last
                    .insert(subject, alert.clone().stored_at(ack.sequence));
                Ok(Announced::Stored(ack.sequence))
            }
            Err(e) => {
                let e = AppendError::from(e);
                if e.kind().next() == Next::Decide {
                    self.refresh(&subject).await?;
                    return Ok(Announced::Superseded);
                }
                let kind = AnnounceErrorKind::Append(e.kind());
                Err(AnnounceError::with_source(kind, e).context(subject))
            }
        }
    }
}
