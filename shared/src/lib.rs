//! # Stockwire
//!
//! An event-sourced warehouse inventory on NATS JetStream. This crate is what every
//! Stockwire binary shares.
//!
//! ## Layout
//! - [`domain`]: pure: ids, quantities, events of record, stock, velocity, event time,
//!   alerts and the watchers' decisions (`react_*`). No IO.
//! - [`envelope`]: a typed event <-> subject, standard headers and JSON payload; decode errors; upcasting.
//! - [`event_line`]: the NDJSON event line that import reads and history writes.
//! - [`subjects`]: every subject, stream, bucket, key and header name, built in one place.
//! - [`provision`]: idempotent creation and update of streams and buckets.
//! - [`aggregate`]: the command side's read: a product from its stock view value and the
//!   events after it; the expectation that makes an append conditional.
//! - [`execute`]: the command executor: load, decide, append with expectations, retry.
//! - [`batch`]: atomic batch publish (all of up to 1,000 messages stored, or none).
//! - [`connect`]: connection flags (URL, user/password, creds) and `connect`.
//! - [`read`]: reading a filtered slice of a stream in order, to its end.
//! - [`views`]: the list of views: bucket, events read, owning service.
//! - [`view`]: a view bucket as its projector sees it: the values in memory (bounded),
//!   checked commits, the partitions' checkpoints and the view's position;
//!   [`partition`]: a product's partition; [`direct`]: many keys in one direct get.
//! - [`projection`]: what a view is made of, and a projector's settings;
//!   [`projector`]: the loop every view's projector runs; [`rebuild`]: rebuilding a view on request.
//! - [`deadletter`]: copies of events a projector could not apply, with the reason.
//! - [`replay`]: the log replayed in memory (verify, as-of).
//! - [`watch`]: following a KV bucket for ever (history first, re-created on failure).
//! - [`announce`]: derived events announced exactly once per change of state.
//! - [`watcher`]: the loop every watcher runs: thresholds then views followed, what is known
//!   of each product, its rules judged on change, each change of state announced once.
//! - [`simulation`]: the planned demand of `stockwire simulate` (popularity, daily curve,
//!   bursts), the same for the same seed. Pure.
//! - [`error`]: one error shape (`Error<Kind>`, a kind to branch on and a source).
//! - [`retry`]: every retry rule: what the server's answer to a write means, and backoff.
//! - [`lease`]: one active instance per job (a lease key with a time to live); the
//!   others stand by to take over; [`instance`]: each running instance on the NATS
//!   service API (`$SRV.*`), active or standby, with its counters.
//! - [`telemetry`]: logs; [`shutdown`]: ctrl-c and SIGTERM as a token, pauses that end on it;
//!   [`service`]: a service's life from connect to drain; [`clock`]: where time comes from.
//! - `testing` (feature `testing`): a real nats-server on a free port for tests.
#![forbid(unsafe_code)]
#![deny(unreachable_pub)]

pub mod aggregate;
pub mod announce;
pub mod batch;
pub mod clock;
pub mod connect;
pub mod deadletter;
pub mod direct;
pub mod domain;
pub mod envelope;
pub mod error;
pub mod event_line;
pub mod execute;
pub mod instance;
pub mod lease;
pub mod partition;
pub mod projection;
pub mod projector;
pub mod provision;
pub mod read;
pub mod rebuild;
pub mod replay;
pub mod retry;
pub mod service;
pub mod shutdown;
pub mod simulation;
pub mod sites;
pub mod subjects;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod view;
pub mod views;
pub mod watch;
pub mod watcher;
