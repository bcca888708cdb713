//! `stockwire simulate`: a living warehouse network, through the real write paths.
//!
//! Customers try to buy what [`stockwire::simulation::Demand`] plans (popularity, each
//! warehouse's local day, bursts), and the staff do what [`stockwire::simulation::Chores`]
//! plans (cycle counts, breakage, discontinuing a product). Live, every sale goes through
//! the command executor, checked against the stock, so nothing is ever oversold: a sale
//! refused for want of stock is a lost sale. The simulator follows the `ALERTS` stream,
//! and on a `stock.low` (or a stockout forecast) takes units from a warehouse with plenty
//! to spare, or orders enough for what customers asked over the last day for twice the
//! lead time; the order arrives at the dock after the warehouse's lead time (simulated
//! hours) and is put on the shelf half an hour later.
//!
//! `--backfill-days D` first writes D days of history, backdated, decided on the
//! simulator's own books (no alerts exist for the past: the books order as the watchers
//! would have asked) and written in atomic batches through the import path. Then it goes
//! on live with the orders it had open.
//!
//! On a start without backfill it reads the stock view: products it has never seen get
//! their first stock, a delivery waiting at the dock is put away, and products below
//! their threshold get an order, so a restart loses nothing it meant to do. A product's
//! own threshold of "low below 0" marks it discontinued, here and after a restart.
//!
//! Time: event times are simulated time, which runs `--speed` times faster than the clock
//! and never passes it: a run of D seconds at speed X starts at now - D x (X - 1) and ends
//! now. Every event it writes has a msg id starting `sim-`.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::iter::Peekable;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;
use stockwire::clock::{Clock as _, SystemClock};
use stockwire::domain::{
    Alert, Location, Sku, StockView, Thresholds, WarehouseId, ALERT_LOW, ALERT_STOCKOUT_FORECAST,
};
use stockwire::execute::Executor;
use stockwire::read::Follower;
use stockwire::simulation::{self, Chores, Demand};
use stockwire::{subjects, view};

use crate::failure::{Failure, Outcome};
use crate::{output, Ctx};

mod network;

use network::{Books, Ledger, Network, Product};

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Warehouses of the network (ams1, nyc1, sin1, lon1, ...: each on its own local day).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=64))]
    warehouses: u64,
    /// Products in each warehouse (p0001, p0002, ...).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    skus: u64,
    /// Customers' purchase attempts per wall-clock second, on average over a day
    /// (deliveries, moves and chores come on top).
    #[arg(long, value_name = "EVENTS_PER_S", default_value_t = 5.0, value_parser = positive)]
    rate: f64,
    /// Seed of the planned demand and chores: the same seed, the same customers.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Simulated time runs this many times faster than the clock (above 1 needs
    /// --duration-s: simulated time never passes the clock).
    #[arg(long, default_value_t = 1.0, value_parser = positive)]
    speed: f64,
    /// Stop after this many wall-clock seconds (default: at ctrl-c).
    #[arg(long, value_name = "S", value_parser = positive)]
    duration_s: Option<f64>,
    /// First write this many days of history before the live run, backdated, as fast as
    /// the import path takes them (the same demand per simulated hour as the live run).
    #[arg(long, value_name = "D", value_parser = backfill_days)]
    backfill_days: Option<f64>,
    /// Write into an INVENTORY that already holds events (simulated facts are permanent).
    #[arg(long)]
    allow_existing: bool,
}

fn positive(value: &str) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("{value:?} is not a positive number")),
    }
}

fn backfill_days(value: &str) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 366.0 => Ok(v),
        _ => Err(format!(
            "{value:?} is not a number of days between 0 and 366"
        )),
    }
}

const DAY_MS: f64 = 24.0 * 60.0 * 60.0 * 1000.0;

/// What a run did, as printed at the end (`--json`: one object on the last line).
#[derive(Debug, Default, Serialize)]
struct Summary {
    /// Events written, backfill included.
    events: u64,
    /// Of them, written by the backfill.
    backfilled: u64,
    /// Customers' purchase attempts: each a sale, a lost sale or a failed write.
    attempts: u64,
    sales: u64,
    /// Sales refused for want of stock.
    lost_sales: u64,
    /// Orders placed (on an alert, by the books in the backfill, or at start).
    orders: u64,
    /// Deliveries received (orders arrived, and the first stock of new products).
    received: u64,
    /// Deliveries put from the dock on the shelf (`moved`).
    moves: u64,
    /// Transfers between warehouses (each a `transferred_out` and a `transferred_in`).
    transfers: u64,
    /// Cycle counts (`corrected`).
    counts: u64,
    /// Breakages (`destroyed`).
    destroyed: u64,
    /// Products discontinued (their threshold set to 0).
    discontinued: u64,
    /// Orders placed and not yet arrived when the run ended.
    open_orders: u64,
    /// Writes that failed for another reason (NATS), not retried.
    failed: u64,
    /// The live run: its purchase attempts, how long it ran (wall clock), and how late
    /// against its planned time the latest attempt was handled, and how many were handled
    /// more than a second late (a simulator that keeps up has none).
    live_attempts: u64,
    live_seconds: f64,
    late_max_ms: f64,
    late_over_1s: u64,
    /// The simulated time the run covered, ms since the epoch (backfill included), and
    /// when its live part began.
    from_ms: i64,
    live_from_ms: i64,
    to_ms: i64,
}

/// Simulated time against the clock.
#[derive(Debug, Clone, Copy)]
pub(super) struct SimClock {
    wall0: Instant,
    start_ms: i64,
    speed: f64,
}

impl SimClock {
    pub(super) fn now_ms(&self) -> i64 {
        self.start_ms + (self.wall0.elapsed().as_secs_f64() * 1000.0 * self.speed) as i64
    }

    /// When simulated time reaches `at_ms`.
    fn instant_of(&self, at_ms: i64) -> Instant {
        let wall_ms = ((at_ms - self.start_ms).max(0) as f64 / self.speed).max(0.0);
        self.wall0 + Duration::from_secs_f64(wall_ms / 1000.0)
    }
}

/// What customers and staff are planned to do.
struct Plans {
    demand: Peekable<Demand>,
    chores: Peekable<Chores>,
}

pub(crate) async fn run(ctx: &Ctx, args: SimulateArgs) -> Outcome {
    if args.speed > 1.0 && args.duration_s.is_none() {
        return Err(Failure::invalid(
            "--speed above 1 needs --duration-s: simulated time never passes the clock",
        ));
    }
    let sites = simulation::sites(args.warehouses as usize).map_err(Failure::invalid)?;
    let skus = simulation::skus(args.skus as usize).map_err(Failure::invalid)?;
    let client = ctx.client().await?;
    let js = async_nats::jetstream::new(client.clone());
    let held = stream_state(&js, subjects::INVENTORY_STREAM)
        .await?
        .messages;
    if held > 0 && !args.allow_existing {
        return Err(Failure::invalid(format!(
            "INVENTORY already holds {held} events, and simulated events are as permanent as \
             real ones: simulate on a fresh server, or pass --allow-existing to add to them"
        )));
    }

    let now_ms = SystemClock.now_ms();
    let live_from = match args.duration_s {
        Some(d) => now_ms - (d * 1000.0 * (args.speed - 1.0)) as i64,
        None => now_ms,
    };
    let from_ms = live_from - (args.backfill_days.unwrap_or(0.0) * DAY_MS) as i64;
    let products: Vec<Product> = sites
        .iter()
        .flat_map(|s| skus.iter().map(move |k| (s.warehouse.clone(), k.clone())))
        .collect();
    let warehouses: Vec<WarehouseId> = sites.iter().map(|s| s.warehouse.clone()).collect();
    let mut plans = Plans {
        demand: Demand::new(
            args.seed,
            sites.clone(),
            skus.clone(),
            args.rate / args.speed,
            from_ms,
        )
        .map_err(Failure::invalid)?
        .peekable(),
        chores: Chores::new(args.seed, sites, skus, from_ms)
            .map_err(Failure::invalid)?
            .peekable(),
    };

    let stock: HashMap<String, StockView> = view::snapshot(&js, subjects::STOCK_BUCKET)
        .await
        .map_err(anyhow::Error::new)?
        .into_iter()
        .collect();
    if args.backfill_days.is_some() {
        // The books start empty: history is made up only for warehouses that have none.
        for warehouse in &warehouses {
            let filter = subjects::warehouse_events(warehouse);
            let first = stockwire::direct::after(
                &client,
                subjects::INVENTORY_STREAM,
                &filter,
                0,
                1,
                ctx.connect.request_timeout(),
            )
            .await;
            let has_events = match first {
                Ok(found) => !found.is_empty(),
                Err(stockwire::direct::DirectError::Truncated { .. }) => true,
                Err(e) => return Err(anyhow::Error::new(e).context("reading INVENTORY").into()),
            };
            if has_events {
                return Err(Failure::invalid(format!(
                    "--backfill-days makes up the history of warehouses that have none, and \
                     {warehouse} already has events in INVENTORY: backfill into an empty \
                     INVENTORY (or one whose warehouses differ), or drop --backfill-days to \
                     add live traffic"
                )));
            }
        }
    }
    let thresholds_kv = js
        .get_key_value(subjects::THRESHOLDS_BUCKET)
        .await
        .map_err(|e| anyhow::anyhow!("opening bucket thresholds (run `stockwire setup`?): {e}"))?;
    let thresholds: HashMap<String, Thresholds> = view::snapshot(&js, subjects::THRESHOLDS_BUCKET)
        .await
        .map_err(anyhow::Error::new)?
        .into_iter()
        .collect();
    let executor = Executor::new(
        js.clone(),
        ctx.envelope.clone(),
        ctx.connect.request_timeout(),
    );
    let ledger = if args.backfill_days.is_some() {
        Ledger::Books(Books::default())
    } else {
        Ledger::Live(Box::new(executor.clone()))
    };
    let mut net = Network::new(
        ledger,
        client.clone(),
        ctx.envelope.clone(),
        ctx.connect.request_timeout(),
        thresholds_kv,
        thresholds,
        warehouses,
        Summary {
            from_ms,
            live_from_ms: live_from,
            ..Summary::default()
        },
    )?;
    net.note_discontinued();
    // The live line is for a person at a terminal; a script reads the summary.
    let live_status = std::io::stderr().is_terminal();

    // Alerts decided on the stock of the backfill are about the past: the books saw to it.
    let mut backfilled_through = 0;
    if args.backfill_days.is_some() {
        for product in &products {
            net.open_product(product, from_ms).await;
        }
        let started = Instant::now();
        let mut shown = Instant::now();
        let mut day_ms = from_ms;
        while day_ms < live_from {
            let until = (day_ms + 3_600_000).min(live_from);
            advance(&mut net, &mut plans, until, None).await?;
            day_ms = until;
            if live_status && shown.elapsed() >= Duration::from_secs(1) {
                shown = Instant::now();
                eprint!(
                    "\rbackfill: {} UTC  {} events   ",
                    format_ms(day_ms),
                    net.summary.events
                );
            }
        }
        net.flush(true).await?;
        let Ledger::Books(books) = &net.ledger else {
            return Err(anyhow::anyhow!("the backfill lost its books").into());
        };
        backfilled_through = books.last_seq;
        net.summary.backfilled = books.written;
        if live_status {
            eprintln!();
        }
        tracing::info!(
            events = books.written,
            seconds = started.elapsed().as_secs_f64(),
            "backfill written"
        );
        // Live sales read the view: let it apply the history first.
        if let Err(e) = crate::wait::wait_applied(ctx, backfilled_through, &[]).await {
            tracing::warn!(error = %e.error, "going on live before the stock view has the backfill");
        }
        net.ledger = Ledger::Live(Box::new(executor));
    } else {
        start_from_view(&mut net, &stock, &products, live_from).await?;
    }
    let alerts_from = stream_state(&js, subjects::ALERTS_STREAM)
        .await?
        .last_sequence
        + 1;
    // The alerts are read on a task of their own: a consumer being opened must not be
    // dropped halfway each time a customer comes first.
    let shutdown = stockwire::shutdown::shutdown_token();
    let mut alerts = follow(
        Follower::new(
            &js,
            subjects::ALERTS_STREAM,
            subjects::ALERTS_SUBJECTS,
            alerts_from,
        ),
        shutdown.clone(),
    );

    let clock = SimClock {
        wall0: Instant::now(),
        start_ms: live_from,
        speed: args.speed,
    };
    net.clock = Some(clock);
    let type_header = ctx.envelope.type_header().to_string();
    let ends = args
        .duration_s
        .map(|d| clock.wall0 + Duration::from_secs_f64(d));
    let mut status = tokio::time::interval(Duration::from_secs(1));
    status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let next = plans.next_at().min(net.next_due().unwrap_or(i64::MAX));
        let due = clock.instant_of(next);
        let stop_at = ends.unwrap_or(clock.wall0 + Duration::from_secs(100 * 365 * 86_400));
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep_until(stop_at.into()) => break,
            _ = status.tick() => {
                net.settle_ready();
                if live_status {
                    show_status(&mut net, &clock);
                }
            }
            Some(stored) = alerts.recv() => {
                let headers = stored.headers.as_ref();
                let calls_for_stock = headers
                    .and_then(|h| h.get(type_header.as_str()))
                    .is_some_and(|t| ORDER_ON.contains(&t.as_str()));
                let about_the_past = headers
                    .and_then(|h| h.get(subjects::NATS_MSG_ID))
                    .and_then(|id| Alert::stock_seq_of(id.as_str()))
                    .is_some_and(|seq| seq <= backfilled_through);
                if let (true, false, Some(product)) =
                    (calls_for_stock, about_the_past, product_of_alert(&stored.subject))
                {
                    if products.contains(&product) {
                        net.restock(&product, clock.now_ms()).await;
                    }
                }
            }
            _ = tokio::time::sleep_until(due.into()) => {
                advance(&mut net, &mut plans, clock.now_ms(), Some(stop_at)).await?;
            }
        }
    }
    net.settle_all().await;
    if live_status {
        eprintln!();
    }
    net.summary.to_ms = clock.now_ms().min(SystemClock.now_ms());
    net.summary.live_seconds = (clock.wall0.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
    net.summary.late_max_ms = net.summary.late_max_ms.round();
    net.summary.open_orders = net.open.len() as u64;
    let s = &net.summary;
    if ctx.json {
        output::json_line(s);
    } else {
        output::line(format!(
            "simulated {} warehouses x {} products: {} events{} ({} sales, {} lost for want \
             of stock, {} deliveries, {} transfers, {} counts, {} breakages; {} orders \
             placed, {} still open; {} products discontinued){}",
            args.warehouses,
            args.skus,
            s.events,
            if s.backfilled > 0 {
                format!(", {} of them backfilled", s.backfilled)
            } else {
                String::new()
            },
            s.sales,
            s.lost_sales,
            s.received,
            s.transfers,
            s.counts,
            s.destroyed,
            s.orders,
            s.open_orders,
            s.discontinued,
            if s.failed > 0 {
                format!("; {} writes failed", s.failed)
            } else {
                String::new()
            }
        ));
    }
    Ok(())
}

impl Plans {
    /// When the next customer or chore is planned.
    fn next_at(&mut self) -> i64 {
        let sale = self.demand.peek().map_or(i64::MAX, |a| a.at_ms);
        let chore = self.chores.peek().map_or(i64::MAX, |c| c.at_ms);
        sale.min(chore)
    }
}

/// Does, in time order, everything planned up to `until_ms`: deliveries and put-aways,
/// chores, customers. In the backfill, a product the books find low (or short of days of
/// cover) is restocked as the watchers' alerts would have asked, and the decided events
/// are written a chunk at a time. Live, it returns at `stop_at` however far behind.
async fn advance(
    net: &mut Network,
    plans: &mut Plans,
    until_ms: i64,
    stop_at: Option<Instant>,
) -> Result<(), Failure> {
    loop {
        if stop_at.is_some_and(|t| Instant::now() >= t) {
            return Ok(());
        }
        let due = net.next_due().unwrap_or(i64::MAX);
        let chore = plans.chores.peek().map_or(i64::MAX, |c| c.at_ms);
        let sale = plans.demand.peek().map_or(i64::MAX, |a| a.at_ms);
        let at = due.min(chore).min(sale);
        if at > until_ms {
            return Ok(());
        }
        if due == at {
            if let Some((at, planned)) = net.take_due(at) {
                net.run_due(at, planned).await;
            }
        } else if chore == at {
            if let Some(chore) = plans.chores.next() {
                net.chore(chore).await;
            }
        } else if let Some(attempt) = plans.demand.next() {
            net.sell(attempt).await;
        }
        for product in net.calling_for_stock(at) {
            net.restock(&product, at).await;
        }
        net.flush(false).await?;
    }
}

/// A start without backfill: what the view says now. Products it has never seen get
/// their first stock, deliveries waiting at the dock are put away, and those below their
/// threshold get an order (a restart forgets the orders it had open).
async fn start_from_view(
    net: &mut Network,
    stock: &HashMap<String, StockView>,
    products: &[Product],
    now_ms: i64,
) -> Result<(), Failure> {
    let dock = Location::parse(network::DOCK).map_err(Failure::invalid)?;
    for product in products {
        match stock.get(&subjects::view_key(&product.0, &product.1)) {
            None => net.open_product(product, now_ms).await,
            Some(v) => {
                let waiting = v.locations.at(&dock);
                if waiting > 0 {
                    net.put_away_later(product.clone(), waiting.unsigned_abs(), now_ms);
                } else if v.on_hand < net.low_stock_below_of(product) {
                    net.restock(product, now_ms).await;
                }
            }
        }
    }
    Ok(())
}

/// Runs `follower` on its own task until `shutdown`, handing each message over.
fn follow(
    mut follower: Follower,
    shutdown: tokio_util::sync::CancellationToken,
) -> tokio::sync::mpsc::Receiver<stockwire::read::StoredMessage> {
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(async move {
        loop {
            let stored = tokio::select! {
                _ = shutdown.cancelled() => return,
                stored = follower.next() => stored,
            };
            if tx.send(stored).await.is_err() {
                return;
            }
        }
    });
    rx
}

/// The alerts that make the simulator restock: low stock, and a forecast stockout
/// (announced by velocity-watcher, when it runs).
const ORDER_ON: [&str; 2] = [ALERT_LOW, ALERT_STOCKOUT_FORECAST];

/// The product an alert is about, from its subject.
fn product_of_alert(subject: &str) -> Option<(WarehouseId, Sku)> {
    let (_, w, s) = subjects::split_alert(subject)?;
    Some((WarehouseId::parse(w).ok()?, Sku::parse(s).ok()?))
}

/// The state of stream `name` now (its counts and sequences).
async fn stream_state(
    js: &async_nats::jetstream::Context,
    name: &str,
) -> Result<async_nats::jetstream::stream::State, Failure> {
    let mut stream = js
        .get_stream(name)
        .await
        .map_err(|e| anyhow::anyhow!("finding stream {name} (run `stockwire setup`?): {e}"))?;
    let info = stream
        .info()
        .await
        .map_err(|e| anyhow::anyhow!("reading stream {name}: {e}"))?;
    Ok(info.state.clone())
}

fn format_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_default()
}

/// The status line on stderr: simulated time, events/s since the last line, the counts.
fn show_status(net: &mut Network, clock: &SimClock) {
    let (events, since) = net.shown;
    let elapsed = since.elapsed().as_secs_f64().max(1e-3);
    net.shown = (net.summary.events, Instant::now());
    let s = &net.summary;
    eprint!(
        "\r{} UTC  {:.0} events/s  sales {}  lost {}  stock-outs {}  open orders {}  received {}   ",
        format_ms(clock.now_ms()),
        (s.events - events) as f64 / elapsed,
        s.sales,
        s.lost_sales,
        net.out.len(),
        net.open.len(),
        s.received
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alert_names_its_product_in_its_subject() {
        let (w, s) = (
            WarehouseId::parse("ams1").expect("an id"),
            Sku::parse("p0007").expect("a sku"),
        );
        let low = subjects::low_stock_alert(&w, &s);
        assert_eq!(product_of_alert(&low), Some((w.clone(), s.clone())));
        let stockout = subjects::stockout_alert(&w, &s);
        assert_eq!(product_of_alert(&stockout), Some((w.clone(), s.clone())));
        let event = subjects::event(&w, &s, stockwire::domain::EventKind::Sold);
        assert_eq!(product_of_alert(&event), None);
    }

    #[test]
    fn simulated_time_runs_at_its_speed_and_maps_back_to_the_clock() {
        let clock = SimClock {
            wall0: Instant::now(),
            start_ms: 1_000_000,
            speed: 3600.0,
        };
        // One simulated hour is one wall-clock second later.
        let hour_later = clock.instant_of(1_000_000 + 3_600_000);
        let wall = hour_later.duration_since(clock.wall0).as_secs_f64();
        assert!((wall - 1.0).abs() < 1e-6, "{wall}");
        assert!(clock.now_ms() >= 1_000_000);
    }
}
