//! `stockwire history -w W -s SKU`: every event of one aggregate, oldest first.
//!
//! With `--json`, one line per event in the import format (`type`, the payload fields,
//! `msg_id`, `timestamp_ms`) plus `seq`, so a history can be fed back to `publish --file`,
//! and `"sourced": true` on an event this server's stream took from another's (at the hub:
//! an edge site's event, come by sourcing).

use clap::Args;
use serde_json::Map;
use stockwire::domain::{format_ms, Event};
use stockwire::event_line;
use stockwire::read::Reader;
use stockwire::subjects;

use crate::args::Product;
use crate::failure::Outcome;
use crate::{output, Ctx};

#[derive(Debug, Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    product: Product,
}

pub(crate) async fn run(ctx: &Ctx, args: HistoryArgs) -> Outcome {
    let js = ctx.jetstream().await?;
    let filter = subjects::aggregate(&args.product.warehouse, &args.product.sku);
    let mut reader = Reader::open(&js, subjects::INVENTORY_STREAM, &filter, 1)
        .await
        .map_err(anyhow::Error::new)?;
    let mut table = output::table(["seq", "time", "type", "what", "msg id"]);
    let mut count = 0;
    while let Some(stored) = reader.next().await {
        let stored = stored.map_err(anyhow::Error::new)?;
        count += 1;
        let decoded = ctx.envelope.decode_stored(&stored);
        match (decoded, ctx.json) {
            (Ok(rec), true) => {
                let mut line = Map::new();
                line.insert("seq".into(), stored.sequence.into());
                line.extend(event_line::to_line(&rec.event, &rec.meta));
                let sourced = stored
                    .headers
                    .as_ref()
                    .is_some_and(|h| h.get(subjects::NATS_STREAM_SOURCE).is_some());
                if sourced {
                    line.insert("sourced".into(), true.into());
                }
                output::json_line(&line);
            }
            (Ok(rec), false) => {
                table.add_row(vec![
                    stored.sequence.to_string(),
                    format_ms(rec.meta.timestamp_ms),
                    rec.event.event_type().to_string(),
                    describe(&rec.event),
                    rec.meta.msg_id,
                ]);
            }
            (Err(e), true) => output::json_line(&serde_json::json!({
                "seq": stored.sequence,
                "subject": stored.subject,
                "invalid": e.to_string(),
            })),
            (Err(e), false) => {
                table.add_row(vec![
                    stored.sequence.to_string(),
                    String::new(),
                    "(invalid)".into(),
                    e.to_string(),
                    String::new(),
                ]);
            }
        }
    }
    if !ctx.json {
        if count == 0 {
            output::line(format!(
                "no events for {} {}",
                args.product.warehouse, args.product.sku
            ));
        } else {
            output::line(&table);
        }
    }
    Ok(())
}

/// What an event did, in a few words: `A43 +5`, `A43 -> G15 3`, `A43 = 0`.
fn describe(event: &Event) -> String {
    match event {
        Event::Received {
            location, quantity, ..
        } => format!("{location} +{quantity}"),
        Event::Sold {
            location, quantity, ..
        } => format!("{location} -{quantity}"),
        Event::Destroyed {
            location,
            quantity,
            reason,
            ..
        } => {
            format!("{location} -{quantity} ({reason})")
        }
        Event::Moved {
            from, to, quantity, ..
        } => format!("{from} -> {to} {quantity}"),
        Event::Corrected {
            location, quantity, ..
        } => format!("{location} = {quantity}"),
        Event::TransferredOut {
            location,
            quantity,
            to_warehouse,
            ..
        } => format!("{location} -{quantity} (to {to_warehouse})"),
        Event::TransferredIn {
            location,
            quantity,
            from_warehouse,
            ..
        } => format!("{location} +{quantity} (from {from_warehouse})"),
    }
}
