//! Dead letters: a copy of an event a projector could not apply, with the reason, so the
//! projector can go on without losing it or blocking the events behind it.
//!
//! Each goes to `deadletter.{view}.{seq}` with an expected last subject sequence of 0,
//! so a redo after a crash or conflict cannot store a second copy, whatever the
//! duplicate window. The original headers are kept (for `stockwire deadletter replay`);
//! a payload too large to fit beside them is cut and marked.

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::Context;
use async_nats::HeaderMap;
use bytes::Bytes;

use crate::envelope::DecodeError;
use crate::provision::MAX_EVENT_SIZE;
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
        for (name, values) in original.iter() {
            let name: &str = name.as_ref();
            if name.starts_with(subjects::NATS_HEADER_PREFIX) {
                continue;
            }
            for value in values {
                out.append(name, value.as_str());
            }
        }
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
        // Already dead-lettered by an earlier attempt.
        Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(()),
        Err(e) => Err(e.into()),
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
