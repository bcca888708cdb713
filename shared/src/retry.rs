//! Every retry rule in one place: what the server's answer to a write means, what to do
//! about it, and how long to wait before trying again (bounded, jittered backoff).
//!
//! JetStream answers an append (a publish, an atomic batch) with a PubAck or an error
//! code. Callers never compare codes: they match an [`AppendErrorKind`] and ask it for
//! its [`Next`] step, so a rule (say, that 10164 on a replicated stream means "read
//! again", not "fail") is written once, here.

use std::fmt;
use std::time::Duration;

use async_nats::jetstream::context::{PublishError, PublishErrorKind};

use crate::error::Error;

/// Why an append was not stored, by meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendErrorKind {
    /// 10071: an expectation did not hold; another writer got in first. Decide again.
    WrongLastSequence,
    /// 10070: the stream's last message is not the one expected (`Nats-Expected-Last-Msg-Id`).
    WrongLastMsgId,
    /// 10164: on a replicated stream, another write with an expectation on the same
    /// subject is still being stored; nothing is decided yet. Read again and retry.
    ExpectationInFlight,
    /// 10158: a message with the same msg id is still being stored.
    DuplicateInProcess,
    /// 10163: the expected last sequence is not known yet.
    LastSequenceNotReady,
    /// 10176: the batch was dropped before its commit (a leader change, say).
    IncompleteBatch,
    /// 10201: a message of the batch repeats a msg id already stored.
    BatchDuplicate,
    /// 10008: JetStream is temporarily unavailable.
    Unavailable,
    /// 503: no stream answered: in a cluster, the stream has no leader right now (an
    /// election takes seconds); on one server, no stream stores the subject.
    NoResponders,
    /// No answer within the request timeout.
    TimedOut,
    /// The message (or the batch) is larger than the server takes.
    TooLarge,
    /// The server answered something that is not the acknowledgement of what was sent.
    BadAnswer,
    /// The connection failed while sending.
    Connection,
    /// Any other refusal by JetStream (the source says which).
    Refused,
}

/// What a caller does after an append failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Send the same messages again (same msg ids), after a backoff.
    Retry,
    /// Read the state again, decide again, then send (same msg ids).
    Decide,
    /// Give up and report it.
    Fail,
}

impl AppendErrorKind {
    /// The kind of a JetStream API error code.
    pub fn from_err_code(code: u64) -> Self {
        match code {
            10071 => Self::WrongLastSequence,
            10070 => Self::WrongLastMsgId,
            10164 => Self::ExpectationInFlight,
            10158 => Self::DuplicateInProcess,
            10163 => Self::LastSequenceNotReady,
            10176 => Self::IncompleteBatch,
            10201 => Self::BatchDuplicate,
            10008 => Self::Unavailable,
            10054 => Self::TooLarge,
            _ => Self::Refused,
        }
    }

    /// What to do about it.
    pub fn next(self) -> Next {
        match self {
            Self::WrongLastSequence | Self::WrongLastMsgId | Self::ExpectationInFlight => {
                Next::Decide
            }
            Self::DuplicateInProcess
            | Self::LastSequenceNotReady
            | Self::IncompleteBatch
            | Self::Unavailable
            | Self::NoResponders
            | Self::TimedOut => Next::Retry,
            Self::BatchDuplicate
            | Self::TooLarge
            | Self::BadAnswer
            | Self::Connection
            | Self::Refused => Next::Fail,
        }
    }
}

impl fmt::Display for AppendErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::WrongLastSequence => "wrong last sequence: another writer got in first",
            Self::WrongLastMsgId => "the stream's last message is not the one expected",
            Self::ExpectationInFlight => "another checked write of the same subject is in flight",
            Self::DuplicateInProcess => "a message with the same msg id is still being stored",
            Self::LastSequenceNotReady => "the expected last sequence is not ready yet",
            Self::IncompleteBatch => "the batch was dropped before its commit",
            Self::BatchDuplicate => "the batch holds a msg id that is already stored",
            Self::Unavailable => "JetStream is temporarily unavailable",
            Self::NoResponders => {
                "no stream answered (none stores the subject, or it has no leader right now)"
            }
            Self::TimedOut => "no acknowledgement in time",
            Self::TooLarge => "too large for the server",
            Self::BadAnswer => "unexpected answer",
            Self::Connection => "the connection failed",
            Self::Refused => "JetStream refused it",
        })
    }
}

/// An append that was not stored.
pub type AppendError = Error<AppendErrorKind>;

impl From<PublishError> for AppendError {
    fn from(e: PublishError) -> Self {
        // Where async-nats's kind says no more than ours, its error is left out.
        let plain = match e.kind() {
            PublishErrorKind::StreamNotFound => Some(AppendErrorKind::NoResponders),
            PublishErrorKind::TimedOut => Some(AppendErrorKind::TimedOut),
            _ => None,
        };
        if let Some(kind) = plain {
            return AppendError::new(kind);
        }
        let kind = match e.kind() {
            PublishErrorKind::WrongLastSequence => AppendErrorKind::WrongLastSequence,
            PublishErrorKind::MaxPayloadExceeded => AppendErrorKind::TooLarge,
            PublishErrorKind::BrokenPipe => AppendErrorKind::Connection,
            _ => std::error::Error::source(&e)
                .and_then(|s| s.downcast_ref::<async_nats::jetstream::Error>())
                .map_or(AppendErrorKind::Refused, |api| {
                    AppendErrorKind::from_err_code(api.error_code().0)
                }),
        };
        AppendError::with_source(kind, e)
    }
}

/// Exponential backoff with full jitter, bounded by `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            attempt: 0,
        }
    }

    /// The next delay: a random duration up to `base * 2^attempt`, at most `max`.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(jitter())
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A random fraction in [0.5, 1).
fn jitter() -> f64 {
    let bits = uuid::Uuid::new_v4().as_u128() as u64 >> 11;
    0.5 + (bits as f64 / (1u64 << 53) as f64) / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stays_bounded() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(200));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(5) && first < Duration::from_millis(10));
        for _ in 0..40 {
            assert!(b.next_delay() < Duration::from_millis(200));
        }
        b.reset();
        assert!(b.next_delay() < Duration::from_millis(10));
    }

    #[test]
    fn the_server_codes_a_cluster_answers_with_are_retried_not_failed() {
        let next = |code| AppendErrorKind::from_err_code(code).next();
        assert_eq!(next(10071), Next::Decide);
        assert_eq!(next(10164), Next::Decide);
        assert_eq!(AppendErrorKind::NoResponders.next(), Next::Retry);
        for code in [10158, 10163, 10176, 10008] {
            assert_eq!(next(code), Next::Retry, "{code}");
        }
        assert_eq!(next(10201), Next::Fail);
        assert_eq!(
            AppendErrorKind::from_err_code(10201),
            AppendErrorKind::BatchDuplicate
        );
        assert_eq!(next(10999), Next::Fail);
    }
}
