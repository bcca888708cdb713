//! `stockwire transfer`: units from one warehouse to another, as two events in two
//! aggregates appended in ONE atomic batch: both stored or neither.
//!
//! `stock.transferred_out` in the source and `stock.transferred_in` in the destination
//! share a transfer id; each carries the expected last sequence of its own aggregate, so a
//! change to either refuses both. Decided against the source like a sale, and retried
//! the same way, by the same executor (`stockwire::execute`).
//!
//! Between two homes (the destination is an edge site, or the source is a site and the
//! destination is not) the two halves cannot be one batch: only the out leg is recorded
//! here, checked the same way, and the destination records the arrival at its own home
//! with `stockwire transit receive`.

use clap::Args;
use serde::Serialize;
use stockwire::domain::{Command, Location, Quantity, Sku, TransferId, WarehouseId};
use stockwire::execute::Outcome as CommandOutcome;

use stockwire::sites::Home;

use crate::args::EventOpts;
use crate::failure::{Failure, Outcome};
use crate::meta::event_meta;
use crate::record::execute;
use crate::wait::wait_applied;
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
    outcome: CommandOutcome,
    transfer_id: &'a str,
    out_seq: u64,
    /// `None` when the destination records the arrival at its own home.
    in_seq: Option<u64>,
    /// The units are on their way to a warehouse recorded elsewhere.
    in_transit: bool,
    already_stored: bool,
}

pub(crate) async fn run(ctx: &Ctx, args: TransferArgs) -> Outcome {
    if args.opts.force || args.opts.msg_id.is_some() {
        return Err(Failure::invalid(
            "transfer takes --transfer-id (its events are <id>-out and <id>-in), not --msg-id or --force",
        ));
    }
    let transfer_id = match args.transfer_id.clone() {
        Some(id) => id,
        None => TransferId::parse(&uuid::Uuid::new_v4().to_string())?,
    };
    let meta = event_meta(&args.opts)?;
    let js = ctx.jetstream().await?;
    let home = Home::of(&js).await.map_err(anyhow::Error::new)?;
    let elsewhere = home
        .refuses(&args.to_warehouse)
        .await
        .map_err(anyhow::Error::new)?
        .is_some();
    // Between two homes only the out leg is recorded here; the destination records the
    // arrival at its own (`transit receive`).
    let ship = elsewhere
        && home
            .refuses(&args.from_warehouse)
            .await
            .map_err(anyhow::Error::new)?
            .is_none();
    let command = if ship {
        Command::Ship {
            sku: args.sku.clone(),
            from_warehouse: args.from_warehouse.clone(),
            from: args.from.clone(),
            to_warehouse: args.to_warehouse.clone(),
            quantity: args.quantity,
            transfer_id: transfer_id.clone(),
        }
    } else {
        Command::Transfer {
            sku: args.sku.clone(),
            from_warehouse: args.from_warehouse.clone(),
            from: args.from.clone(),
            to_warehouse: args.to_warehouse.clone(),
            to: args.to.clone(),
            quantity: args.quantity,
            transfer_id: transfer_id.clone(),
        }
    };
    let executed = execute(ctx, "transfer", &command, &meta).await?;
    let legs = if ship { 1 } else { 2 };
    let (Some(&out_seq), Some(&last)) = (executed.sequences.first(), executed.sequences.last())
    else {
        return Err(anyhow::anyhow!("a transfer recorded no event").into());
    };
    if executed.sequences.len() != legs {
        return Err(anyhow::anyhow!(
            "a transfer recorded {} events, not {legs}",
            executed.sequences.len()
        )
        .into());
    }
    let in_seq = (!ship).then_some(last);
    let earlier = executed.outcome == CommandOutcome::AlreadyStored;
    if args.opts.wait {
        let mut products = vec![(args.from_warehouse.as_str(), args.sku.as_str())];
        if !ship {
            products.push((args.to_warehouse.as_str(), args.sku.as_str()));
        }
        wait_applied(ctx, last, &products).await?;
    }
    if ctx.json {
        output::json_line(&Transferred {
            outcome: executed.outcome,
            transfer_id: transfer_id.as_str(),
            out_seq,
            in_seq,
            in_transit: ship,
            already_stored: earlier,
        });
    } else if earlier {
        output::line(format!(
            "transfer {transfer_id} was already stored (#{out_seq}): not stored again"
        ));
    } else if ship {
        output::line(format!(
            "shipped {} {} from {}/{} to {} as #{out_seq} (transfer {transfer_id}); {} records \
             its arrival at its own home: stockwire transit receive --transfer-id {transfer_id} \
             -s {} --from-warehouse {} -w {} -l {} -q {}",
            args.quantity,
            args.sku,
            args.from_warehouse,
            args.from,
            args.to_warehouse,
            args.to_warehouse,
            args.sku,
            args.from_warehouse,
            args.to_warehouse,
            args.to,
            args.quantity
        ));
    } else {
        output::line(format!(
            "transferred {} {} from {}/{} to {}/{} as #{out_seq} and #{last} (transfer {transfer_id})",
            args.quantity, args.sku, args.from_warehouse, args.from, args.to_warehouse, args.to
        ));
    }
    Ok(())
}
