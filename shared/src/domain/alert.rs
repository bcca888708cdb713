//! Alerts, the derived events watchers announce: what each one says (a typed payload per
//! event type), its msg id, and what the last one on a subject stands for when the next
//! decision is made. The subject it goes to is built where every subject is, in
//! `subjects` (`Alert::subject`, `AlertTopic::subject`).

use serde::{Deserialize, Serialize};

use super::ids::{Sku, WarehouseId};
use super::velocity::Band;

/// A product's lines of alerts, one subject each: an alert on a line follows the last one
/// on it, and the last one says where the product stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AlertTopic {
    /// `stock.low` and `stock.recovered` on `alerts.low_stock.{warehouse}.{sku}`.
    LowStock,
    /// `sales.velocity` on `alerts.velocity.{warehouse}.{sku}`.
    Velocity,
    /// `stock.stockout_forecast` and `stock.stockout_cleared` on `alerts.stockout.{warehouse}.{sku}`.
    Stockout,
}

/// The payload of `stock.low` and `stock.recovered`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LowStockPayload {
    pub warehouse: WarehouseId,
    pub sku: Sku,
    pub on_hand: i64,
    pub threshold: i64,
}

/// The payload of `sales.velocity`: the product moved to another band.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VelocityPayload {
    pub warehouse: WarehouseId,
    pub sku: Sku,
    pub band: Band,
    /// `None` for the first band announced for the product.
    pub previous_band: Option<Band>,
    pub sold_last_hour: u64,
    pub sold_last_day: u64,
    pub sold_last_week: u64,
}

/// The payload of `stock.stockout_forecast` and `stock.stockout_cleared`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StockoutPayload {
    pub warehouse: WarehouseId,
    pub sku: Sku,
    pub on_hand: i64,
    pub units_per_day: f64,
    /// Rounded to 2 decimals; `None` when nothing sells.
    pub days_of_cover: Option<f64>,
}

/// What an alert says: its event type and its payload.
#[derive(Debug, Clone, PartialEq)]
pub enum AlertBody {
    /// `stock.low`: below the threshold.
    Low(LowStockPayload),
    /// `stock.recovered`: back at or above it.
    Recovered(LowStockPayload),
    /// `sales.velocity`: another band.
    Velocity(VelocityPayload),
    /// `stock.stockout_forecast`: fewer days of cover than `stockout_days`.
    StockoutForecast(StockoutPayload),
    /// `stock.stockout_cleared`: enough cover again, or nothing sells.
    StockoutCleared(StockoutPayload),
}

/// Why a stored alert could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AlertDecodeError {
    #[error("not an alert type: {0:?}")]
    UnknownType(String),
    #[error("{event_type} payload: {source}")]
    Payload {
        event_type: &'static str,
        source: serde_json::Error,
    },
}

/// The type of the alert that says a product is below its threshold.
pub const LOW: &str = "stock.low";
const RECOVERED: &str = "stock.recovered";
const VELOCITY: &str = "sales.velocity";
/// The type of the alert that forecasts a product's stockout.
pub const STOCKOUT_FORECAST: &str = "stock.stockout_forecast";
const STOCKOUT_CLEARED: &str = "stock.stockout_cleared";

impl AlertBody {
    /// Its type header, e.g. `stock.low`.
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::Low(_) => LOW,
            Self::Recovered(_) => RECOVERED,
            Self::Velocity(_) => VELOCITY,
            Self::StockoutForecast(_) => STOCKOUT_FORECAST,
            Self::StockoutCleared(_) => STOCKOUT_CLEARED,
        }
    }

    /// The line of alerts it belongs to.
    pub fn topic(&self) -> AlertTopic {
        match self {
            Self::Low(_) | Self::Recovered(_) => AlertTopic::LowStock,
            Self::Velocity(_) => AlertTopic::Velocity,
            Self::StockoutForecast(_) | Self::StockoutCleared(_) => AlertTopic::Stockout,
        }
    }

    /// The product it is about.
    pub fn product(&self) -> (&WarehouseId, &Sku) {
        match self {
            Self::Low(p) | Self::Recovered(p) => (&p.warehouse, &p.sku),
            Self::Velocity(p) => (&p.warehouse, &p.sku),
            Self::StockoutForecast(p) | Self::StockoutCleared(p) => (&p.warehouse, &p.sku),
        }
    }

    /// Its JSON payload.
    pub fn payload(&self) -> Result<Vec<u8>, serde_json::Error> {
        match self {
            Self::Low(p) | Self::Recovered(p) => serde_json::to_vec(p),
            Self::Velocity(p) => serde_json::to_vec(p),
            Self::StockoutForecast(p) | Self::StockoutCleared(p) => serde_json::to_vec(p),
        }
    }

    /// Reads a stored alert from its type header and payload.
    pub fn decode(event_type: &str, payload: &[u8]) -> Result<Self, AlertDecodeError> {
        fn read<T: serde::de::DeserializeOwned>(
            event_type: &'static str,
            payload: &[u8],
        ) -> Result<T, AlertDecodeError> {
            serde_json::from_slice(payload)
                .map_err(|source| AlertDecodeError::Payload { event_type, source })
        }
        Ok(match event_type {
            LOW => Self::Low(read(LOW, payload)?),
            RECOVERED => Self::Recovered(read(RECOVERED, payload)?),
            VELOCITY => Self::Velocity(read(VELOCITY, payload)?),
            STOCKOUT_FORECAST => Self::StockoutForecast(read(STOCKOUT_FORECAST, payload)?),
            STOCKOUT_CLEARED => Self::StockoutCleared(read(STOCKOUT_CLEARED, payload)?),
            other => return Err(AlertDecodeError::UnknownType(other.to_string())),
        })
    }
}

/// The values of the views an alert was decided on, as its msg id names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// A stock value, by its `last_seq`.
    Stock { stock_seq: u64 },
    /// A velocity value (its `last_seq` and `as_of_ms`) and a stock value (its `last_seq`).
    VelocityAndStock {
        velocity_seq: u64,
        stock_seq: u64,
        as_of_ms: i64,
    },
}

/// An alert to announce: what it says, what it was decided on, and the alert it follows.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub body: AlertBody,
    pub basis: Basis,
    /// The sequence in `ALERTS` of the last alert on its subject when it was decided (0:
    /// none). It is published only if that is still the last one.
    pub follows: u64,
}

impl Alert {
    /// Its type header, e.g. `stock.low`.
    pub fn event_type(&self) -> &'static str {
        self.body.event_type()
    }

    /// The stock view's `last_seq` an alert was decided on, read back from its msg id
    /// ([`Alert::msg_id`]): what the product's stock had seen of the log.
    pub fn stock_seq_of(msg_id: &str) -> Option<u64> {
        let fields: Vec<&str> = msg_id.split(':').collect();
        match fields.len() {
            4 => fields[2].parse().ok(),
            6 => fields[3].parse().ok(),
            _ => None,
        }
    }

    /// Its msg id: the same decision on the same values gives the same id. Low stock:
    /// `{type}:{warehouse}.{sku}:{stock last_seq}:{previous alert seq}`; velocity and
    /// stockout: `{type}:{warehouse}.{sku}:{velocity last_seq}:{stock last_seq}:{as_of_ms}:{previous alert seq}`.
    pub fn msg_id(&self) -> String {
        let (warehouse, sku) = self.body.product();
        let key = format!("{warehouse}.{sku}");
        let basis = match self.basis {
            Basis::Stock { stock_seq } => stock_seq.to_string(),
            Basis::VelocityAndStock {
                velocity_seq,
                stock_seq,
                as_of_ms,
            } => format!("{velocity_seq}:{stock_seq}:{as_of_ms}"),
        };
        format!("{}:{key}:{basis}:{}", self.event_type(), self.follows)
    }

    /// Its JSON payload.
    pub fn payload(&self) -> Result<Vec<u8>, serde_json::Error> {
        self.body.payload()
    }

    /// What it stands for once stored at `sequence`: the last alert on its subject.
    pub fn stored_at(self, sequence: u64) -> LastAlert {
        LastAlert {
            sequence,
            said: Some(self.body),
        }
    }
}

/// The last alert on a product's subject: where it is, and what it said.
#[derive(Debug, Clone, PartialEq)]
pub struct LastAlert {
    /// Its sequence in `ALERTS`: the next alert follows it.
    pub sequence: u64,
    /// What it said; `None` when it cannot be read, which counts as nothing said.
    pub said: Option<AlertBody>,
}

impl LastAlert {
    /// Whether it said the product is low (`stock.low`).
    pub fn says_low(&self) -> bool {
        matches!(self.said, Some(AlertBody::Low(_)))
    }

    /// The band it announced, if it is a band.
    pub fn band(&self) -> Option<Band> {
        match &self.said {
            Some(AlertBody::Velocity(p)) => Some(p.band),
            _ => None,
        }
    }

    /// Whether it forecast a stockout (`stock.stockout_forecast`).
    pub fn says_stockout(&self) -> bool {
        matches!(self.said, Some(AlertBody::StockoutForecast(_)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn low_stock() -> LowStockPayload {
        LowStockPayload {
            warehouse: WarehouseId::parse("ams1").unwrap(),
            sku: Sku::parse("apple").unwrap(),
            on_hand: 9,
            threshold: 10,
        }
    }

    fn velocity() -> VelocityPayload {
        VelocityPayload {
            warehouse: WarehouseId::parse("ams1").unwrap(),
            sku: Sku::parse("apple").unwrap(),
            band: Band::Fast,
            previous_band: None,
            sold_last_hour: 1,
            sold_last_day: 60,
            sold_last_week: 70,
        }
    }

    fn stockout(days_of_cover: Option<f64>) -> StockoutPayload {
        StockoutPayload {
            warehouse: WarehouseId::parse("ams1").unwrap(),
            sku: Sku::parse("apple").unwrap(),
            on_hand: 30,
            units_per_day: 20.0,
            days_of_cover,
        }
    }

    fn every_body() -> Vec<AlertBody> {
        vec![
            AlertBody::Low(low_stock()),
            AlertBody::Recovered(low_stock()),
            AlertBody::Velocity(velocity()),
            AlertBody::StockoutForecast(stockout(Some(1.5))),
            AlertBody::StockoutCleared(stockout(None)),
        ]
    }

    #[test]
    fn payloads_keep_their_fields_and_names() {
        let text: Vec<String> = every_body()
            .iter()
            .map(|b| String::from_utf8(b.payload().unwrap()).unwrap())
            .collect();
        let low = r#"{"warehouse":"ams1","sku":"apple","on_hand":9,"threshold":10}"#;
        assert_eq!(text[0], low);
        assert_eq!(text[1], low);
        assert_eq!(
            text[2],
            r#"{"warehouse":"ams1","sku":"apple","band":"fast","previous_band":null,"sold_last_hour":1,"sold_last_day":60,"sold_last_week":70}"#
        );
        assert_eq!(
            text[3],
            r#"{"warehouse":"ams1","sku":"apple","on_hand":30,"units_per_day":20.0,"days_of_cover":1.5}"#
        );
        assert_eq!(
            text[4],
            r#"{"warehouse":"ams1","sku":"apple","on_hand":30,"units_per_day":20.0,"days_of_cover":null}"#
        );
    }

    #[test]
    fn a_stored_alert_reads_back_as_what_it_said() {
        let types: Vec<&str> = every_body().iter().map(AlertBody::event_type).collect();
        assert_eq!(
            types,
            [
                "stock.low",
                "stock.recovered",
                "sales.velocity",
                "stock.stockout_forecast",
                "stock.stockout_cleared"
            ]
        );
        for body in every_body() {
            let read = AlertBody::decode(body.event_type(), &body.payload().unwrap()).unwrap();
            assert_eq!(read, body);
        }
        assert!(matches!(
            AlertBody::decode("stock.sold", b"{}"),
            Err(AlertDecodeError::UnknownType(_))
        ));
        assert!(matches!(
            AlertBody::decode("sales.velocity", br#"{"warehouse":"ams1"}"#),
            Err(AlertDecodeError::Payload { .. })
        ));
    }

    #[test]
    fn each_alert_goes_to_its_products_line() {
        let subjects: Vec<String> = every_body()
            .into_iter()
            .map(|body| {
                Alert {
                    body,
                    basis: Basis::Stock { stock_seq: 1 },
                    follows: 0,
                }
                .subject()
            })
            .collect();
        assert_eq!(
            subjects,
            [
                "alerts.low_stock.ams1.apple",
                "alerts.low_stock.ams1.apple",
                "alerts.velocity.ams1.apple",
                "alerts.stockout.ams1.apple",
                "alerts.stockout.ams1.apple"
            ]
        );
        assert_eq!(AlertTopic::Stockout.every_subject(), "alerts.stockout.>");
    }

    #[test]
    fn msg_ids_name_the_values_decided_on_and_the_alert_followed() {
        let low = Alert {
            body: AlertBody::Low(low_stock()),
            basis: Basis::Stock { stock_seq: 7 },
            follows: 0,
        };
        assert_eq!(low.msg_id(), "stock.low:ams1.apple:7:0");
        let band = Alert {
            body: AlertBody::Velocity(velocity()),
            basis: Basis::VelocityAndStock {
                velocity_seq: 12,
                stock_seq: 9,
                as_of_ms: 1_795_176_000_000,
            },
            follows: 3,
        };
        assert_eq!(
            band.msg_id(),
            "sales.velocity:ams1.apple:12:9:1795176000000:3"
        );
        assert_eq!(Alert::stock_seq_of(&low.msg_id()), Some(7));
        assert_eq!(Alert::stock_seq_of(&band.msg_id()), Some(9));
        assert_eq!(Alert::stock_seq_of("a-uuid"), None);
    }

    #[test]
    fn the_last_alert_says_where_the_product_stands() {
        let last = |body| {
            Alert {
                body,
                basis: Basis::Stock { stock_seq: 1 },
                follows: 0,
            }
            .stored_at(5)
        };
        assert!(last(AlertBody::Low(low_stock())).says_low());
        assert!(!last(AlertBody::Recovered(low_stock())).says_low());
        assert_eq!(
            last(AlertBody::Velocity(velocity())).band(),
            Some(Band::Fast)
        );
        assert!(last(AlertBody::StockoutForecast(stockout(Some(1.0)))).says_stockout());
        assert!(!last(AlertBody::StockoutCleared(stockout(None))).says_stockout());
        let unreadable = LastAlert {
            sequence: 5,
            said: None,
        };
        assert!(!unreadable.says_low() && !unreadable.says_stockout());
        assert_eq!(unreadable.band(), None);
    }
}
