//! `stockwire alerts [--follow]`: the derived events in `ALERTS`, oldest first; with
//! `--follow`, then every new one as it arrives, until interrupted.

use clap::Args;
use serde_json::{json, Value};
use stockwire::domain::format_ms;
use stockwire::read::{Follower, Reader, StoredMessage};
use stockwire::subjects;

use crate::failure::Outcome;
use crate::{output, Ctx};

#[derive(Debug, Args)]
pub struct AlertsArgs {
    /// Keep waiting for new alerts and print each as it arrives (ctrl-c to stop).
    #[arg(long)]
    follow: bool,
}

pub(crate) async fn run(ctx: &Ctx, args: AlertsArgs) -> Outcome {
    let js = ctx.jetstream().await?;
    let mut reader = Reader::open(&js, subjects::ALERTS_STREAM, subjects::ALERTS_SUBJECTS, 1)
        .await
        .map_err(anyhow::Error::new)?;
    let mut last = 0;
    let mut shown = 0;
    while let Some(stored) = reader.next().await {
        let stored = stored.map_err(anyhow::Error::new)?;
        last = stored.sequence;
        print(ctx, &stored);
        shown += 1;
    }
    if !args.follow {
        if shown == 0 && !ctx.json {
            output::line("no alerts");
        }
        return Ok(());
    }
    let mut follower = Follower::new(
        &js,
        subjects::ALERTS_STREAM,
        subjects::ALERTS_SUBJECTS,
        last + 1,
    );
    let interrupted = stockwire::shutdown::shutdown_signal();
    tokio::pin!(interrupted);
    loop {
        tokio::select! {
            _ = &mut interrupted => return Ok(()),
            stored = follower.next() => print(ctx, &stored),
        }
    }
}

fn print(ctx: &Ctx, stored: &StoredMessage) {
    let header = |name: &str| {
        stored
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.to_string())
            .unwrap_or_default()
    };
    let event_type = header(ctx.envelope.type_header());
    let at: i64 = header(ctx.envelope.timestamp_header()).parse().unwrap_or(0);
    let payload: Value = serde_json::from_slice(&stored.payload).unwrap_or(Value::Null);
    if ctx.json {
        output::json_line(&json!({
            "seq": stored.sequence,
            "subject": stored.subject,
            "type": event_type,
            "msg_id": header(ctx.envelope.msg_id_header()),
            "timestamp_ms": at,
            "payload": payload,
        }));
        return;
    }
    let product = format!(
        "{}/{}",
        payload["warehouse"].as_str().unwrap_or("?"),
        payload["sku"].as_str().unwrap_or("?")
    );
    let what = match (payload.get("on_hand"), payload.get("threshold")) {
        (Some(on_hand), Some(threshold)) => format!("on hand {on_hand}, threshold {threshold}"),
        _ => {
            let mut rest = payload.clone();
            if let Some(map) = rest.as_object_mut() {
                map.remove("warehouse");
                map.remove("sku");
            }
            rest.to_string()
        }
    };
    output::line(format!(
        "#{:<6} {}  {:<24} {:<20} {what}",
        stored.sequence,
        format_ms(at),
        event_type,
        product
    ));
}
