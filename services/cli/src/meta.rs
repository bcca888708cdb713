//! The msg id and event time of a new event: the caller's or fresh, and the time checked
//! against this machine's clock and then against the NATS server's.
//!
//! A projector refuses an event whose time is more than 5 minutes after the server stored
//! it (`future_time`). This machine's clock may be wrong, so before anything is published
//! the event time is also checked against the server's clock (the `ts` of a stream info
//! answer): an event that would be dead-lettered is refused here, exit 4, nothing stored.

use async_nats::jetstream::context::RequestErrorKind;
use stockwire::domain::{check_not_in_future, format_ms, MAX_FUTURE_MS};
use stockwire::envelope::{check_msg_id, EventMeta};
use stockwire::execute::UNAVAILABLE_FOR;
use stockwire::subjects;

use crate::args::EventOpts;
use crate::failure::{Failure, Kind};

/// Shifts this machine's clock as the CLI sees it, in ms (to try a client whose clock is
/// wrong; not for production).
const CLOCK_OFFSET_ENV: &str = "STOCKWIRE_CLOCK_OFFSET_MS";

/// This machine's time, ms since the epoch.
pub(crate) fn now_ms() -> i64 {
    let offset = std::env::var(CLOCK_OFFSET_ENV)
        .ok()
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or(0);
    chrono::Utc::now().timestamp_millis() + offset
}

/// The msg id and event time of a new event, from the options or fresh.
pub(crate) fn event_meta(opts: &EventOpts) -> Result<EventMeta, Failure> {
    let now = now_ms();
    let timestamp_ms = opts.at.unwrap_or(now);
    check_not_in_future("--at", timestamp_ms, now)?;
    let msg_id = match &opts.msg_id {
        Some(id) => {
            check_msg_id("--msg-id", id)?;
            id.clone()
        }
        None => uuid::Uuid::new_v4().to_string(),
    };
    Ok(EventMeta {
        msg_id,
        timestamp_ms,
    })
}

/// The NATS server's time now, ms since the epoch. While JetStream cannot answer (a
/// leader election in a cluster), asks again for up to `UNAVAILABLE_FOR`.
pub(crate) async fn server_now_ms(js: &async_nats::jetstream::Context) -> Result<i64, Failure> {
    let started = std::time::Instant::now();
    let answer: serde_json::Value = loop {
        match js
            .request(subjects::stream_info_api(subjects::INVENTORY_STREAM), &())
            .await
        {
            Ok(answer) if !unavailable(&answer) || started.elapsed() >= UNAVAILABLE_FOR => {
                break answer
            }
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(250)).await,
            Err(e)
                if matches!(
                    e.kind(),
                    RequestErrorKind::TimedOut | RequestErrorKind::NoResponders
                ) && started.elapsed() < UNAVAILABLE_FOR =>
            {
                tracing::debug!(error = %e, "JetStream does not answer yet; asking again");
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
            Err(e) => {
                let hint = if matches!(
                    e.kind(),
                    RequestErrorKind::TimedOut | RequestErrorKind::NoResponders
                ) {
                    " (no leader for INVENTORY right now, or too few nodes of the cluster up \
                     for a quorum; nothing was stored)"
                } else {
                    ""
                };
                return Err(anyhow::anyhow!(
                    "asking the server for its time (stream info of {}): {e}{hint}",
                    subjects::INVENTORY_STREAM
                )
                .into());
            }
        }
    };
    if let Some(error) = answer.get("error") {
        let hint = if unavailable(&answer) {
            "no leader for INVENTORY right now, or too few nodes of the cluster up for a quorum; \
             nothing was stored"
        } else {
            "run `stockwire setup`?"
        };
        return Err(anyhow::anyhow!(
            "asking the server for its time: stream {}: {error} ({hint})",
            subjects::INVENTORY_STREAM
        )
        .into());
    }
    answer
        .get("ts")
        .and_then(|ts| ts.as_str())
        .and_then(|ts| chrono::DateTime::parse_from_rfc3339(ts).ok())
        .map(|ts| ts.timestamp_millis())
        .ok_or_else(|| anyhow::anyhow!("the server's stream info carries no time (ts)").into())
}

/// An answer saying JetStream cannot answer right now (503, or 10008 while a leader is
/// elected), as opposed to a real refusal such as "stream not found".
fn unavailable(answer: &serde_json::Value) -> bool {
    let error = &answer["error"];
    error["code"] == 503 || error["err_code"] == 10008
}

/// Refuses an event time that the projectors would take for the future: more than 5
/// minutes after the server's `server_now_ms` (the event is stored later, never earlier).
pub(crate) fn check_server_clock(
    what: &str,
    timestamp_ms: i64,
    server_now_ms: i64,
) -> Result<(), Failure> {
    if timestamp_ms <= server_now_ms.saturating_add(MAX_FUTURE_MS) {
        return Ok(());
    }
    Err(Failure {
        kind: Kind::Clock,
        error: anyhow::anyhow!(
            "{what}: the event time {} is more than 5 minutes ahead of the NATS server's clock \
             ({}); this machine's clock is probably {} s fast. Nothing was stored: set the \
             clock right, or give an earlier --at",
            format_ms(timestamp_ms),
            format_ms(server_now_ms),
            (now_ms() - server_now_ms) / 1000
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_time_up_to_five_minutes_past_the_servers_clock_passes() {
        let server = 1_800_000_000_000;
        assert!(check_server_clock("publish", server + MAX_FUTURE_MS, server).is_ok());
        assert!(check_server_clock("publish", server - 86_400_000, server).is_ok());
        let err = check_server_clock("publish", server + MAX_FUTURE_MS + 1, server).unwrap_err();
        assert_eq!(err.kind, Kind::Clock);
        assert_eq!(err.exit_code(), std::process::ExitCode::from(4));
    }
}
