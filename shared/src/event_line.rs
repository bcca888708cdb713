//! The NDJSON event line: one event of record as `stockwire publish --file` reads it and
//! `stockwire history --json` writes it: `{"type":"stock.sold", <payload fields>,
//! "msg_id"?, "timestamp_ms"?}` (history adds `seq`).

use serde_json::{Map, Value};

use crate::domain::{check_not_in_future, Event, EventKind, InvalidField, KnownFields};
use crate::envelope::{check_msg_id, EventMeta};

/// Namespace of the msg ids derived from a line's number and content.
pub const LINE_ID_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x5f0c_6b1e_2d4a_4c8e_9a7b_3e1f_0d2c_8b61);

/// What is wrong with a line: its JSON, or one of its fields.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("{0}")]
    Json(String),
    #[error(transparent)]
    Field(#[from] InvalidField),
}

/// One NDJSON line: `{"type":"stock.sold", <payload fields>, "msg_id"?, "timestamp_ms"?}`.
pub fn parse(raw: &str, number: usize, now: i64) -> Result<(Event, EventMeta), LineError> {
    if let Some(known) = KnownFields::read(raw.as_bytes()) {
        return parse_fields(|name| known.get(name), raw, number, now);
    }
    let fields: Map<String, Value> = match serde_json::from_str(raw) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return Err(LineError::Json("a JSON object is expected".into())),
        Err(e) => return Err(LineError::Json(format!("not valid JSON: {e}"))),
    };
    parse_fields(|name| fields.get(name), raw, number, now)
}

/// A line's fields, each looked up by `get`, checked.
fn parse_fields<'v>(
    get: impl Fn(&str) -> Option<&'v Value>,
    raw: &str,
    number: usize,
    now: i64,
) -> Result<(Event, EventMeta), LineError> {
    let kind = match get("type") {
        None | Some(Value::Null) => return Err(InvalidField::new("type", "is missing").into()),
        Some(Value::String(t)) => EventKind::from_event_type(t).ok_or_else(|| {
            let known: Vec<_> = EventKind::ALL.iter().map(|k| k.event_type()).collect();
            InvalidField::new(
                "type",
                format!(
                    "unknown event type {t:?}; expected one of {}",
                    known.join(", ")
                ),
            )
        })?,
        Some(_) => return Err(InvalidField::new("type", "must be a string").into()),
    };
    let event = Event::from_lookup(kind, &get)?;
    let timestamp_ms = match get("timestamp_ms") {
        None | Some(Value::Null) => now,
        Some(Value::Number(n)) => match n.as_i64().filter(|ms| *ms >= 0) {
            Some(ms) => ms,
            None => {
                return Err(InvalidField::new(
                    "timestamp_ms",
                    format!("{n} is not milliseconds since the epoch"),
                )
                .into())
            }
        },
        Some(_) => {
            return Err(InvalidField::new(
                "timestamp_ms",
                "must be a number (milliseconds since the epoch)",
            )
            .into())
        }
    };
    check_not_in_future("timestamp_ms", timestamp_ms, now)?;
    let msg_id = match get("msg_id") {
        None | Some(Value::Null) => {
            let name = format!("{number}\n{}", raw.trim());
            uuid::Uuid::new_v5(&LINE_ID_NAMESPACE, name.as_bytes()).to_string()
        }
        Some(Value::String(id)) => {
            check_msg_id("msg_id", id)?;
            id.clone()
        }
        Some(_) => return Err(InvalidField::new("msg_id", "must be a string").into()),
    };
    Ok((
        event,
        EventMeta {
            msg_id,
            timestamp_ms,
        },
    ))
}

/// The line of a recorded event (what [`parse`] reads back to the same event and meta).
pub fn to_line(event: &Event, meta: &EventMeta) -> Map<String, Value> {
    let mut line = Map::new();
    line.insert("type".into(), event.event_type().into());
    if let Ok(Value::Object(payload)) = serde_json::to_value(event) {
        line.extend(payload);
    }
    line.insert("msg_id".into(), meta.msg_id.clone().into());
    line.insert("timestamp_ms".into(), meta.timestamp_ms.into());
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_written_reads_back_as_the_same_event() {
        let raw = r#"{"type":"stock.sold","warehouse":"ams1","sku":"apple","location":"A43","quantity":3,"msg_id":"m1","timestamp_ms":1700000000000}"#;
        let (event, meta) = parse(raw, 1, 1_800_000_000_000).expect("a valid line");
        let line = Value::Object(to_line(&event, &meta)).to_string();
        assert_eq!(
            parse(&line, 7, 1_800_000_000_000).expect("again"),
            (event, meta)
        );
        // Without a msg id, the line's number and content make one, the same every time.
        let bare =
            r#"{"type":"stock.received","warehouse":"a","sku":"b","location":"c","quantity":1}"#;
        let (_, first) = parse(bare, 3, 0).expect("valid");
        let (_, again) = parse(bare, 3, 0).expect("valid");
        let (_, other) = parse(bare, 4, 0).expect("valid");
        assert_eq!(first.msg_id, again.msg_id);
        assert_ne!(first.msg_id, other.msg_id);
        assert!(matches!(parse("[1]", 1, 0), Err(LineError::Json(_))));
    }
}
