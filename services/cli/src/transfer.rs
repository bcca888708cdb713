//! `stockwire transfer`: units from one warehouse to another, as two events in two
//! aggregates appended in ONE atomic batch: both stored or neither.
//!
//! `stock.transferred_out` in the source and `stock.transferred_in` in the destination
//! share a transfer id; each carries the expected last sequence of its own aggregate, so a
//! change to either refuses both. Decided against the source like a sale, and retried
//! the same way (see `checked`).

use clap::Args;
use serde::Serialize;
use stockwire::aggregate::{self, expect_at};
use stockwire::batch;
use stockwire::domain::{decide, Command, Location, Quantity, Sku, TransferId, WarehouseId};
use stockwire::envelope::EventMeta;
use stockwire::retry::Next;

use crate::args::EventOpts;
use crate::checked::{refused, until_decided, Attempt, Stored};
use crate::failure::{Failure, Outcome};
use crate::publish::{event_meta, wait_applied};
use crate::{output, Ctx};

#[derive(Debug, Args)]
pub struct TransferArgs {
    /// Product SKU.
    #[arg(short = 's', long, value_parser = Sku::parse)]
    sku: Sku,
    /// Warehouse the units leave.
    #[arg(long, value_parser = WarehouseId::parse)]
    from_warehouse: WarehouseId,
    /// Location they leave.
    #[arg(long, value_parser = Location::parse)]
    from: Location,
    /// Warehouse they arrive at.
    #[arg(long, value_parser = WarehouseId::parse)]
    to_warehouse: WarehouseId,
    /// Location they arrive at.
    #[arg(long, value_parser = Location::parse)]
    to: Location,
    /// Units (a positive whole number).
    #[arg(short = 'q', long, allow_negative_numbers = true, value_parser = Quantity::parse)]
    quantity: Quantity,
    /// Id of the transfer (default: a new UUID); its events are `<id>-out` and `<id>-in`.
    #[arg(long, value_parser = TransferId::parse)]
    transfer_id: Option<TransferId>,
    #[command(flatten)]
    opts: EventOpts,
}

#[derive(Serialize)]
struct Transferred<'a> {
    transfer_id: &'a str,
    out_seq: u64,
    in_seq: u64,
    already_stored: bool,
}

pub(crate) async fn run(ctx: &Ctx, args: TransferArgs) -> Outcome {
    if args.opts.force || args.opts.msg_id.is_some() {
        return Err(Failure::invalid(
            "transfer takes --transfer-id (its events are <id>-out and <id>-in), not --msg-id or --force",
        ));
    }
    let transfer_id = match args.transfer_id {
        Some(id) => id,
        None => TransferId::parse(&uuid::Uuid::new_v4().to_string())?,
    };
    let meta = event_meta(&args.opts)?;
    let (out_meta, in_meta) = (
        EventMeta {
            msg_id: format!("{transfer_id}-out"),
            timestamp_ms: meta.timestamp_ms,
        },
        EventMeta {
            msg_id: format!("{transfer_id}-in"),
            timestamp_ms: meta.timestamp_ms,
        },
    );
    let command = Command::Transfer {
        sku: args.sku.clone(),
        from_warehouse: args.from_warehouse.clone(),
        from: args.from.clone(),
        to_warehouse: args.to_warehouse.clone(),
        to: args.to.clone(),
        quantity: args.quantity,
        transfer_id: transfer_id.clone(),
    };
    let js = ctx.jetstream().await?;
    let client = js.client();
    let timeout = ctx.connect.request_timeout();
    let stored = until_decided("transfer", || async {
        let source = aggregate::load(&js, &ctx.envelope, &args.from_warehouse, &args.sku)
            .await
            .map_err(anyhow::Error::new)?;
        if let Some(seq) = source.stored(&out_meta.msg_id) {
            return Ok(Attempt::Done(Stored { seq, earlier: true }));
        }
        let target = aggregate::load(&js, &ctx.envelope, &args.to_warehouse, &args.sku)
            .await
            .map_err(anyhow::Error::new)?;
        let events = decide(&command, &source.locations).map_err(refused)?;
        let [out_event, in_event] = events.as_slice() else {
            return Err(
                anyhow::anyhow!("a transfer decided {} events, not 2", events.len()).into(),
            );
        };
        let mut first = ctx.envelope.encode(out_event, &out_meta);
        expect_at(&mut first, &args.from_warehouse, &args.sku, source.last_seq);
        let mut second = ctx.envelope.encode(in_event, &in_meta);
        expect_at(&mut second, &args.to_warehouse, &args.sku, target.last_seq);
        match batch::publish_atomic(&client, vec![first, second], timeout).await {
            Ok(ack) => Ok(Attempt::Done(Stored {
                seq: ack.sequence,
                earlier: false,
            })),
            Err(e) if e.kind().next() == Next::Decide => Ok(Attempt::Conflict),
            Err(e) => Err(anyhow::Error::new(e)
                .context("publishing the transfer")
                .into()),
        }
    })
    .await?;
    // The in-event is stored right after the out-event.
    let (out_seq, in_seq) = if stored.earlier {
        (stored.seq, stored.seq + 1)
    } else {
        (stored.seq - 1, stored.seq)
    };
    if args.opts.wait {
        wait_applied(ctx, in_seq).await?;
    }
    if ctx.json {
        output::json_line(&Transferred {
            transfer_id: transfer_id.as_str(),
            out_seq,
            in_seq,
            already_stored: stored.earlier,
        });
    } else if stored.earlier {
        output::line(format!(
            "transfer {transfer_id} was already stored (#{out_seq}): not stored again"
        ));
    } else {
        output::line(format!(
            "transferred {} {} from {}/{} to {}/{} as #{out_seq} and #{in_seq} (transfer {transfer_id})",
            args.quantity, args.sku, args.from_warehouse, args.from, args.to_warehouse, args.to
        ));
    }
    Ok(())
}
