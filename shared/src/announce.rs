//! Announcing derived events exactly once per change of state.
//!
//! What was last announced for a product is the last message on its alert subject in
//! `ALERTS`. The next announcement is published with `Nats-Expected-Last-Subject-Sequence`
//! set to that message's sequence (0 when there is none), so whoever announces first wins
//! and a restarted or second watcher cannot say the same thing twice, whatever the
//! duplicate window. The last announcement of every subject under a filter is read once at
//! start (one pass, last per subject) and kept up to date in memory.

use std::collections::HashMap;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use async_nats::jetstream::Context;
use async_nats::HeaderMap;
use bytes::Bytes;

use crate::domain::{Alert, AlertBody, LastAlert};
use crate::envelope::{Envelope, EventMeta};
use crate::read::Reader;
use crate::subjects;

/// What [`Announcer::announce`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announced {
    /// Stored at this sequence.
    Stored(u64),
    /// Someone announced on this subject first: re-read and decide again.
    Superseded,
}

#[derive(Debug, thiserror::Error)]
#[error("alerts {filter}: {message}")]
pub struct AnnounceError {
    pub filter: String,
    pub message: String,
}

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

    fn error(&self, message: impl std::fmt::Display) -> AnnounceError {
        AnnounceError {
            filter: self.filter.clone(),
            message: message.to_string(),
        }
    }

    /// Reads the last announcement of every subject under the filter.
    pub async fn load(&mut self) -> Result<(), AnnounceError> {
        let mut reader = Reader::last_per_subject(&self.js, subjects::ALERTS_STREAM, &self.filter)
            .await
            .map_err(|e| self.error(e))?;
        let mut last = HashMap::new();
        while let Some(msg) = reader.next().await {
            let msg = msg.map_err(|e| self.error(e))?;
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

    /// Forgets what it knows; the next [`last`](Self::last) reads from `ALERTS`.
    pub fn invalidate(&mut self) {
        self.last.clear();
        self.complete = false;
    }

    /// Re-reads the last announcement of one subject from `ALERTS`.
    async fn refresh(&mut self, subject: &str) -> Result<(), AnnounceError> {
        let stream = self
            .js
            .get_stream(subjects::ALERTS_STREAM)
            .await
            .map_err(|e| self.error(e))?;
        match stream.get_last_raw_message_by_subject(subject).await {
            Ok(msg) => {
                let alert = self.read(subject, msg.sequence, Some(&msg.headers), &msg.payload);
                self.last.insert(subject.to_string(), alert);
            }
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {
                self.last.remove(subject);
            }
            Err(e) => return Err(self.error(format!("reading the last alert on {subject}: {e}"))),
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
        let body = Bytes::from(alert.payload().map_err(|e| self.error(e))?);
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
                .publish_with_headers(subject.clone(), headers, body)
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
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                self.refresh(&subject).await?;
                Ok(Announced::Superseded)
            }
            Err(e) => Err(self.error(format!("publishing to {subject}: {e}"))),
        }
    }
}
