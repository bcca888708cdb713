//! `stockwire publish <kind>`: one command, decided and recorded by the executor, and
//! its outcome told. `stockwire publish --file` is the bulk import (see `import`).

use serde::Serialize;
use stockwire::domain::Command;
use stockwire::envelope::EventMeta;
use stockwire::execute::{Executed, Outcome as CommandOutcome};
use stockwire::subjects;

use crate::args::PublishArgs;
use crate::failure::{Failure, Outcome};
use crate::meta::event_meta;
use crate::record::execute;
use crate::wait::wait_applied;
use crate::{import, output, Ctx};

pub(crate) async fn run(ctx: &Ctx, args: PublishArgs) -> Outcome {
    match (args.file, args.kind) {
        (Some(file), None) => {
            let last = import::run(ctx, &file, args.write_method).await?;
            match last {
                Some(seq) if args.wait => wait_applied(ctx, seq, &[]).await,
                _ => Ok(()),
            }
        }
        (None, Some(kind)) => {
            let (command, opts) = kind.into_command()?;
            let meta = event_meta(&opts)?;
            let executed = execute(ctx, "publish", &command, &meta).await?;
            let seq = executed.sequences.last().copied().unwrap_or(0);
            if opts.wait {
                let (warehouse, sku) = command.aggregate();
                wait_applied(ctx, seq, &[(warehouse.as_str(), sku.as_str())]).await?;
            }
            tell(ctx, &command, &meta, &executed);
            Ok(())
        }
        _ => Err(Failure::invalid(
            "publish what? give an event kind (received, sold, destroyed, moved, corrected) or --file FILE",
        )),
    }
}

/// What a single publish did, as printed with `--json`.
#[derive(Debug, Serialize)]
struct Published<'a> {
    /// `stored` or `already_stored`.
    outcome: CommandOutcome,
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

fn tell(ctx: &Ctx, command: &Command, meta: &EventMeta, executed: &Executed) {
    let (warehouse, sku) = command.aggregate();
    let subject = subjects::event(warehouse, sku, command.kind());
    let event_type = command.kind().event_type();
    let seq = executed.sequences.first().copied().unwrap_or(0);
    let duplicate = executed.outcome == CommandOutcome::AlreadyStored;
    if ctx.json {
        output::json_line(&Published {
            outcome: executed.outcome,
            stored: !duplicate,
            duplicate,
            stream: subjects::INVENTORY_STREAM,
            seq,
            subject: &subject,
            event_type,
            msg_id: &meta.msg_id,
            timestamp_ms: meta.timestamp_ms,
        });
    } else if duplicate {
        output::line(format!(
            "duplicate, not stored again: msg id {} is already stored as #{seq}",
            meta.msg_id
        ));
    } else {
        output::line(format!(
            "stored {event_type} as #{seq} on {subject} (msg id {})",
            meta.msg_id
        ));
    }
}
