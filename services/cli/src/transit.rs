//! `stockwire transit receive`: the arrival of a transfer between two homes, recorded at
//! the destination's home; `stockwire transit list`: the in-transit view.
//!
//! A transfer whose two ends are recorded at different servers (an edge site and the hub,
//! or two sites) cannot be one atomic batch: `stockwire transfer` records the out leg at
//! the source's home, and the destination records the arrival here when the goods come,
//! whether or not the out leg has reached this server yet. The product and the source
//! come from the in-transit view when it knows the transfer (at a site: the hub's view,
//! mirrored), else from the flags. A short receipt is allowed (the units that arrived are
//! recorded). A transfer is received once, whatever JetStream's duplicate window: the
//! warehouse's receipts are read for an earlier one, and the receipt is appended
//! expecting the last of them (`Nats-Expected-Last-Subject-Sequence-Subject` on all of the
//! warehouse's receipts), so two clerks receiving the same transfer at once store one. The
//! same receipt sent again (a retry after a lost acknowledgement) is answered with the one
//! stored.
//!
//! `stockwire transit list` reads the in-transit view (`transit`, kept at the hub by the
//! transit-projector from both legs of every transfer; at a site, the hub's copy as of
//! the link's last contact): those still on their way, with their age, and any mismatch:
//! a short receipt (the units lost in transit), an arrival whose out leg has not come in
//! yet, more received than sent.

use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde::Serialize;
use stockwire::batch;
use stockwire::domain::{
    Event, EventKind, Location, Quantity, Sku, TransferId, TransitView, WarehouseId,
};
use stockwire::envelope::EventMeta;
use stockwire::read::Reader;
use stockwire::retry::AppendErrorKind;
use stockwire::sites::Home;
use stockwire::{subjects, view, views};

use crate::args::EventOpts;
use crate::failure::{Failure, Kind, Outcome};
use crate::meta::{check_server_clock, event_meta, server_now_ms};
use crate::record::check_home_of;
use crate::wait::wait_applied;
use crate::{output, Ctx};

/// Where arrivals are put unless told otherwise.
const ARRIVALS: &str = "DOCK";

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
        /// Units that arrived.
        #[arg(short = 'q', long, allow_negative_numbers = true, value_parser = Quantity::parse)]
        quantity: Quantity,
        /// Where they are put.
        #[arg(short = 'l', long, value_parser = Location::parse, default_value = ARRIVALS)]
        location: Location,
        /// The warehouse they arrived at (default: the transfer's destination, as the
        /// in-transit view has it, or this site's warehouse).
        #[arg(short = 'w', long, value_parser = WarehouseId::parse)]
        warehouse: Option<WarehouseId>,
        /// The product (default: the in-transit view's; needed when the out leg has not
        /// reached this server).
        #[arg(short = 's', long, value_parser = Sku::parse)]
        sku: Option<Sku>,
        /// The warehouse they were shipped from (default: the in-transit view's).
        #[arg(long, value_parser = WarehouseId::parse)]
        from_warehouse: Option<WarehouseId>,
        #[command(flatten)]
        opts: EventOpts,
    },
    /// Transfers on their way and any mismatch between their two legs (the in-transit
    /// view: at the hub, every warehouse's), oldest first.
    List {
        /// Also the transfers whose units all arrived.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Serialize)]
struct Received<'a> {
    transfer_id: &'a str,
    seq: u64,
    quantity: u32,
    /// The same receipt was stored already (a retry); nothing new was stored.
    duplicate: bool,
}

/// How long a receipt keeps trying while other receipts of the warehouse land first.
const CONTENDED_FOR: Duration = Duration::from_secs(10);

pub(crate) async fn run(ctx: &Ctx, args: TransitArgs) -> Outcome {
    match args.action {
        Action::List { all } => list(ctx, all).await,
        receive @ Action::Receive { .. } => self::receive(ctx, receive).await,
    }
}

/// The in-transit view's value of `transfer_id` at this server, if it has one.
async fn known(
    js: &async_nats::jetstream::Context,
    transfer_id: &TransferId,
) -> Result<Option<TransitView>, Failure> {
    let Ok(bucket) = js.get_key_value(views::TRANSIT.bucket).await else {
        return Ok(None); // set up before the view existed: the flags say it all
    };
    let entry = bucket.get(transfer_id.as_str()).await.map_err(|e| {
        anyhow::anyhow!("reading transfer {transfer_id} in the in-transit view: {e}")
    })?;
    match entry {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            anyhow::anyhow!("transfer {transfer_id} in the in-transit view is not readable: {e}")
                .into()
        }),
    }
}

/// A flag, or the in-transit view's value when it was not given; both, if they differ,
/// is a mistake (exit 2).
fn pick<T: PartialEq + std::fmt::Display + Clone>(
    flag: &str,
    given: Option<T>,
    shipped: Option<T>,
    transfer_id: &TransferId,
) -> Result<Option<T>, Failure> {
    match (given, shipped) {
        (Some(g), Some(s)) if g != s => Err(Failure::invalid(format!(
            "transfer {transfer_id} was shipped with {flag} {s}, not {g}; nothing was stored"
        ))),
        (given, shipped) => Ok(given.or(shipped)),
    }
}

async fn receive(ctx: &Ctx, action: Action) -> Outcome {
    let Action::Receive {
        transfer_id,
        quantity,
        location,
        warehouse,
        sku,
        from_warehouse,
        opts,
    } = action
    else {
        return Err(anyhow::anyhow!("transit: not a receipt").into());
    };
    if opts.force || opts.msg_id.is_some() {
        return Err(Failure::invalid(
            "transit receive takes --transfer-id (its event is <id>-in), not --msg-id or --force",
        ));
    }
    let js = ctx.jetstream().await?;
    let shipped = known(&js, &transfer_id).await?;
    let home = Home::of(&js).await.map_err(anyhow::Error::new)?;
    let here = match &home {
        Home::Site(site) => Some(site.clone()),
        Home::Hub(_) => None,
    };
    let warehouse = pick(
        "-w",
        warehouse,
        shipped.as_ref().map(|s| s.to_warehouse.clone()),
        &transfer_id,
    )?
    .or(here);
    let sku = pick(
        "-s",
        sku,
        shipped.as_ref().map(|s| s.sku.clone()),
        &transfer_id,
    )?;
    let from_warehouse = pick(
        "--from-warehouse",
        from_warehouse,
        shipped.as_ref().map(|s| s.from_warehouse.clone()),
        &transfer_id,
    )?;
    let (Some(warehouse), Some(sku), Some(from_warehouse)) = (warehouse, sku, from_warehouse)
    else {
        return Err(Failure::invalid(format!(
            "transfer {transfer_id} is not in this server's in-transit view (its out leg has \
             not reached it): give -w WAREHOUSE, -s SKU and --from-warehouse WAREHOUSE as on \
             the delivery note"
        )));
    };
    if from_warehouse == warehouse {
        return Err(Failure::invalid(format!(
            "cannot receive a transfer of {sku} from {warehouse} at {warehouse}: it is the same \
             warehouse"
        )));
    }
    check_home_of(&home, vec![&warehouse]).await?;
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
    // Every receipt at the warehouse: few, next to its sales.
    let receipts_here = subjects::warehouse_events_of_kind(&warehouse, EventKind::TransferredIn);
    let started = Instant::now();
    let (seq, duplicate) = loop {
        let (earlier, last) = receipts(ctx, &js, &receipts_here, &transfer_id).await?;
        if let Some((seq, stored)) = earlier {
            if stored == event {
                break (seq, true);
            }
            let units = match &stored {
                Event::TransferredIn { quantity, .. } => quantity.get(),
                _ => 0,
            };
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
        out.headers.insert(
            subjects::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT,
            receipts_here.as_str(),
        );
        match batch::publish_acked(&js, out).await {
            // Stored already inside the duplicate window: read which receipt it was.
            Ok(ack) if ack.duplicate => continue,
            Ok(ack) => break (ack.sequence, false),
            Err(e)
                if matches!(
                    e.kind(),
                    AppendErrorKind::WrongLastSequence | AppendErrorKind::ExpectationInFlight
                ) && started.elapsed() < CONTENDED_FOR =>
            {
                // Another receipt at the warehouse came first: read again.
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
            duplicate,
        });
    } else if duplicate {
        output::line(format!(
            "already received, not stored again: {quantity} {sku} at {warehouse}/{location} \
             from {from_warehouse} is #{seq} (transfer {transfer_id})"
        ));
    } else {
        output::line(format!(
            "received {quantity} {sku} at {warehouse}/{location} from {from_warehouse} as #{seq} \
             (transfer {transfer_id})"
        ));
    }
    Ok(())
}

/// The earlier receipt of `transfer_id` under `filter` (its sequence and event), if any,
/// and the filter's last sequence (0 when it has none).
async fn receipts(
    ctx: &Ctx,
    js: &async_nats::jetstream::Context,
    filter: &str,
    transfer_id: &TransferId,
) -> Result<(Option<(u64, Event)>, u64), Failure> {
    let mut reader = Reader::open(js, subjects::INVENTORY_STREAM, filter, 1)
        .await
        .map_err(anyhow::Error::new)?;
    let (mut found, mut last) = (None, 0);
    while let Some(stored) = reader.next().await {
        let stored = stored.map_err(anyhow::Error::new)?;
        last = stored.sequence;
        if found.is_some() {
            continue;
        }
        if let Ok(recorded) = ctx.envelope.decode_stored(&stored) {
            if matches!(&recorded.event, Event::TransferredIn { transfer_id: id, .. } if id == transfer_id)
            {
                found = Some((stored.sequence, recorded.event));
            }
        }
    }
    Ok((found, last))
}

/// One transfer as listed.
#[derive(Debug, Serialize)]
struct Listed {
    transfer_id: String,
    sku: String,
    from_warehouse: String,
    to_warehouse: String,
    sent: Option<u32>,
    sent_ms: Option<i64>,
    received: Option<u32>,
    received_ms: Option<i64>,
    state: &'static str,
    /// Units sent and never received (a short receipt).
    lost: u32,
    /// Since the out leg (or the arrival, when only that is here), in seconds.
    age_s: i64,
}

async fn list(ctx: &Ctx, all: bool) -> Outcome {
    let js = ctx.jetstream().await?;
    let transits: Vec<(String, TransitView)> = view::snapshot(&js, views::TRANSIT.bucket)
        .await
        .map_err(|e| anyhow::anyhow!("reading the in-transit view: {e}"))?;
    let now = crate::meta::now_ms();
    let mut shown: Vec<Listed> = transits
        .into_iter()
        .map(|(_, t)| t)
        .filter(|t| all || t.open())
        .map(|t| Listed {
            state: t.state().as_str(),
            lost: t.lost(),
            age_s: t.age_ms(now) / 1000,
            transfer_id: t.transfer_id.to_string(),
            sku: t.sku.to_string(),
            from_warehouse: t.from_warehouse.to_string(),
            to_warehouse: t.to_warehouse.to_string(),
            sent: t.sent,
            sent_ms: t.sent_ms,
            received: t.received,
            received_ms: t.received_ms,
        })
        .collect();
    shown.sort_by_key(|t| std::cmp::Reverse(t.age_s));
    if ctx.json {
        for t in &shown {
            output::json_line(t);
        }
        return Ok(());
    }
    if shown.is_empty() {
        output::line("nothing in transit");
        return Ok(());
    }
    let mut table = output::table([
        "transfer", "sku", "from", "to", "sent", "received", "age", "state",
    ]);
    for t in &shown {
        let count = |n: Option<u32>| n.map_or_else(|| "-".to_string(), |n| n.to_string());
        let state = if t.lost > 0 {
            format!("{} ({} units)", t.state, t.lost)
        } else {
            t.state.to_string()
        };
        table.add_row(vec![
            t.transfer_id.clone(),
            t.sku.clone(),
            t.from_warehouse.clone(),
            t.to_warehouse.clone(),
            count(t.sent),
            count(t.received),
            crate::site::ago(u64::try_from(t.age_s).unwrap_or(0) * 1000),
            state,
        ]);
    }
    output::line(&table);
    Ok(())
}
