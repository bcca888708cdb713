//! `stockwire deadletter list | show N | replay N | purge`: the events a projector could
//! not apply, kept in stream `DEADLETTER` with why and where they came from.
//!
//! N is the dead letter's sequence in `DEADLETTER`. `replay` publishes the original again,
//! as it was (its subject, its own headers, its payload), to `INVENTORY` under a fresh
//! `Nats-Msg-Id`, for when the producer or the projector has been fixed; the dead letter
//! is kept. A letter whose payload was cut to fit cannot be replayed.

use anyhow::Context as _;
use async_nats::jetstream::stream::{LastRawMessageErrorKind, Stream};
use async_nats::jetstream::Context;
use clap::{Args, Subcommand};
use serde::Serialize;
use stockwire::batch;
use stockwire::deadletter::{self, DeadLetter};
use stockwire::domain::format_ms;
use stockwire::envelope::Outbound;
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
        Action::List => list(ctx, &js).await,
        Action::Show { seq } => show(ctx, &stream, seq).await,
        Action::Replay { seq } => replay(ctx, &js, &stream, seq).await,
        Action::Purge => purge(ctx, &stream).await,
    }
}

async fn list(ctx: &Ctx, js: &Context) -> Outcome {
    let letters = deadletter::read_all(js).await.map_err(anyhow::Error::new)?;
    let mut table = output::table(["seq", "stored", "view", "source", "reason", "error"]);
    for letter in &letters {
        let source_subject = letter.source_subject();
        let source_seq = letter.source_sequence();
        if ctx.json {
            output::json_line(&Listed {
                seq: letter.seq,
                stored: format_ms(letter.stored_ms),
                view: letter.view(),
                source_subject,
                source_seq,
                reason: letter.reason(),
                error: letter.error(),
                truncated: letter.truncated().is_some(),
            });
        } else {
            let text = |value: Option<&str>| value.unwrap_or("?").to_string();
            table.add_row(vec![
                letter.seq.to_string(),
                format_ms(letter.stored_ms),
                text(letter.view()),
                format!(
                    "{} #{}",
                    source_subject.unwrap_or("?"),
                    source_seq.map_or_else(|| "?".to_string(), |s| s.to_string())
                ),
                text(letter.reason()),
                text(letter.error()),
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
    let truncated = letter.truncated();
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
    if let Some(original) = letter.truncated() {
        let at = letter
            .source_sequence()
            .map_or_else(String::new, |s| format!(" (#{s})"));
        return Err(Failure::invalid(format!(
            "dead letter #{seq} cannot be replayed: its payload was cut to {} of {original} bytes; \
             the original is still in {}{at}",
            letter.payload.len(),
            subjects::INVENTORY_STREAM,
        )));
    }
    let subject = letter
        .source_subject()
        .filter(|s| subjects::split_event(s).is_some())
        .ok_or_else(|| {
            Failure::invalid(format!(
                "dead letter #{seq} cannot be replayed: header {} does not name an event subject",
                subjects::DEADLETTER_SOURCE_SUBJECT
            ))
        })?
        .to_string();

    let mut headers = letter.original_headers();
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
    let ack = batch::publish_acked(js, out.clone()).await?;
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
async fn get(stream: &Stream, seq: u64) -> Result<DeadLetter, Failure> {
    match stream.get_raw_message(seq).await {
        Ok(msg) => Ok(DeadLetter {
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

/// Milliseconds since the epoch of a JetStream timestamp.
fn unix_ms(time: &async_nats::datetime::DateTime) -> i64 {
    i64::try_from(time.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}
