//! The envelope: a typed event <-> (subject, standard headers, JSON payload).
//!
//! Every message Stockwire writes carries `{prefix}_format`, `{prefix}_type`,
//! `{prefix}_msg_id`, `{prefix}_timestamp_ms`, `{prefix}_version` and `Nats-Msg-Id`
//! (the msg id, so JetStream drops a repeat inside the duplicate window; an event of record's
//! is `{warehouse}:{msg id}`, see [`Envelope::encode`]).
//! Decoding checks all of them and says exactly what is wrong ([`DecodeError`]).
//! Older payload versions are upcast to the current one before the fields are read.

use async_nats::header::{HeaderName, IntoHeaderName, NATS_MESSAGE_ID};
use async_nats::HeaderMap;
use bytes::Bytes;
use serde_json::{Map, Value};

use crate::domain::{format_ms, Event, EventKind, InvalidField, KnownFields, MAX_FUTURE_MS};
use crate::subjects;

/// The payload schema version this code writes.
pub const CURRENT_VERSION: u32 = 1;

/// The only payload format.
pub const FORMAT_JSON: &str = "application/json";

/// Lifts a payload of version `n` to `n + 1`, in place.
pub type Upcaster = fn(EventKind, &mut Map<String, Value>) -> Result<(), InvalidField>;

/// `UPCASTERS[n - 1]` lifts version `n` to `n + 1`; its length is `CURRENT_VERSION - 1`.
/// When version 2 comes, add the function that turns a version-1 payload into a
/// version-2 one here, and raise [`CURRENT_VERSION`]; the test `upcasting_lifts_old_payloads`
/// shows the shape.
pub const UPCASTERS: &[Upcaster] = &[];

/// Why a message is not a valid event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("missing header {0}")]
    MissingHeader(String),
    #[error("header {name}: {problem}")]
    InvalidHeader { name: String, problem: String },
    #[error("unsupported format {0:?}; only application/json is understood")]
    UnsupportedFormat(String),
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    #[error("unsupported payload version {found:?}; this build reads 1 to {current}")]
    UnsupportedVersion { found: String, current: u32 },
    #[error("payload is not a JSON object: {0}")]
    BadJson(String),
    #[error("payload {0}")]
    InvalidField(#[from] InvalidField),
    #[error("subject {subject} does not match the payload, which belongs on {expected}")]
    SubjectMismatch { subject: String, expected: String },
    #[error(
        "event time {} is more than 5 minutes after the server stored the event ({})",
        format_ms(*timestamp_ms),
        format_ms(*stored_ms)
    )]
    FromTheFuture { timestamp_ms: i64, stored_ms: i64 },
}

impl DecodeError {
    /// A short, stable code for the reason (used in dead-letter headers and counts).
    pub fn code(&self) -> &'static str {
        match self {
            DecodeError::MissingHeader(_) => "missing_header",
            DecodeError::InvalidHeader { .. } => "invalid_header",
            DecodeError::UnsupportedFormat(_) => "unsupported_format",
            DecodeError::UnknownType(_) => "unknown_type",
            DecodeError::UnsupportedVersion { .. } => "unsupported_version",
            DecodeError::BadJson(_) => "bad_json",
            DecodeError::InvalidField(_) => "invalid_field",
            DecodeError::SubjectMismatch { .. } => "subject_mismatch",
            DecodeError::FromTheFuture { .. } => "future_time",
        }
    }
}

/// Longest msg id accepted from a caller.
pub const MAX_MSG_ID_LEN: usize = 128;

/// Checks a caller-supplied msg id: 1 to 128 printable ASCII characters, no spaces.
pub fn check_msg_id(field: &str, value: &str) -> Result<(), InvalidField> {
    if value.is_empty() || value.len() > MAX_MSG_ID_LEN {
        return Err(InvalidField::new(
            field,
            format!("must be 1 to {MAX_MSG_ID_LEN} characters long"),
        ));
    }
    if let Some(bad) = value.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(InvalidField::new(
            field,
            format!("{value:?} contains {bad:?}; use printable ASCII without spaces"),
        ));
    }
    Ok(())
}

/// When and under which id an event was recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMeta {
    pub msg_id: String,
    pub timestamp_ms: i64,
}

/// A decoded event with its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub event: Event,
    pub meta: EventMeta,
    /// The version the payload was written in (before upcasting).
    pub version: u32,
}

/// A message ready to publish.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub subject: String,
    pub headers: HeaderMap,
    pub payload: Bytes,
}

/// The standard header names for one prefix, built once: every message written or
/// read names its headers with clones of these (a reference count, not a copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    prefix: String,
    format: HeaderName,
    event_type: HeaderName,
    msg_id: HeaderName,
    timestamp_ms: HeaderName,
    version: HeaderName,
}

impl Default for Envelope {
    fn default() -> Self {
        Self::with_checked_prefix(subjects::DEFAULT_HEADER_PREFIX)
    }
}

/// Longest header prefix accepted.
pub const MAX_PREFIX_LEN: usize = 32;

impl Envelope {
    /// The envelope for `prefix`: 1 to 32 of `A-Z a-z 0-9 _ -`.
    pub fn new(prefix: &str) -> Result<Self, InvalidField> {
        let ok = !prefix.is_empty()
            && prefix.len() <= MAX_PREFIX_LEN
            && prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !ok {
            return Err(InvalidField::new(
                "--header-prefix",
                format!("{prefix:?} is not allowed; use 1 to {MAX_PREFIX_LEN} of A-Z a-z 0-9 _ -"),
            ));
        }
        Ok(Self::with_checked_prefix(prefix))
    }

    /// `prefix` is known to be a valid header-name token, so the names are too.
    fn with_checked_prefix(prefix: &str) -> Self {
        let name = |suffix: &str| format!("{prefix}_{suffix}").into_header_name();
        Self {
            prefix: prefix.to_string(),
            format: name(subjects::HEADER_FORMAT),
            event_type: name(subjects::HEADER_TYPE),
            msg_id: name(subjects::HEADER_MSG_ID),
            timestamp_ms: name(subjects::HEADER_TIMESTAMP_MS),
            version: name(subjects::HEADER_VERSION),
        }
    }

    /// The header prefix, e.g. `myorg`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The name of the type header, e.g. `myorg_type`.
    pub fn type_header(&self) -> &str {
        self.event_type.as_ref()
    }

    /// The name of the msg id header, e.g. `myorg_msg_id`.
    pub fn msg_id_header(&self) -> &str {
        self.msg_id.as_ref()
    }

    /// The name of the timestamp header, e.g. `myorg_timestamp_ms`.
    pub fn timestamp_header(&self) -> &str {
        self.timestamp_ms.as_ref()
    }

    /// The standard headers for a message of `event_type`.
    pub fn headers(&self, event_type: &str, meta: &EventMeta) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(self.format.clone(), FORMAT_JSON);
        headers.insert(self.event_type.clone(), event_type);
        headers.insert(self.msg_id.clone(), meta.msg_id.as_str());
        headers.insert(self.timestamp_ms.clone(), meta.timestamp_ms.to_string());
        headers.insert(self.version.clone(), CURRENT_VERSION.to_string());
        headers.insert(NATS_MESSAGE_ID, meta.msg_id.as_str());
        headers
    }

    /// An event of record, ready to publish on its subject.
    ///
    /// Its `Nats-Msg-Id` is `{warehouse}:{msg id}`: a msg id is the caller's key for one
    /// warehouse's event, and the hub's `INVENTORY` holds events recorded at several homes
    /// (edge sites, sourced, and its own). Two homes that pick the same id, a reused
    /// `--msg-id` or transfer id, must not have the hub drop one of them as a repeat.
    pub fn encode(&self, event: &Event, meta: &EventMeta) -> Outbound {
        let mut headers = self.headers(event.event_type(), meta);
        headers.insert(
            NATS_MESSAGE_ID,
            format!("{}:{}", event.warehouse(), meta.msg_id).as_str(),
        );
        Outbound {
            subject: subjects::event(event.warehouse(), event.sku(), event.kind()),
            headers,
            payload: Bytes::from(event.to_payload()),
        }
    }

    /// Reads an event of record back, checking every header, the payload and the subject.
    pub fn decode(
        &self,
        subject: &str,
        headers: Option<&HeaderMap>,
        payload: &[u8],
        stored_ms: i64,
    ) -> Result<Recorded, DecodeError> {
        self.decode_with(subject, headers, payload, stored_ms, UPCASTERS)
    }

    /// Decodes an event read from the log.
    pub fn decode_stored(
        &self,
        stored: &crate::read::StoredMessage,
    ) -> Result<Recorded, DecodeError> {
        self.decode(
            &stored.subject,
            stored.headers.as_ref(),
            &stored.payload,
            stored.stored_ms,
        )
    }

    fn decode_with(
        &self,
        subject: &str,
        headers: Option<&HeaderMap>,
        payload: &[u8],
        stored_ms: i64,
        upcasters: &[Upcaster],
    ) -> Result<Recorded, DecodeError> {
        let header = |name: &HeaderName| -> Result<&str, DecodeError> {
            headers
                .and_then(|h| h.get(name.clone()))
                .map(|v| v.as_str())
                .ok_or_else(|| DecodeError::MissingHeader(name.to_string()))
        };
        let format = header(&self.format)?;
        if format != FORMAT_JSON {
            return Err(DecodeError::UnsupportedFormat(format.to_string()));
        }
        let type_name = header(&self.event_type)?;
        let kind = EventKind::from_event_type(type_name)
            .ok_or_else(|| DecodeError::UnknownType(type_name.to_string()))?;
        let msg_id = header(&self.msg_id)?;
        if msg_id.is_empty() {
            return Err(DecodeError::InvalidHeader {
                name: self.msg_id.to_string(),
                problem: "is empty".into(),
            });
        }
        let timestamp = header(&self.timestamp_ms)?;
        let timestamp_ms = timestamp
            .parse::<i64>()
            .ok()
            .filter(|ms| *ms >= 0)
            .ok_or_else(|| DecodeError::InvalidHeader {
                name: self.timestamp_ms.to_string(),
                problem: format!("{timestamp:?} is not milliseconds since the epoch"),
            })?;
        // Judged against the time the server stored the event, not the reader's clock,
        // so that every replay of the log decides the same.
        if timestamp_ms > stored_ms.saturating_add(MAX_FUTURE_MS) {
            return Err(DecodeError::FromTheFuture {
                timestamp_ms,
                stored_ms,
            });
        }
        let version_text = header(&self.version)?;
        let current = upcasters.len() as u32 + 1;
        let version = version_text
            .parse::<u32>()
            .ok()
            .filter(|v| (1..=current).contains(v))
            .ok_or_else(|| DecodeError::UnsupportedVersion {
                found: version_text.to_string(),
                current,
            })?;

        let lifts = &upcasters[(version as usize - 1)..];
        let known = if lifts.is_empty() {
            KnownFields::read(payload)
        } else {
            None
        };
        let event = match known {
            Some(known) => Event::from_lookup(kind, |name| known.get(name))?,
            // An older version to lift, or a payload that is not a plain object.
            None => {
                let mut fields = match serde_json::from_slice::<Value>(payload) {
                    Ok(Value::Object(map)) => map,
                    Ok(_) => return Err(DecodeError::BadJson("not an object".into())),
                    Err(e) => return Err(DecodeError::BadJson(e.to_string())),
                };
                for lift in lifts {
                    lift(kind, &mut fields)?;
                }
                Event::from_fields(kind, &fields)?
            }
        };

        let matches = subjects::split_event(subject).is_some_and(|(w, sku, token)| {
            w == event.warehouse().as_str()
                && sku == event.sku().as_str()
                && token == kind.subject_token()
        });
        if !matches {
            return Err(DecodeError::SubjectMismatch {
                subject: subject.to_string(),
                expected: subjects::event(event.warehouse(), event.sku(), kind),
            });
        }
        Ok(Recorded {
            event,
            meta: EventMeta {
                msg_id: msg_id.to_string(),
                timestamp_ms,
            },
            version,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Location, Quantity, Reason, Sku, WarehouseId};

    fn destroyed() -> Event {
        Event::Destroyed {
            warehouse: WarehouseId::parse("ams1").unwrap(),
            sku: Sku::parse("apple").unwrap(),
            location: Location::parse("A43").unwrap(),
            quantity: Quantity::new(3).unwrap(),
            reason: Reason::parse("rotten").unwrap(),
        }
    }

    /// When the server stored the events of these tests: a second after their event time.
    const STORED: i64 = 1_795_176_001_000;

    fn meta() -> EventMeta {
        EventMeta {
            msg_id: "m-1".into(),
            timestamp_ms: 1_795_176_000_000,
        }
    }

    #[test]
    fn a_prefix_must_be_a_header_name_token() {
        for ok in ["acme", "my-org_2", &"x".repeat(32)] {
            assert!(Envelope::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "my:org", "my org", "ünï", &"x".repeat(33)] {
            let err = Envelope::new(bad).unwrap_err();
            assert_eq!(err.field, "--header-prefix", "{bad}");
        }
    }

    #[test]
    fn round_trip_with_every_standard_header() {
        let env = Envelope::default();
        let out = env.encode(&destroyed(), &meta());
        assert_eq!(out.subject, "warehouse.ams1.product.apple.destroyed");
        let h = &out.headers;
        assert_eq!(h.get("myorg_format").unwrap().as_str(), "application/json");
        assert_eq!(h.get("myorg_type").unwrap().as_str(), "stock.destroyed");
        assert_eq!(h.get("myorg_msg_id").unwrap().as_str(), "m-1");
        assert_eq!(h.get("Nats-Msg-Id").unwrap().as_str(), "ams1:m-1");
        assert_eq!(
            h.get("myorg_timestamp_ms").unwrap().as_str(),
            "1795176000000"
        );
        assert_eq!(h.get("myorg_version").unwrap().as_str(), "1");
        let back = env
            .decode(&out.subject, Some(h), &out.payload, STORED)
            .unwrap();
        assert_eq!(back.event, destroyed());
        assert_eq!(back.meta, meta());
        assert_eq!(back.version, 1);
    }

    #[test]
    fn the_prefix_is_configurable() {
        let env = Envelope::new("acme").unwrap();
        let out = env.encode(&destroyed(), &meta());
        assert!(out.headers.get("acme_type").is_some());
        assert!(out.headers.get("myorg_type").is_none());
        let err = Envelope::default()
            .decode(&out.subject, Some(&out.headers), &out.payload, STORED)
            .unwrap_err();
        assert_eq!(err, DecodeError::MissingHeader("myorg_format".into()));
    }

    #[test]
    fn decode_errors_say_what_is_wrong() {
        let env = Envelope::default();
        let out = env.encode(&destroyed(), &meta());
        let with = |name: &str, value: Option<&str>| {
            let mut h = HeaderMap::new();
            for (k, v) in out.headers.iter() {
                if AsRef::<str>::as_ref(k) != name {
                    h.insert(k.clone(), v.first().unwrap().clone());
                }
            }
            if let Some(v) = value {
                h.insert(name, v);
            }
            env.decode(&out.subject, Some(&h), &out.payload, STORED)
        };
        assert_eq!(
            with("myorg_type", None).unwrap_err().code(),
            "missing_header"
        );
        assert_eq!(
            with("myorg_type", Some("stock.stolen")).unwrap_err(),
            DecodeError::UnknownType("stock.stolen".into())
        );
        assert_eq!(
            with("myorg_version", Some("2")).unwrap_err().code(),
            "unsupported_version"
        );
        assert_eq!(
            with("myorg_version", Some("x")).unwrap_err().code(),
            "unsupported_version"
        );
        assert_eq!(
            with("myorg_format", Some("text/plain")).unwrap_err().code(),
            "unsupported_format"
        );
        assert_eq!(
            with("myorg_timestamp_ms", Some("soon")).unwrap_err().code(),
            "invalid_header"
        );
        assert_eq!(
            with("myorg_msg_id", None).unwrap_err().code(),
            "missing_header"
        );
        assert_eq!(
            env.decode(&out.subject, None, &out.payload, STORED)
                .unwrap_err()
                .code(),
            "missing_header"
        );

        let bad_json = env
            .decode(&out.subject, Some(&out.headers), b"{not json", STORED)
            .unwrap_err();
        assert_eq!(bad_json.code(), "bad_json");
        let empty = env
            .decode(&out.subject, Some(&out.headers), b"", STORED)
            .unwrap_err();
        assert_eq!(empty.code(), "bad_json");

        let field = env
            .decode(
                &out.subject,
                Some(&out.headers),
                br#"{"warehouse":"ams1","sku":"apple","location":"A43","quantity":0,"reason":"x"}"#,
                STORED,
            )
            .unwrap_err();
        assert_eq!(field.to_string(), "payload quantity: must be at least 1");

        let mismatch = env
            .decode(
                "warehouse.ams1.product.pear.destroyed",
                Some(&out.headers),
                &out.payload,
                STORED,
            )
            .unwrap_err();
        assert_eq!(mismatch.code(), "subject_mismatch");

        // Event time may run ahead of the server's clock by 5 minutes, not more.
        let stored = meta().timestamp_ms;
        assert!(env
            .decode(
                &out.subject,
                Some(&out.headers),
                &out.payload,
                stored - MAX_FUTURE_MS
            )
            .is_ok());
        let future = env
            .decode(
                &out.subject,
                Some(&out.headers),
                &out.payload,
                stored - MAX_FUTURE_MS - 1,
            )
            .unwrap_err();
        assert_eq!(future.code(), "future_time");
        assert!(
            future.to_string().starts_with("event time 2026-"),
            "{future}"
        );
    }

    #[test]
    fn upcasting_lifts_old_payloads() {
        // Suppose version 1 called the count `qty` and version 2 renamed it `quantity`:
        // the version-2 reader keeps one upcaster, and old events still decode.
        fn v1_to_v2(_: EventKind, fields: &mut Map<String, Value>) -> Result<(), InvalidField> {
            let qty = fields
                .remove("qty")
                .ok_or_else(|| InvalidField::new("qty", "is missing"))?;
            fields.insert("quantity".into(), qty);
            Ok(())
        }
        let env = Envelope::default();
        let out = env.encode(&destroyed(), &meta());
        let old =
            br#"{"warehouse":"ams1","sku":"apple","location":"A43","qty":3,"reason":"rotten"}"#;
        let back = env
            .decode_with(&out.subject, Some(&out.headers), old, STORED, &[v1_to_v2])
            .unwrap();
        assert_eq!(back.event, destroyed());
        assert_eq!(back.version, 1);

        // A version-2 payload is already current: no upcaster runs.
        let mut h = out.headers.clone();
        h.insert("myorg_version", "2");
        let back = env
            .decode_with(&out.subject, Some(&h), &out.payload, STORED, &[v1_to_v2])
            .unwrap();
        assert_eq!(back.version, 2);
        assert_eq!(back.event, destroyed());
    }
}
