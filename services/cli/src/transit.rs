//! `stockwire transit receive`: the arrival of a transfer between two homes, recorded at
//! the destination's home.
//!
//! A transfer whose two ends are recorded at different servers (an edge site and the hub,
//! or two sites) cannot be one atomic batch: `stockwire transfer` records the out leg at
//! the source's home, and the destination records the arrival here when the goods come,
//! whether or not the out leg has reached this server yet. A short receipt is allowed (the
//! units that arrived are recorded). A transfer is received once, whatever JetStream's
//! duplicate window: the destination's log is read for an earlier receipt, and the receipt
//! is appended expecting that log's last receipt of the product, so two clerks receiving
//! the same transfer at once store one receipt.

use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde::Serialize;
use stockwire::batch;
use stockwire::domain::{Event, EventKind, Location, Quantity, Sku, TransferId, WarehouseId};
use stockwire::envelope::EventMeta;
use stockwire::read::Reader;
use stockwire::retry::AppendErrorKind;
use stockwire::subjects;

use crate::args::EventOpts;
use crate::failure::{Failure, Kind, Outcome};
use crate::meta::{check_server_clock, event_meta, server_now_ms};
use crate::record::check_home;
use crate::wait::wait_applied;
use crate::{output, Ctx};

#[derive(Debug, Args)]
pub struct TransitArgs {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Record the arrival of units shipped from a warehouse recorded at another home
    /// (run at the destination's home; a short receipt records what arrived).
    Receive {
        /// The transfer's id, as `stockwire transfer` printed it.
        #[arg(long, value_parser = TransferId::parse)]
        transfer_id: TransferId,
        /// The warehouse the units arrived at (recorded here).
        #[arg(short = 'w', long, value_parser = WarehouseId::parse)]
        warehouse: WarehouseId,
        #[arg(short = 's', long, value_parser = Sku::parse)]
        sku: Sku,
        /// The warehouse they were shipped from.
        #[arg(long, value_parser = WarehouseId::parse)]
        from_warehouse: WarehouseId,
        /// Where they are put.
        #[arg(short = 'l', long, value_parser = Location::parse)]
        location: Location,
        /// Units that arrived.
        #[arg(short = 'q', long, allow_negative_numbers = true, value_parser = Quantity::parse)]
        quantity: Quantity,
        #[command(flatten)]
        opts: EventOpts,
    },
}

#[derive(Serialize)]
struct Received<'a> {
    transfer_id: &'a str,
    seq: u64,
    quantity: u32,
}

/// How long a receipt keeps trying while other receipts of the product land first.
const CONTENDED_FOR: Duration = Duration::from_secs(10);

pub(crate) async fn run(ctx: &Ctx, args: TransitArgs) -> Outcome {
    let Action::Receive {
        transfer_id,
        warehouse,
        sku,
        from_warehouse,
        location,
        quantity,
        opts,
    } = args.action;
    if opts.force || opts.msg_id.is_some() {
        return Err(Failure::invalid(
            "transit receive takes --transfer-id (its event is <id>-in), not --msg-id or --force",
        ));
    }
    if from_warehouse == warehouse {
        return Err(Failure::invalid(format!(
            "cannot receive a transfer of {sku} from {warehouse} at {warehouse}: it is the same \
             warehouse"
        )));
    }
    let js = ctx.jetstream().await?;
    check_home(&js, vec![&warehouse]).await?;
    let asked = event_meta(&opts)?;
    check_server_clock(
        "transit receive",
        asked.timestamp_ms,
        server_now_ms(&js).await?,
    )?;
    let event = Event::TransferredIn {
        warehouse: warehouse.clone(),
        sku: sku.clone(),
        location: location.clone(),
        quantity,
        from_warehouse: from_warehouse.clone(),
        transfer_id: transfer_id.clone(),
    };
    let meta = EventMeta {
        msg_id: format!("{transfer_id}-in"),
        timestamp_ms: asked.timestamp_ms,
    };
    let subject = subjects::event(&warehouse, &sku, EventKind::TransferredIn);
    let started = Instant::now();
    let seq = loop {
        // Every earlier receipt of this product at this warehouse: few, next to its sales.
        let (earlier, last) = receipts(ctx, &js, &subject, &transfer_id).await?;
        if let Some((seq, units)) = earlier {
            return Err(Failure {
                kind: Kind::Rejected,
                error: anyhow::anyhow!(
                    "transfer {transfer_id} was already received at {warehouse} as #{seq} \
                     ({units} units): a transfer is received once; nothing was stored"
                ),
            });
        }
        let mut out = ctx.envelope.encode(&event, &meta);
        out.headers.insert(
            subjects::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            last.to_string().as_str(),
        );
        match batch::publish_acked(&js, out).await {
            Ok(ack) if ack.duplicate => {
                return Err(Failure {
                    kind: Kind::Rejected,
                    error: anyhow::anyhow!(
                        "transfer {transfer_id} was already received at {warehouse} as #{}: a \
                         transfer is received once; nothing was stored",
                        ack.sequence
                    ),
                })
            }
            Ok(ack) => break ack.sequence,
            Err(e)
                if matches!(
                    e.kind(),
                    AppendErrorKind::WrongLastSequence | AppendErrorKind::ExpectationInFlight
                ) && started.elapsed() < CONTENDED_FOR =>
            {
                // Another receipt of the product came first: read again.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    if opts.wait {
        wait_applied(ctx, seq, &[(warehouse.as_str(), sku.as_str())]).await?;
    }
    if ctx.json {
        output::json_line(&Received {
            transfer_id: transfer_id.as_str(),
            seq,
            quantity: quantity.get(),
        });
    } else {
        output::line(format!(
            "received {quantity} {sku} at {warehouse}/{location} from {from_warehouse} as #{seq} \
             (transfer {transfer_id})"
        ));
    }
    Ok(())
}

/// The earlier receipt of `transfer_id` on `subject` (its sequence and units), if any, and
/// the subject's last sequence (0 when it has none).
async fn receipts(
    ctx: &Ctx,
    js: &async_nats::jetstream::Context,
    subject: &str,
    transfer_id: &TransferId,
) -> Result<(Option<(u64, u32)>, u64), Failure> {
    let mut reader = Reader::open(js, subjects::INVENTORY_STREAM, subject, 1)
        .await
        .map_err(anyhow::Error::new)?;
    let (mut found, mut last) = (None, 0);
    while let Some(stored) = reader.next().await {
        let stored = stored.map_err(anyhow::Error::new)?;
        last = stored.sequence;
        if let Ok(recorded) = ctx.envelope.decode_stored(&stored) {
            if let Event::TransferredIn {
                transfer_id: id,
                quantity,
                ..
            } = &recorded.event
            {
                if id == transfer_id && found.is_none() {
                    found = Some((stored.sequence, quantity.get()));
                }
            }
        }
    }
    Ok((found, last))
}
