//! The pure domain: validated ids and quantities, events of record, stock and how events
//! change it, sales velocity, thresholds and alert decisions, and event time.
//! No IO, no clock, no id generation here: time and ids are passed in.

mod command;
mod event;
mod ids;
mod stock;
mod thresholds;
mod time;
mod velocity;

pub use command::{decide, Command, DomainError};
pub use event::{Event, EventKind};
pub use ids::{
    parse_count_text, InvalidField, Location, Quantity, Reason, Sku, TransferId, WarehouseId,
    MAX_ID_LEN, MAX_REASON_LEN,
};
pub use stock::{evolve, Locations, StockBook, StockView};
pub use thresholds::{
    react, LowStock, LowStockAlert, Thresholds, DEFAULT_LOW_STOCK_BELOW, DEFAULT_STOCKOUT_DAYS,
};
pub use time::{check_not_in_future, format_ms, parse_time_ms, MAX_FUTURE_MS};
pub use velocity::{
    days_of_cover, react_stockout, Band, BandLimits, StockoutAlert, VelocityAlert, VelocityView,
    DAY_MS, HOUR_MS, MINUTE_MS, WEEK_MS,
};
