//! # Stockwire
//!
//! An event-sourced warehouse inventory on NATS JetStream. This crate is what every
//! Stockwire binary shares.
//!
//! ## Layout
//! - [`domain`]: pure: ids, quantities, events of record, event time. No IO.
//! - [`envelope`]: a typed event <-> subject, standard headers and JSON payload; decode errors; upcasting.
//! - [`subjects`]: every subject, stream, bucket, key and header name, built in one place.
//! - [`provision`]: idempotent creation and update of streams and buckets.
//! - [`aggregate`]: the command side: one aggregate loaded from its events; conditional publish.
//! - [`batch`]: atomic batch publish (all of up to 1,000 messages stored, or none).
//! - [`connect`]: connection flags (URL, user/password, creds) and `connect`.
//! - [`read`]: reading a filtered slice of a stream in order, to its end.
//! - [`view`]: a view bucket as its projector sees it: cached revisions, atomic commits, checkpoint.
//! - [`projector`]: the loop every view's projector runs; [`rebuild`]: rebuilding a view on request.
//! - [`deadletter`]: copies of events a projector could not apply, with the reason.
//! - [`replay`]: the log replayed in memory (verify, as-of).
//! - [`watch`]: following a KV bucket for ever (history first, re-created on failure).
//! - [`announce`]: derived events announced exactly once per change of state.
//! - [`watcher`]: a watcher's inputs (thresholds first, then views) and announcing a change.
//! - [`runtime`]: tracing, the shutdown signal, backoff.
//! - `testing` (feature `testing`): a real nats-server on a free port for tests.
#![forbid(unsafe_code)]
#![deny(unreachable_pub)]

pub mod aggregate;
pub mod announce;
pub mod batch;
pub mod connect;
pub mod deadletter;
pub mod domain;
pub mod envelope;
pub mod projector;
pub mod provision;
pub mod read;
pub mod rebuild;
pub mod replay;
pub mod runtime;
pub mod subjects;
#[cfg(feature = "testing")]
pub mod testing;
pub mod view;
pub mod watch;
pub mod watcher;
