//! The pure domain: validated ids and quantities, events of record, stock and how events
//! change it, sales velocity, thresholds, alerts and the watchers' decisions, and event time.
//! No IO, no clock, no id generation here: time and ids are passed in.

mod alert;
mod command;
mod event;
mod ids;
mod react;
mod stock;
mod thresholds;
mod time;
mod transit;
mod velocity;

pub use alert::{
    Alert, AlertBody, AlertDecodeError, AlertTopic, Basis, LastAlert, LowStockPayload,
    StockoutPayload, VelocityPayload, LOW as ALERT_LOW,
    STOCKOUT_FORECAST as ALERT_STOCKOUT_FORECAST,
};
pub use command::{decide, Command, DomainError};
pub use event::{Event, EventKind, KnownFields};
pub use ids::{
    parse_count_text, InvalidField, Location, Quantity, Reason, Sku, TransferId, WarehouseId,
    MAX_ID_LEN, MAX_REASON_LEN,
};
pub use react::{react_band, react_low_stock, react_stockout};
pub use stock::{evolve, Locations, StockBook, StockView};
pub use thresholds::{Thresholds, DEFAULT_LOW_STOCK_BELOW, DEFAULT_STOCKOUT_DAYS};
pub use time::{check_not_in_future, format_ms, parse_time_ms, MAX_FUTURE_MS};
pub use transit::{TransitState, TransitView};
pub use velocity::{
    days_of_cover, Band, BandLimits, VelocityView, DAY_MS, HOUR_MS, MINUTE_MS, WEEK_MS,
};
