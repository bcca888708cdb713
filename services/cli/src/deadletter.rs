//! `stockwire deadletter list | show N | replay N | purge`: the events a projector could
//! not apply, kept in stream `DEADLETTER` with why and where they came from.
//!
//! N is the dead letter's sequence in `DEADLETTER`. `replay` publishes the original again,
//! as it was (its subject, its own headers, its payload), to `INVENTORY` under a fresh
//! `Nats-Msg-Id`, for when the producer or the projector has been fixed; the dead letter
//! is kept. A letter whose payload was cut to fit cannot be replayed.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
use async_nats::jetstream::stream::{LastRawMessageErrorKind, Stream};
use async_nats::jetstream::Context;
use async_nats::HeaderMap;
use bytes::Bytes;
use clap::{Args, Subcommand};
use futures::StreamExt;
use serde::Serialize;
use stockwire::domain::format_ms;
use stockwire::envelope::Outbound;
use stockwire::retry::AppendError;
use stockwire::subjects;

use crate::failure::{Failure, Outcome};
use crate::status::find_stream;
use crate::{output, Ctx};

#[derive(Debug, Args)]
pub struct DeadletterArgs {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Every dead letter: when, which view, where from, and why.
    List,
    /// One dead letter with all its headers and its payload.
    Show {
        /// Its sequence in DEADLETTER (the first column of `list`).
        #[arg(value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        seq: u64,
    },
    /// Publish the original event again, as it was, to INVENTORY (the dead letter is kept).
    Replay {
        /// Its sequence in DEADLETTER (the first column of `list`).
        #[arg(value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        seq: u64,
    },
    /// Remove every dead letter.
    Purge,
}

/// One stored dead letter.
struct Letter {
    seq: u64,
    stored_ms: i64,
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
}

impl Letter {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.as_str())
    }
}

/// A line of `list --json`.
#[derive(Serialize)]
struct Listed<'a> {
    seq: u64,
    stored: String,
    view: Option<&'a str>,
    source_subject: Option<&'a str>,
    source_seq: Option<u64>,
    reason: Option<&'a str>,
    error: Option<&'a str>,
    truncated: bool,
}

pub(crate) async fn run(ctx: &Ctx, args: DeadletterArgs) -> Outcome {
    let js = ctx.jetstream().await?;
    let stream = find_stream(&js, subjects::DEADLETTER_STREAM)
        .await?
        .ok_or_else(|| {
            anyhow::anyhow!(
                "stream {} is missing: run `stockwire setup` first",
                subjects::DEADLETTER_STREAM
            )
        })?;
    match args.action {
        Action::List => list(ctx, &stream).await,
        Action::Show { seq } => show(ctx, &stream, seq).await,
        Action::Replay { seq } => replay(ctx, &js, &stream, seq).await,
        Action::Purge => purge(ctx, &stream).await,
    }
}

async fn list(ctx: &Ctx, stream: &Stream) -> Outcome {
    let letters = read_all(stream, ctx.connect.request_timeout()).await?;
    let mut table = output::table(["seq", "stored", "view", "source", "reason", "error"]);
    for letter in &letters {
        let source_subject = letter.header(subjects::DEADLETTER_SOURCE_SUBJECT);
        let source_seq = letter.header(subjects::DEADLETTER_SOURCE_SEQUENCE);
        if ctx.json {
            output::json_line(&Listed {
                seq: letter.seq,
                stored: format_ms(letter.stored_ms),
                view: letter.header(subjects::DEADLETTER_VIEW),
                source_subject,
                source_seq: source_seq.and_then(|s| s.parse().ok()),
                reason: letter.header(subjects::DEADLETTER_REASON),
                error: letter.header(subjects::DEADLETTER_ERROR),
                truncated: letter.header(subjects::DEADLETTER_TRUNCATED).is_some(),
            });
        } else {
            let text = |name| letter.header(name).unwrap_or("?").to_string();
            table.add_row(vec![
                letter.seq.to_string(),
                format_ms(letter.stored_ms),
                text(subjects::DEADLETTER_VIEW),
                format!(
                    "{} #{}",
                    source_subject.unwrap_or("?"),
                    source_seq.unwrap_or("?")
                ),
                text(subjects::DEADLETTER_REASON),
                text(subjects::DEADLETTER_ERROR),
            ]);
        }
    }
    if !ctx.json {
        if letters.is_empty() {
            output::line("no dead letters");
        } else {
            output::line(&table);
        }
    }
    Ok(())
}

/// A letter as `show --json` prints it.
#[derive(Serialize)]
struct Shown<'a> {
    seq: u64,
    stored: String,
    subject: &'a str,
    /// Each header with its value (several values joined by ", ").
    headers: std::collections::BTreeMap<String, String>,
    /// The payload as text (invalid UTF-8 replaced).
    payload: String,
    truncated: bool,
}

async fn show(ctx: &Ctx, stream: &Stream, seq: u64) -> Outcome {
    let letter = get(stream, seq).await?;
    let headers: std::collections::BTreeMap<String, String> = letter
        .headers
        .iter()
        .map(|(name, values)| {
            let joined: Vec<&str> = values.iter().map(|v| v.as_str()).collect();
            (name.to_string(), joined.join(", "))
        })
        .collect();
    let payload = String::from_utf8_lossy(&letter.payload).into_owned();
    let truncated = letter.header(subjects::DEADLETTER_TRUNCATED);
    if ctx.json {
        output::json_line(&Shown {
            seq: letter.seq,
            stored: format_ms(letter.stored_ms),
            subject: &letter.subject,
            headers,
            payload,
            truncated: truncated.is_some(),
        });
        return Ok(());
    }
    output::line(format!(
        "dead letter #{} on {}, stored {}",
        letter.seq,
        letter.subject,
        format_ms(letter.stored_ms)
    ));
    output::line("headers:");
    for (name, value) in &headers {
        output::line(format!("  {name}: {value}"));
    }
    match truncated {
        Some(original) => output::line(format!(
            "payload (first {} of {original} bytes):",
            letter.payload.len()
        )),
        None => output::line(format!("payload ({} bytes):", letter.payload.len())),
    }
    output::line(payload);
    Ok(())
}

/// What `replay --json` prints.
#[derive(Serialize)]
struct Replayed<'a> {
    dead_letter: u64,
    subject: &'a str,
    seq: u64,
    msg_id: &'a str,
    dead_letter_kept: bool,
}

async fn replay(ctx: &Ctx, js: &Context, stream: &Stream, seq: u64) -> Outcome {
    let letter = get(stream, seq).await?;
    if let Some(original) = letter.header(subjects::DEADLETTER_TRUNCATED) {
        let at = letter
            .header(subjects::DEADLETTER_SOURCE_SEQUENCE)
            .map_or_else(String::new, |s| format!(" (#{s})"));
        return Err(Failure::invalid(format!(
            "dead letter #{seq} cannot be replayed: its payload was cut to {} of {original} bytes; \
             the original is still in {}{at}",
            letter.payload.len(),
            subjects::INVENTORY_STREAM,
        )));
    }
    let subject = letter
        .header(subjects::DEADLETTER_SOURCE_SUBJECT)
        .filter(|s| subjects::split_event(s).is_some())
        .ok_or_else(|| {
            Failure::invalid(format!(
                "dead letter #{seq} cannot be replayed: header {} does not name an event subject",
                subjects::DEADLETTER_SOURCE_SUBJECT
            ))
        })?
        .to_string();

    let mut headers = original_headers(&letter.headers);
    let msg_id = uuid::Uuid::new_v4().to_string();
    headers.insert(subjects::NATS_MSG_ID, msg_id.as_str());
    if let Err(e) = ctx.envelope.decode(
        &subject,
        Some(&headers),
        &letter.payload,
        chrono::Utc::now().timestamp_millis(),
    ) {
        eprintln!(
            "stockwire: warning: dead letter #{seq} still does not decode here ({}: {e}); \
             a projector that agrees will dead-letter it again",
            e.code()
        );
    }
    let out = Outbound {
        subject,
        headers,
        payload: letter.payload.clone(),
    };
    let ack = async {
        js.publish_with_headers(
            out.subject.clone(),
            out.headers.clone(),
            out.payload.clone(),
        )
        .await?
        .await
    }
    .await
    .map_err(|e| AppendError::from(e).context(format!("publishing to {}", out.subject)))?;
    if ctx.json {
        output::json_line(&Replayed {
            dead_letter: seq,
            subject: &out.subject,
            seq: ack.sequence,
            msg_id: &msg_id,
            dead_letter_kept: true,
        });
    } else {
        output::line(format!(
            "replayed dead letter #{seq} to {} as #{} ({} {msg_id}); \
             the dead letter is kept (`stockwire deadletter purge` removes dead letters)",
            out.subject,
            ack.sequence,
            subjects::NATS_MSG_ID,
        ));
    }
    Ok(())
}

/// The original event's headers: the letter's, without the dead-letter ones and without
/// any JetStream one.
fn original_headers(letter: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, values) in letter.iter() {
        let name: &str = name.as_ref();
        if has_prefix(name, subjects::DEADLETTER_HEADER_PREFIX)
            || has_prefix(name, subjects::NATS_HEADER_PREFIX)
        {
            continue;
        }
        for value in values {
            out.append(name, value.as_str());
        }
    }
    out
}

/// Header names are case-insensitive.
fn has_prefix(name: &str, prefix: &str) -> bool {
    name.len() >= prefix.len()
        && name.is_char_boundary(prefix.len())
        && name[..prefix.len()].eq_ignore_ascii_case(prefix)
}

async fn purge(ctx: &Ctx, stream: &Stream) -> Outcome {
    let purged = stream
        .purge()
        .await
        .context("purging the dead letters")?
        .purged;
    if ctx.json {
        output::json_line(&serde_json::json!({ "purged": purged }));
    } else {
        output::line(format!(
            "removed {purged} dead letter{}",
            if purged == 1 { "" } else { "s" }
        ));
    }
    Ok(())
}

/// The dead letter stored at `seq`; exit 2 when there is none.
async fn get(stream: &Stream, seq: u64) -> Result<Letter, Failure> {
    match stream.get_raw_message(seq).await {
        Ok(msg) => Ok(Letter {
            seq: msg.sequence,
            stored_ms: unix_ms(&msg.time),
            subject: msg.subject.to_string(),
            headers: msg.headers,
            payload: msg.payload,
        }),
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {
            Err(Failure::invalid(format!("no dead letter #{seq}")))
        }
        Err(e) => Err(Failure::from(
            anyhow::Error::new(e).context(format!("reading dead letter #{seq}")),
        )),
    }
}

/// Every dead letter, oldest first, read with an ordered consumer up to the last one
/// there when reading started.
async fn read_all(stream: &Stream, timeout: Duration) -> Result<Vec<Letter>, Failure> {
    let fail = |e: &dyn std::fmt::Display| anyhow::anyhow!("reading the dead letters: {e}");
    let consumer = stream
        .create_consumer(OrderedConfig {
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| fail(&e))?;
    let mut remaining = consumer.cached_info().num_pending;
    let mut letters = Vec::with_capacity(remaining as usize);
    if remaining == 0 {
        return Ok(letters);
    }
    let mut messages = consumer.messages().await.map_err(|e| fail(&e))?;
    // A purge while reading would leave us waiting for letters that are gone.
    let timeout = timeout.max(Duration::from_secs(5));
    while remaining > 0 {
        let msg = match tokio::time::timeout(timeout, messages.next()).await {
            Ok(Some(Ok(msg))) => msg,
            Ok(Some(Err(e))) => return Err(fail(&e).into()),
            Ok(None) => return Err(fail(&"the consumer ended early").into()),
            Err(_) => {
                return Err(fail(&format!(
                    "no letter arrived within {timeout:?} (purged meanwhile?)"
                ))
                .into())
            }
        };
        let info = msg.info().map_err(|e| fail(&e))?;
        remaining = info.pending;
        let (seq, stored_ms) = (info.stream_sequence, unix_ms(&info.published));
        letters.push(Letter {
            seq,
            stored_ms,
            subject: msg.subject.to_string(),
            headers: msg.headers.clone().unwrap_or_default(),
            payload: msg.payload.clone(),
        });
    }
    Ok(letters)
}

/// Milliseconds since the epoch of a JetStream timestamp.
fn unix_ms(time: &async_nats::datetime::DateTime) -> i64 {
    i64::try_from(time.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_keeps_only_the_original_headers() {
        let mut letter = HeaderMap::new();
        letter.insert("myorg_type", "stock.received");
        letter.insert("x-trace", "abc");
        letter.insert(subjects::DEADLETTER_REASON, "bad_json");
        let source = subjects::event(
            &stockwire::domain::WarehouseId::parse("a").unwrap(),
            &stockwire::domain::Sku::parse("b").unwrap(),
            stockwire::domain::EventKind::Sold,
        );
        letter.insert(subjects::DEADLETTER_SOURCE_SUBJECT, source.as_str());
        letter.insert(subjects::DEADLETTER_TRUNCATED, "70000");
        letter.insert(subjects::NATS_MSG_ID, "stock-2");
        letter.insert(subjects::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, "0");
        letter.insert("stockwire-future", "x");
        let out = original_headers(&letter);
        let mut names: Vec<String> = out.iter().map(|(n, _)| n.to_string()).collect();
        names.sort();
        assert_eq!(names, ["myorg_type", "x-trace"]);
        assert_eq!(out.get("x-trace").map(|v| v.as_str()), Some("abc"));
    }

    #[test]
    fn header_prefixes_ignore_case() {
        assert!(has_prefix("nats-msg-id", subjects::NATS_HEADER_PREFIX));
        assert!(!has_prefix("Nat", subjects::NATS_HEADER_PREFIX));
    }
}
