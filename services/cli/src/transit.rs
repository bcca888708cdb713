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
//!
//! `stockwire transit list` pairs the two legs of every transfer the server's log holds
//! (at the hub: every warehouse's) and shows those still on their way, with their age, and
//! any mismatch: a short receipt (the units lost in transit), an arrival whose out leg has
//! not come in yet, more received than sent.

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
    /// Transfers on their way and any mismatch between their two legs (at the hub, every
    /// warehouse's), oldest first.
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
}

/// How long a receipt keeps trying while other receipts of the product land first.
const CONTENDED_FOR: Duration = Duration::from_secs(10);

pub(crate) async fn run(ctx: &Ctx, args: TransitArgs) -> Outcome {
    match args.action {
        Action::List { all } => list(ctx, all).await,
        receive @ Action::Receive { .. } => self::receive(ctx, receive).await,
    }
}

async fn receive(ctx: &Ctx, action: Action) -> Outcome {
    let Action::Receive {
        transfer_id,
        warehouse,
        sku,
        from_warehouse,
        location,
        quantity,
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

/// One transfer's two legs, as far as this server's log holds them.
#[derive(Debug, Default, Serialize)]
struct Transit {
    transfer_id: String,
    sku: String,
    from_warehouse: String,
    to_warehouse: String,
    sent: Option<u32>,
    sent_ms: Option<i64>,
    out_seq: Option<u64>,
    received: Option<u32>,
    received_ms: Option<i64>,
    in_seq: Option<u64>,
    state: &'static str,
    /// Units sent and never received (a short receipt).
    lost: u32,
    /// Since the out leg (or the arrival, when only that is here), in seconds.
    age_s: i64,
}

impl Transit {
    fn settle(&mut self, now_ms: i64) {
        let (state, lost) = match (self.sent, self.received) {
            (Some(_), None) => ("in transit", 0),
            (Some(s), Some(r)) if r == s => ("received", 0),
            (Some(s), Some(r)) if r < s => ("short: lost in transit", s - r),
            (Some(_), Some(_)) => ("MISMATCH: more received than sent", 0),
            (None, Some(_)) => ("MISMATCH: received, its out leg not here (yet)", 0),
            (None, None) => ("", 0),
        };
        self.state = state;
        self.lost = lost;
        let since = self.sent_ms.or(self.received_ms).unwrap_or(now_ms);
        self.age_s = (now_ms - since).max(0) / 1000;
    }

    /// Still to be looked at: on its way, short or mismatched.
    fn open(&self) -> bool {
        self.state != "received"
    }
}

async fn list(ctx: &Ctx, all: bool) -> Outcome {
    use std::collections::BTreeMap;
    let js = ctx.jetstream().await?;
    let mut transits: BTreeMap<String, Transit> = BTreeMap::new();
    for kind in [EventKind::TransferredOut, EventKind::TransferredIn] {
        let filter = subjects::events_of_kind(kind);
        let mut reader = Reader::open(&js, subjects::INVENTORY_STREAM, &filter, 1)
            .await
            .map_err(anyhow::Error::new)?;
        while let Some(stored) = reader.next().await {
            let stored = stored.map_err(anyhow::Error::new)?;
            let Ok(recorded) = ctx.envelope.decode_stored(&stored) else {
                continue; // the projectors dead-letter what does not decode
            };
            match recorded.event {
                Event::TransferredOut {
                    warehouse,
                    sku,
                    quantity,
                    to_warehouse,
                    transfer_id,
                    ..
                } => {
                    let t = transits.entry(transfer_id.to_string()).or_default();
                    t.transfer_id = transfer_id.to_string();
                    t.sku = sku.to_string();
                    t.from_warehouse = warehouse.to_string();
                    t.to_warehouse = to_warehouse.to_string();
                    t.sent = Some(t.sent.unwrap_or(0) + quantity.get());
                    t.sent_ms = Some(recorded.meta.timestamp_ms);
                    t.out_seq = Some(stored.sequence);
                }
                Event::TransferredIn {
                    warehouse,
                    sku,
                    quantity,
                    from_warehouse,
                    transfer_id,
                    ..
                } => {
                    let t = transits.entry(transfer_id.to_string()).or_default();
                    t.transfer_id = transfer_id.to_string();
                    t.sku = sku.to_string();
                    t.from_warehouse = from_warehouse.to_string();
                    t.to_warehouse = warehouse.to_string();
                    t.received = Some(t.received.unwrap_or(0) + quantity.get());
                    t.received_ms = Some(recorded.meta.timestamp_ms);
                    t.in_seq = Some(stored.sequence);
                }
                _ => {}
            }
        }
    }
    let now = crate::meta::now_ms();
    let mut shown: Vec<Transit> = transits
        .into_values()
        .map(|mut t| {
            t.settle(now);
            t
        })
        .filter(|t| all || t.open())
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
