//! Events of record: what happened to stock, one enum with a struct variant per kind.
//!
//! The payload is "payload as arguments": the JSON object of the variant's fields
//! (`{"warehouse":"ams1","sku":"apple","location":"A43","quantity":3}`). The type travels
//! in a header, never in the payload. Unknown fields are ignored on read; a missing or
//! invalid field is an [`InvalidField`] that names it.

use std::fmt;

use serde::Serialize;
use serde_json::{Map, Value};

use super::ids::{
    parse_count_text, InvalidField, Location, Quantity, Reason, Sku, TransferId, WarehouseId,
};

/// The kinds of event of record, in the order of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    Received,
    Sold,
    Destroyed,
    Moved,
    Corrected,
    TransferredOut,
    TransferredIn,
}

impl EventKind {
    pub const ALL: [EventKind; 7] = [
        EventKind::Received,
        EventKind::Sold,
        EventKind::Destroyed,
        EventKind::Moved,
        EventKind::Corrected,
        EventKind::TransferredOut,
        EventKind::TransferredIn,
    ];

    /// The last token of the event's subject, e.g. `sold`.
    pub fn subject_token(self) -> &'static str {
        match self {
            EventKind::Received => "received",
            EventKind::Sold => "sold",
            EventKind::Destroyed => "destroyed",
            EventKind::Moved => "moved",
            EventKind::Corrected => "corrected",
            EventKind::TransferredOut => "transferred_out",
            EventKind::TransferredIn => "transferred_in",
        }
    }

    /// The value of the type header, e.g. `stock.sold`.
    pub fn event_type(self) -> &'static str {
        match self {
            EventKind::Received => "stock.received",
            EventKind::Sold => "stock.sold",
            EventKind::Destroyed => "stock.destroyed",
            EventKind::Moved => "stock.moved",
            EventKind::Corrected => "stock.corrected",
            EventKind::TransferredOut => "stock.transferred_out",
            EventKind::TransferredIn => "stock.transferred_in",
        }
    }

    pub fn from_event_type(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.event_type() == value)
    }

    pub fn from_subject_token(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.subject_token() == value)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.event_type())
    }
}

/// One fact about one product in one warehouse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Event {
    /// Units arrived at a location.
    Received {
        warehouse: WarehouseId,
        sku: Sku,
        location: Location,
        quantity: Quantity,
    },
    /// Units left a location with a customer.
    Sold {
        warehouse: WarehouseId,
        sku: Sku,
        location: Location,
        quantity: Quantity,
    },
    /// Units were thrown away.
    Destroyed {
        warehouse: WarehouseId,
        sku: Sku,
        location: Location,
        quantity: Quantity,
        reason: Reason,
    },
    /// Units went from one location to another inside the warehouse.
    Moved {
        warehouse: WarehouseId,
        sku: Sku,
        from: Location,
        to: Location,
        quantity: Quantity,
    },
    /// A count: the location holds exactly `quantity` units (0 allowed).
    Corrected {
        warehouse: WarehouseId,
        sku: Sku,
        location: Location,
        quantity: u32,
    },
    /// Units left for another warehouse (the first half of a transfer).
    TransferredOut {
        warehouse: WarehouseId,
        sku: Sku,
        location: Location,
        quantity: Quantity,
        to_warehouse: WarehouseId,
        transfer_id: TransferId,
    },
    /// Units arrived from another warehouse (the second half of a transfer).
    TransferredIn {
        warehouse: WarehouseId,
        sku: Sku,
        location: Location,
        quantity: Quantity,
        from_warehouse: WarehouseId,
        transfer_id: TransferId,
    },
}

impl Event {
    pub fn kind(&self) -> EventKind {
        match self {
            Event::Received { .. } => EventKind::Received,
            Event::Sold { .. } => EventKind::Sold,
            Event::Destroyed { .. } => EventKind::Destroyed,
            Event::Moved { .. } => EventKind::Moved,
            Event::Corrected { .. } => EventKind::Corrected,
            Event::TransferredOut { .. } => EventKind::TransferredOut,
            Event::TransferredIn { .. } => EventKind::TransferredIn,
        }
    }

    pub fn event_type(&self) -> &'static str {
        self.kind().event_type()
    }

    pub fn warehouse(&self) -> &WarehouseId {
        match self {
            Event::Received { warehouse, .. }
            | Event::Sold { warehouse, .. }
            | Event::Destroyed { warehouse, .. }
            | Event::Moved { warehouse, .. }
            | Event::Corrected { warehouse, .. }
            | Event::TransferredOut { warehouse, .. }
            | Event::TransferredIn { warehouse, .. } => warehouse,
        }
    }

    pub fn sku(&self) -> &Sku {
        match self {
            Event::Received { sku, .. }
            | Event::Sold { sku, .. }
            | Event::Destroyed { sku, .. }
            | Event::Moved { sku, .. }
            | Event::Corrected { sku, .. }
            | Event::TransferredOut { sku, .. }
            | Event::TransferredIn { sku, .. } => sku,
        }
    }

    /// Builds a moved event; moving to the same location is refused.
    pub fn moved(
        warehouse: WarehouseId,
        sku: Sku,
        from: Location,
        to: Location,
        quantity: Quantity,
    ) -> Result<Self, InvalidField> {
        if from == to {
            return Err(InvalidField::new(
                "to",
                format!("is the same location as from ({from})"),
            ));
        }
        Ok(Event::Moved {
            warehouse,
            sku,
            from,
            to,
            quantity,
        })
    }

    /// The JSON payload.
    pub fn to_payload(&self) -> Vec<u8> {
        // A derive of plain strings and integers cannot fail to serialize.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads the payload fields of an event of `kind`, validating every one of them.
    pub fn from_fields(kind: EventKind, fields: &Map<String, Value>) -> Result<Self, InvalidField> {
        Self::from_lookup(kind, |name| fields.get(name))
    }

    /// [`from_fields`](Self::from_fields), with each field looked up by `get`.
    pub fn from_lookup<'v>(
        kind: EventKind,
        get: impl Fn(&str) -> Option<&'v Value>,
    ) -> Result<Self, InvalidField> {
        let f = Fields(get);
        let warehouse = f.token(WarehouseId::FIELD, WarehouseId::parse)?;
        let sku = f.token(Sku::FIELD, Sku::parse)?;
        Ok(match kind {
            EventKind::Received => Event::Received {
                warehouse,
                sku,
                location: f.token("location", Location::parse)?,
                quantity: f.quantity()?,
            },
            EventKind::Sold => Event::Sold {
                warehouse,
                sku,
                location: f.token("location", Location::parse)?,
                quantity: f.quantity()?,
            },
            EventKind::Destroyed => Event::Destroyed {
                warehouse,
                sku,
                location: f.token("location", Location::parse)?,
                quantity: f.quantity()?,
                reason: f.token("reason", Reason::parse)?,
            },
            EventKind::Moved => Event::moved(
                warehouse,
                sku,
                f.token("from", Location::parse)?,
                f.token("to", Location::parse)?,
                f.quantity()?,
            )?,
            EventKind::Corrected => Event::Corrected {
                warehouse,
                sku,
                location: f.token("location", Location::parse)?,
                quantity: f.count()?,
            },
            EventKind::TransferredOut => Event::TransferredOut {
                warehouse,
                sku,
                location: f.token("location", Location::parse)?,
                quantity: f.quantity()?,
                to_warehouse: f.token("to_warehouse", WarehouseId::parse)?,
                transfer_id: f.token("transfer_id", TransferId::parse)?,
            },
            EventKind::TransferredIn => Event::TransferredIn {
                warehouse,
                sku,
                location: f.token("location", Location::parse)?,
                quantity: f.quantity()?,
                from_warehouse: f.token("from_warehouse", WarehouseId::parse)?,
                transfer_id: f.token("transfer_id", TransferId::parse)?,
            },
        })
    }
}

/// Field access with errors that name the field.
struct Fields<F>(F);

impl<'v, F: Fn(&str) -> Option<&'v Value>> Fields<F> {
    fn get(&self, name: &str) -> Result<&'v Value, InvalidField> {
        match (self.0)(name) {
            None | Some(Value::Null) => Err(InvalidField::new(name, "is missing")),
            Some(value) => Ok(value),
        }
    }

    fn token<T>(
        &self,
        name: &str,
        parse: impl Fn(&str) -> Result<T, InvalidField>,
    ) -> Result<T, InvalidField> {
        match self.get(name)? {
            Value::String(s) => parse(s).map_err(|e| e.for_field(name)),
            other => Err(InvalidField::new(
                name,
                format!("must be a string, not {}", describe(other)),
            )),
        }
    }

    fn count(&self) -> Result<u32, InvalidField> {
        match self.get("quantity")? {
            Value::Number(n) if n.is_u64() || n.is_i64() => parse_count_text(&n.to_string()),
            other => Err(InvalidField::new(
                "quantity",
                format!("must be a whole number of units, not {}", describe(other)),
            )),
        }
    }

    fn quantity(&self) -> Result<Quantity, InvalidField> {
        Quantity::new(self.count()?.into())
    }
}

/// The fields an NDJSON line or an event's payload may hold, each as written: read from a
/// JSON object without building a map of all of it (about half the work), and checked by
/// the same rules as [`Event::from_fields`] through [`get`](Self::get).
#[derive(Debug, Default, serde::Deserialize)]
pub struct KnownFields {
    #[serde(rename = "type")]
    event_type: Option<Value>,
    msg_id: Option<Value>,
    timestamp_ms: Option<Value>,
    warehouse: Option<Value>,
    sku: Option<Value>,
    location: Option<Value>,
    quantity: Option<Value>,
    reason: Option<Value>,
    from: Option<Value>,
    to: Option<Value>,
    to_warehouse: Option<Value>,
    from_warehouse: Option<Value>,
    transfer_id: Option<Value>,
}

impl KnownFields {
    /// The known fields of a JSON object; `None` when `json` is anything else, or an
    /// object that names a field twice (the caller then reads it as a map, which says
    /// what is wrong, or keeps the last of the two, as it always did).
    pub fn read(json: &[u8]) -> Option<Self> {
        if json.trim_ascii_start().first() != Some(&b'{') {
            return None;
        }
        serde_json::from_slice(json).ok()
    }

    /// The field `name` (JSON `null` reads as absent, as a missing field does).
    pub fn get(&self, name: &str) -> Option<&Value> {
        match name {
            "type" => self.event_type.as_ref(),
            "msg_id" => self.msg_id.as_ref(),
            "timestamp_ms" => self.timestamp_ms.as_ref(),
            "warehouse" => self.warehouse.as_ref(),
            "sku" => self.sku.as_ref(),
            "location" => self.location.as_ref(),
            "quantity" => self.quantity.as_ref(),
            "reason" => self.reason.as_ref(),
            "from" => self.from.as_ref(),
            "to" => self.to.as_ref(),
            "to_warehouse" => self.to_warehouse.as_ref(),
            "from_warehouse" => self.from_warehouse.as_ref(),
            "transfer_id" => self.transfer_id.as_ref(),
            _ => None,
        }
    }
}

fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("{b}"),
        Value::Number(n) => format!("{n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "an object".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => unreachable!("test input is an object"),
        }
    }

    #[test]
    fn known_fields_read_every_kind_as_the_whole_map_does() {
        let payloads = [
            (
                EventKind::Received,
                json!({"warehouse":"ams1","sku":"apple","location":"A1","quantity":3}),
            ),
            (
                EventKind::Sold,
                json!({"warehouse":"ams1","sku":"apple","location":"A1","quantity":3,"extra":[1]}),
            ),
            (
                EventKind::Destroyed,
                json!({"warehouse":"ams1","sku":"apple","location":"A1","quantity":3,"reason":"damaged"}),
            ),
            (
                EventKind::Moved,
                json!({"warehouse":"ams1","sku":"apple","from":"A1","to":"B2","quantity":3}),
            ),
            (
                EventKind::Corrected,
                json!({"warehouse":"ams1","sku":"apple","location":"A1","quantity":0}),
            ),
            (
                EventKind::TransferredOut,
                json!({"warehouse":"ams1","sku":"apple","location":"A1","quantity":3,"to_warehouse":"rtm2","transfer_id":"t-1"}),
            ),
            (
                EventKind::TransferredIn,
                json!({"warehouse":"rtm2","sku":"apple","location":"A1","quantity":3,"from_warehouse":"ams1","transfer_id":"t-1"}),
            ),
            // Wrong in each way a field can be: the same error either way.
            (
                EventKind::Sold,
                json!({"warehouse":"ams1","sku":"apple","location":"A1","quantity":"3"}),
            ),
            (
                EventKind::Sold,
                json!({"warehouse":"ams1","sku":null,"location":"A1","quantity":3}),
            ),
            (
                EventKind::Moved,
                json!({"warehouse":"ams1","sku":"apple","from":"A1","to":"A1","quantity":3}),
            ),
        ];
        for (kind, payload) in payloads {
            let text = payload.to_string();
            let known = KnownFields::read(text.as_bytes()).expect("a plain object");
            let map = fields(payload);
            assert_eq!(
                Event::from_lookup(kind, |name| known.get(name)),
                Event::from_fields(kind, &map),
                "{text}"
            );
            // Every field an event writes is one it reads back through KnownFields.
            if let Ok(event) = Event::from_fields(kind, &map) {
                if let Ok(Value::Object(written)) = serde_json::to_value(&event) {
                    for name in written.keys() {
                        assert!(known.get(name).is_some(), "{name} of {text}");
                    }
                }
            }
        }
        // Not a plain object naming each field once: read as a map instead.
        for text in [r#"["ams1"]"#, r#"{"sku":"a","sku":"b"}"#, "{", " 3"] {
            assert!(KnownFields::read(text.as_bytes()).is_none(), "{text}");
        }
    }

    #[test]
    fn kinds_name_their_type_and_subject_token() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::from_event_type(kind.event_type()), Some(kind));
            assert_eq!(
                EventKind::from_subject_token(kind.subject_token()),
                Some(kind)
            );
        }
        assert_eq!(EventKind::Sold.event_type(), "stock.sold");
        assert_eq!(EventKind::Sold.subject_token(), "sold");
        assert_eq!(EventKind::from_event_type("stock.stolen"), None);
    }

    #[test]
    fn payload_is_the_arguments() {
        let event = Event::moved(
            WarehouseId::parse("ams1").unwrap(),
            Sku::parse("apple").unwrap(),
            Location::parse("A43").unwrap(),
            Location::parse("G15").unwrap(),
            Quantity::new(3).unwrap(),
        )
        .unwrap();
        let payload: Value = serde_json::from_slice(&event.to_payload()).unwrap();
        assert_eq!(
            payload,
            json!({"warehouse":"ams1","sku":"apple","from":"A43","to":"G15","quantity":3})
        );
        let back = Event::from_fields(EventKind::Moved, &fields(payload)).unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn moving_to_the_same_location_is_refused() {
        let err = Event::from_fields(
            EventKind::Moved,
            &fields(json!({"warehouse":"ams1","sku":"apple","from":"A43","to":"A43","quantity":1})),
        )
        .unwrap_err();
        assert_eq!(err.field, "to");
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                json!({"sku":"apple","location":"A43","quantity":3}),
                "warehouse",
                "is missing",
            ),
            (
                json!({"warehouse":"ams1","sku":"apple","location":"A43","quantity":-2}),
                "quantity",
                "negative",
            ),
            (
                json!({"warehouse":"ams1","sku":"apple","location":"A43","quantity":0}),
                "quantity",
                "at least 1",
            ),
            (
                json!({"warehouse":"ams1","sku":"apple","location":"A43","quantity":2.5}),
                "quantity",
                "whole number",
            ),
            (
                json!({"warehouse":"ams1","sku":"apple","location":"A43","quantity":4294967296u64}),
                "quantity",
                "too large",
            ),
            (
                json!({"warehouse":"ams1","sku":"apple pie","location":"A43","quantity":1}),
                "sku",
                "' '",
            ),
            (
                json!({"warehouse":"ams1","sku":"apple","location":7,"quantity":1}),
                "location",
                "must be a string",
            ),
        ];
        for (input, field, problem) in cases {
            let err = Event::from_fields(EventKind::Sold, &fields(input.clone())).unwrap_err();
            assert_eq!(err.field, field, "{input}");
            assert!(err.problem.contains(problem), "{input}: {err}");
        }
    }

    #[test]
    fn a_count_may_be_zero_and_unknown_fields_are_ignored() {
        let event = Event::from_fields(
            EventKind::Corrected,
            &fields(
                json!({"warehouse":"ams1","sku":"apple","location":"A43","quantity":0,"note":"x"}),
            ),
        )
        .unwrap();
        assert!(matches!(event, Event::Corrected { quantity: 0, .. }));
    }
}
