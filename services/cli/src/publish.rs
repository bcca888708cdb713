//! `stockwire publish <kind>`: one event, validated, published, and its PubAck awaited.
//! `stockwire publish --file` is the bulk import (see `import`).

use async_nats::jetstream::context::PublishErrorKind;
use serde::Serialize;
use std::time::{Duration, Instant};
use stockwire::domain::{check_not_in_future, Command, Event};
use stockwire::envelope::{check_msg_id, EventMeta, Outbound};

use stockwire::{subjects, view};

use crate::args::{EventOpts, PublishArgs};
use crate::failure::{Failure, Outcome};
use crate::{checked, import, output, Ctx};

pub(crate) async fn run(ctx: &Ctx, args: PublishArgs) -> Outcome {
    match (args.file, args.kind) {
        (Some(file), None) => {
            let last = import::run(ctx, &file).await?;
            match last {
                Some(seq) if args.wait => wait_applied(ctx, seq).await,
                _ => Ok(()),
            }
        }
        (None, Some(kind)) => {
            let (event, opts) = kind.into_event()?;
            publish_one(ctx, event, opts).await
        }
        _ => Err(Failure::invalid(
            "publish what? give an event kind (received, sold, destroyed, moved, corrected) or --file FILE",
        )),
    }
}

/// What a single publish did, as printed with `--json`.
#[derive(Debug, Serialize)]
struct Published<'a> {
    stored: bool,
    duplicate: bool,
    stream: &'a str,
    seq: u64,
    subject: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    msg_id: &'a str,
    timestamp_ms: i64,
}

/// Sales, moves and breakage are checked against the stock unless forced.
fn checked_command(event: &Event) -> Option<Command> {
    match event.clone() {
        Event::Sold {
            warehouse,
            sku,
            location,
            quantity,
        } => Some(Command::Sell {
            warehouse,
            sku,
            location,
            quantity,
        }),
        Event::Destroyed {
            warehouse,
            sku,
            location,
            quantity,
            reason,
        } => Some(Command::Destroy {
            warehouse,
            sku,
            location,
            quantity,
            reason,
        }),
        Event::Moved {
            warehouse,
            sku,
            from,
            to,
            quantity,
        } => Some(Command::Move {
            warehouse,
            sku,
            from,
            to,
            quantity,
        }),
        _ => None,
    }
}

async fn publish_one(ctx: &Ctx, event: Event, opts: EventOpts) -> Outcome {
    let meta = event_meta(&opts)?;
    let command = checked_command(&event);
    if opts.force && command.is_none() {
        return Err(Failure::invalid(
            "--force: only sold, moved and destroyed are checked; the others are always recorded",
        ));
    }
    let out = ctx.envelope.encode(&event, &meta);
    let js = ctx.jetstream().await?;
    let (seq, duplicate) = match command.filter(|_| !opts.force) {
        Some(command) => {
            let stored = checked::publish(ctx, &js, &command, &meta).await?;
            (stored.seq, stored.earlier)
        }
        None => {
            let ack = publish_acked(&js, &out).await?;
            (ack.sequence, ack.duplicate)
        }
    };
    let result = Published {
        stored: !duplicate,
        duplicate,
        stream: stockwire::subjects::INVENTORY_STREAM,
        seq,
        subject: &out.subject,
        event_type: event.event_type(),
        msg_id: &meta.msg_id,
        timestamp_ms: meta.timestamp_ms,
    };
    if opts.wait {
        wait_applied(ctx, seq).await?;
    }
    if ctx.json {
        output::json_line(&result);
    } else if duplicate {
        output::line(format!(
            "duplicate, not stored again: msg id {} is already stored as #{seq}",
            meta.msg_id
        ));
    } else {
        output::line(format!(
            "stored {} as #{seq} on {} (msg id {})",
            event.event_type(),
            out.subject,
            meta.msg_id
        ));
    }
    Ok(())
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

pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Publishes one message and waits for its PubAck, explaining the usual failures.
pub(crate) async fn publish_acked(
    js: &async_nats::jetstream::Context,
    out: &Outbound,
) -> Result<async_nats::jetstream::publish::PublishAck, Failure> {
    let ack = js
        .publish_with_headers(
            out.subject.clone(),
            out.headers.clone(),
            out.payload.clone(),
        )
        .await
        .map_err(|e| explain_publish(e, &out.subject))?
        .await
        .map_err(|e| explain_publish(e, &out.subject))?;
    Ok(ack)
}

pub(crate) fn explain_publish(
    e: async_nats::jetstream::context::PublishError,
    subject: &str,
) -> Failure {
    let error = match e.kind() {
        PublishErrorKind::StreamNotFound => anyhow::anyhow!(
            "no stream stores {subject}: run `stockwire setup` first (stream {})",
            subjects::INVENTORY_STREAM
        ),
        PublishErrorKind::MaxPayloadExceeded => {
            return Failure::invalid(format!(
                "publishing to {subject}: the event is too large ({e})"
            ))
        }
        _ => anyhow::Error::new(e).context(format!("publishing to {subject}")),
    };
    Failure::from(error)
}

/// Waits until the stock view has applied the event stored at `seq` (its checkpoint is at
/// or past it: the checkpoint moves in the same atomic commit as the keys).
pub(crate) async fn wait_applied(ctx: &Ctx, seq: u64) -> Outcome {
    let js = ctx.jetstream().await?;
    let kv = js
        .get_key_value(subjects::STOCK_BUCKET)
        .await
        .map_err(|e| anyhow::anyhow!("opening bucket stock (run `stockwire setup`?): {e}"))?;
    let deadline = Instant::now() + ctx.wait_timeout;
    loop {
        let applied = view::read_checkpoint(&kv)
            .await
            .map_err(|e| anyhow::anyhow!("reading the stock view's checkpoint: {e}"))?;
        if applied >= seq {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(anyhow::anyhow!(
                "event #{seq} is stored, but the stock view has not applied it within {} s \
                 (it is at #{applied}): is stock-projector running?",
                ctx.wait_timeout.as_secs()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
