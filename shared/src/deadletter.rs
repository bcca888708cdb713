//! Dead letters: a copy of an event a projector could not apply, with the reason, so the
//! projector can go on without losing it or blocking the events behind it.
//!
//! Each goes to `deadletter.{view}.{seq}` with an expected last subject sequence of 0,
//! so a redo after a crash or conflict cannot store a second copy, whatever the
//! duplicate window. The original headers are kept (for `stockwire deadletter replay`);
//! a payload too large to fit beside them is cut and marked. Writing ([`publish`]) and
//! reading ([`DeadLetter`], [`read_all`]) the format both live here.

use async_nats::jetstream::Context;
use async_nats::HeaderMap;
use bytes::Bytes;

use crate::envelope::DecodeError;
use crate::provision::MAX_EVENT_SIZE;
use crate::read::{ReadError, Reader, StoredMessage};
use crate::retry::{AppendError, AppendErrorKind};
use crate::subjects;

/// Room kept for headers inside the stream's message size limit.
const HEADER_ROOM: usize = 8 * 1024;

/// Copies the event stored at `seq` to `DEADLETTER`; Ok when it is there (now or before).
pub async fn publish(
    js: &Context,
    view: &str,
    seq: u64,
    subject: &str,
    headers: Option<&HeaderMap>,
    payload: &Bytes,
    error: &DecodeError,
) -> Result<(), async_nats::Error> {
    let mut out = HeaderMap::new();
    if let Some(original) = headers {
        copy_headers(original, &mut out, &[subjects::NATS_HEADER_PREFIX]);
    }
    out.insert(subjects::DEADLETTER_REASON, error.code());
    out.insert(
        subjects::DEADLETTER_ERROR,
        one_line(&error.to_string()).as_str(),
    );
    out.insert(subjects::DEADLETTER_VIEW, view);
    out.insert(subjects::DEADLETTER_SOURCE_SUBJECT, subject);
    out.insert(
        subjects::DEADLETTER_SOURCE_SEQUENCE,
        seq.to_string().as_str(),
    );
    out.insert(subjects::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, "0");
    out.insert(subjects::NATS_MSG_ID, format!("{view}-{seq}").as_str());
    let limit = MAX_EVENT_SIZE as usize - HEADER_ROOM;
    let body = if payload.len() > limit {
        out.insert(
            subjects::DEADLETTER_TRUNCATED,
            payload.len().to_string().as_str(),
        );
        payload.slice(..limit)
    } else {
        payload.clone()
    };
    let result = async {
        js.publish_with_headers(subjects::deadletter(view, seq), out, body)
            .await?
            .await
    }
    .await;
    match result {
        Ok(_) => Ok(()),
        Err(e) => match AppendError::from(e) {
            // Already dead-lettered by an earlier attempt.
            e if e.kind() == AppendErrorKind::WrongLastSequence => Ok(()),
            e => Err(e.into()),
        },
    }
}

/// A header value is one line of printable text.
fn one_line(text: &str) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    flat.chars().take(1000).collect()
}

/// Copies every header of `from` whose name does not begin with one of `skipped`
/// (compared without regard to case, as header names are).
fn copy_headers(from: &HeaderMap, to: &mut HeaderMap, skipped: &[&str]) {
    for (name, values) in from.iter() {
        let name: &str = name.as_ref();
        if skipped.iter().any(|prefix| has_prefix(name, prefix)) {
            continue;
        }
        for value in values {
            to.append(name, value.as_str());
        }
    }
}

/// Header names are case-insensitive.
fn has_prefix(name: &str, prefix: &str) -> bool {
    name.len() >= prefix.len()
        && name.is_char_boundary(prefix.len())
        && name[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// One stored dead letter, as `stockwire deadletter` reads it.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Its sequence in `DEADLETTER`.
    pub seq: u64,
    /// When it was stored, ms since the epoch.
    pub stored_ms: i64,
    pub subject: String,
    pub headers: HeaderMap,
    pub payload: Bytes,
}

impl From<StoredMessage> for DeadLetter {
    fn from(msg: StoredMessage) -> Self {
        Self {
            seq: msg.sequence,
            stored_ms: msg.stored_ms,
            subject: msg.subject,
            headers: msg.headers.unwrap_or_default(),
            payload: msg.payload,
        }
    }
}

impl DeadLetter {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.as_str())
    }

    /// Which view's projector could not apply it.
    pub fn view(&self) -> Option<&str> {
        self.header(subjects::DEADLETTER_VIEW)
    }

    /// The `DecodeError` code, e.g. `bad_json`.
    pub fn reason(&self) -> Option<&str> {
        self.header(subjects::DEADLETTER_REASON)
    }

    /// What was wrong, in words.
    pub fn error(&self) -> Option<&str> {
        self.header(subjects::DEADLETTER_ERROR)
    }

    /// Where the original is: its subject in `INVENTORY`.
    pub fn source_subject(&self) -> Option<&str> {
        self.header(subjects::DEADLETTER_SOURCE_SUBJECT)
    }

    /// Where the original is: its sequence in `INVENTORY`.
    pub fn source_sequence(&self) -> Option<u64> {
        self.header(subjects::DEADLETTER_SOURCE_SEQUENCE)
            .and_then(|s| s.parse().ok())
    }

    /// The original payload's length, when the letter holds only its beginning.
    pub fn truncated(&self) -> Option<usize> {
        self.header(subjects::DEADLETTER_TRUNCATED)
            .map(|n| n.parse().unwrap_or(usize::MAX))
    }

    /// The original event's own headers: the letter's without the dead-letter headers
    /// and JetStream's (a replay gets a fresh `Nats-Msg-Id`).
    pub fn original_headers(&self) -> HeaderMap {
        let mut out = HeaderMap::new();
        copy_headers(
            &self.headers,
            &mut out,
            &[
                subjects::DEADLETTER_HEADER_PREFIX,
                subjects::NATS_HEADER_PREFIX,
            ],
        );
        out
    }
}

/// Every dead letter, oldest first, up to the last one there when reading started.
pub async fn read_all(js: &Context) -> Result<Vec<DeadLetter>, ReadError> {
    let mut reader = Reader::open(js, subjects::DEADLETTER_STREAM, "", 1).await?;
    let mut letters = Vec::with_capacity(reader.remaining() as usize);
    while let Some(msg) = reader.next().await {
        letters.push(DeadLetter::from(msg?));
    }
    Ok(letters)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_keeps_only_the_original_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("myorg_type", "stock.received");
        headers.insert("x-trace", "abc");
        headers.insert(subjects::DEADLETTER_REASON, "bad_json");
        headers.insert(
            subjects::DEADLETTER_SOURCE_SUBJECT,
            "warehouse.a.product.b.sold",
        );
        headers.insert(subjects::DEADLETTER_TRUNCATED, "70000");
        headers.insert(subjects::NATS_MSG_ID, "stock-2");
        headers.insert(subjects::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, "0");
        headers.insert("stockwire-future", "x");
        let letter = DeadLetter {
            seq: 1,
            stored_ms: 0,
            subject: "deadletter.stock.2".into(),
            headers,
            payload: Bytes::new(),
        };
        assert_eq!(letter.truncated(), Some(70000));
        assert_eq!(letter.reason(), Some("bad_json"));
        let out = letter.original_headers();
        let mut names: Vec<String> = out.iter().map(|(n, _)| n.to_string()).collect();
        names.sort();
        assert_eq!(names, ["myorg_type", "x-trace"]);
        assert_eq!(out.get("x-trace").map(|v| v.as_str()), Some("abc"));
    }

    #[test]
    fn header_prefixes_ignore_case() {
        assert!(has_prefix("nats-msg-id", subjects::NATS_HEADER_PREFIX));
        assert!(!has_prefix("Nat", subjects::NATS_HEADER_PREFIX));
    }
}
