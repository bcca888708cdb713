//! `stockwire simulate`: a living warehouse network, through the real write paths.
//!
//! Customers try to buy what [`stockwire::simulation::Demand`] plans (popularity, each
//! warehouse's local day, bursts). Every sale goes through the command executor, checked
//! against the stock, so nothing is ever oversold: a sale refused for want of stock is a
//! lost sale. The simulator follows the `ALERTS` stream, and on a `stock.low` (or a
//! stockout forecast) it orders stock, enough for what customers asked over the last day
//! for twice the lead time, which arrives as a `received` after the warehouse's lead time
//! (simulated hours).
//! On start it stocks the products the view has never seen, and orders for those already
//! below their threshold, so a restart loses no order it meant to place.
//!
//! Time: event times are simulated time, which runs `--speed` times faster than the clock
//! and never passes it: a run of D seconds at speed X starts at now - D x (X - 1) and ends
//! now. Every event it writes has a msg id starting `sim-`.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;
use stockwire::clock::{Clock as _, SystemClock};
use stockwire::domain::{
    Command, Location, Quantity, Sku, StockView, Thresholds, WarehouseId, ALERT_LOW,
    ALERT_STOCKOUT_FORECAST,
};
use stockwire::envelope::EventMeta;
use stockwire::execute::{Executor, Outcome as CommandOutcome};
use stockwire::read::Follower;
use stockwire::simulation::{self, Demand};
use stockwire::{subjects, view};

use crate::failure::{Failure, Outcome};
use crate::{output, Ctx};

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Warehouses of the network (ams1, nyc1, sin1, lon1, ...: each on its own local day).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=64))]
    warehouses: u64,
    /// Products in each warehouse (p0001, p0002, ...).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    skus: u64,
    /// Customers' purchase attempts per wall-clock second, on average over a day
    /// (deliveries come on top).
    #[arg(long, value_name = "EVENTS_PER_S", default_value_t = 5.0, value_parser = positive)]
    rate: f64,
    /// Seed of the planned demand: the same seed, the same customers.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Simulated time runs this many times faster than the clock (above 1 needs
    /// --duration-s: simulated time never passes the clock).
    #[arg(long, default_value_t = 1.0, value_parser = positive)]
    speed: f64,
    /// Stop after this many wall-clock seconds (default: at ctrl-c).
    #[arg(long, value_name = "S", value_parser = positive)]
    duration_s: Option<f64>,
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

/// Units a new product starts with, and an order brings at least.
const ORDER_UNITS: u64 = 40;

/// Units an order brings beyond the demand expected over twice the lead time: about the
/// default low-stock threshold, so a delivery lifts the product clear of it.
const SAFETY_UNITS: f64 = 10.0;

const DAY_MS: f64 = 24.0 * 60.0 * 60.0 * 1000.0;

/// Where the simulated stock is kept.
const LOCATION: &str = "A1";

/// A warehouse's lead time, simulated: 2 to 5 hours, by warehouse.
fn lead_time_ms(warehouse: usize) -> i64 {
    (2 + (warehouse as i64 * 7) % 4) * 60 * 60 * 1000
}

/// What a run did, as printed at the end (`--json`: one object on the last line).
#[derive(Debug, Default, Serialize)]
struct Summary {
    /// Events written: sales and deliveries.
    events: u64,
    /// Customers' purchase attempts: each a sale, a lost sale or a failed write.
    attempts: u64,
    sales: u64,
    /// Sales refused for want of stock.
    lost_sales: u64,
    /// Orders placed (on a low-stock alert, or at start).
    orders: u64,
    /// Deliveries received (orders arrived, and the first stock of new products).
    received: u64,
    /// Orders placed and not yet arrived when the run ended.
    open_orders: u64,
    /// Writes that failed for another reason (NATS), not retried.
    failed: u64,
    /// The simulated time the run covered, ms since the epoch.
    from_ms: i64,
    to_ms: i64,
}

/// Simulated time against the clock.
struct SimClock {
    wall0: Instant,
    start_ms: i64,
    speed: f64,
}

impl SimClock {
    fn now_ms(&self) -> i64 {
        self.start_ms + (self.wall0.elapsed().as_secs_f64() * 1000.0 * self.speed) as i64
    }

    /// When simulated time reaches `at_ms`.
    fn instant_of(&self, at_ms: i64) -> Instant {
        let wall_ms = ((at_ms - self.start_ms).max(0) as f64 / self.speed).max(0.0);
        self.wall0 + Duration::from_secs_f64(wall_ms / 1000.0)
    }
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
    let alerts_from = stream_state(&js, subjects::ALERTS_STREAM)
        .await?
        .last_sequence
        + 1;

    let now_ms = SystemClock.now_ms();
    let start_ms = match args.duration_s {
        Some(d) => now_ms - (d * 1000.0 * (args.speed - 1.0)) as i64,
        None => now_ms,
    };
    let clock = SimClock {
        wall0: Instant::now(),
        start_ms,
        speed: args.speed,
    };
    let index: HashMap<(WarehouseId, Sku), usize> = sites
        .iter()
        .flat_map(|s| skus.iter().map(move |k| (s.warehouse.clone(), k.clone())))
        .enumerate()
        .map(|(i, key)| (key, i))
        .collect();
    let warehouse_of: HashMap<WarehouseId, usize> = sites
        .iter()
        .enumerate()
        .map(|(i, s)| (s.warehouse.clone(), i))
        .collect();
    let demand = Demand::new(
        args.seed,
        sites.clone(),
        skus.clone(),
        args.rate / args.speed,
        start_ms,
    )
    .map_err(Failure::invalid)?;

    let executor = Executor::new(
        js.clone(),
        ctx.envelope.clone(),
        ctx.connect.request_timeout(),
    );
    let location = Location::parse(LOCATION).map_err(Failure::invalid)?;
    let mut sim = Sim {
        executor,
        location,
        summary: Summary {
            from_ms: start_ms,
            ..Summary::default()
        },
        orders: BinaryHeap::new(),
        open: BTreeSet::new(),
        asked: HashMap::new(),
        shown: (0, Instant::now()),
    };

    // What the view says now: products it has never seen get their first stock, and
    // those below their threshold an order (a restart forgets the orders it had open).
    let stock: HashMap<String, StockView> = view::snapshot(&js, subjects::STOCK_BUCKET)
        .await
        .map_err(anyhow::Error::new)?
        .into_iter()
        .collect();
    let thresholds: HashMap<String, Thresholds> = view::snapshot(&js, subjects::THRESHOLDS_BUCKET)
        .await
        .map_err(anyhow::Error::new)?
        .into_iter()
        .collect();
    let default = thresholds.get(subjects::DEFAULT_THRESHOLD_KEY);
    for ((warehouse, sku), _) in sorted(&index) {
        let key = subjects::view_key(warehouse, sku);
        match stock.get(&key) {
            None => sim.receive(warehouse, sku, start_ms, ORDER_UNITS).await,
            Some(v) => {
                let below = Thresholds::low_stock_below(thresholds.get(&key), default);
                if v.on_hand < below {
                    let w = warehouse_of.get(warehouse).copied().unwrap_or(0);
                    sim.order(warehouse, sku, start_ms, lead_time_ms(w));
                }
            }
        }
    }

    let mut alerts = Follower::new(
        &js,
        subjects::ALERTS_STREAM,
        subjects::ALERTS_SUBJECTS,
        alerts_from,
    );
    let type_header = ctx.envelope.type_header().to_string();
    let mut demand = demand.peekable();
    let ends = args
        .duration_s
        .map(|d| clock.wall0 + Duration::from_secs_f64(d));
    let mut status = tokio::time::interval(Duration::from_secs(1));
    status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let shutdown = stockwire::shutdown::shutdown_token();
    // The live line is for a person at a terminal; a script reads the summary.
    let live_status = std::io::stderr().is_terminal();
    loop {
        let next_sale = demand.peek().map_or(i64::MAX, |a| a.at_ms);
        let next_order = sim.orders.peek().map_or(i64::MAX, |Reverse((at, ..))| *at);
        let due = clock.instant_of(next_sale.min(next_order));
        let stop_at = ends.unwrap_or(clock.wall0 + Duration::from_secs(100 * 365 * 86_400));
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep_until(stop_at.into()) => break,
            _ = status.tick() => {
                if live_status {
                    sim.status(&clock);
                }
            }
            stored = alerts.next() => {
                let calls_for_stock = stored.headers.as_ref()
                    .and_then(|h| h.get(type_header.as_str()))
                    .is_some_and(|t| ORDER_ON.contains(&t.as_str()));
                let product = product_of_alert(&stored.subject);
                if let (true, Some(product)) = (calls_for_stock, product) {
                    if index.contains_key(&product) {
                        let w = warehouse_of.get(&product.0).copied().unwrap_or(0);
                        sim.order(&product.0, &product.1, clock.now_ms(), lead_time_ms(w));
                    }
                }
            }
            _ = tokio::time::sleep_until(due.into()) => {
                let now = clock.now_ms();
                while let Some(Reverse((at, w, s, units))) = sim.orders.peek().cloned() {
                    if at > now {
                        break;
                    }
                    sim.orders.pop();
                    sim.open.remove(&(w.clone(), s.clone()));
                    sim.receive(&w, &s, at, units).await;
                }
                while let Some(attempt) = demand.next_if(|a| a.at_ms <= now) {
                    sim.sell(attempt).await;
                }
            }
        }
    }
    if live_status {
        eprintln!();
    }
    sim.summary.to_ms = clock.now_ms().min(SystemClock.now_ms());
    sim.summary.open_orders = sim.open.len() as u64;
    let s = &sim.summary;
    if ctx.json {
        output::json_line(s);
    } else {
        output::line(format!(
            "simulated {} warehouses x {} products: {} events ({} sales, {} lost for want of \
             stock, {} deliveries; {} orders placed, {} still open){}",
            args.warehouses,
            args.skus,
            s.events,
            s.sales,
            s.lost_sales,
            s.received,
            s.orders,
            s.open_orders,
            if s.failed > 0 {
                format!("; {} writes failed", s.failed)
            } else {
                String::new()
            }
        ));
    }
    Ok(())
}

/// The alerts that make the simulator order stock: low stock, and a forecast stockout
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

/// The products in a stable order.
fn sorted(index: &HashMap<(WarehouseId, Sku), usize>) -> Vec<(&(WarehouseId, Sku), usize)> {
    let mut all: Vec<_> = index.iter().map(|(k, i)| (k, *i)).collect();
    all.sort_by_key(|(_, i)| *i);
    all
}

/// The simulator's own books and its writes.
struct Sim {
    executor: Executor,
    location: Location,
    summary: Summary,
    /// Orders on their way: when each arrives, for which product.
    orders: BinaryHeap<Reverse<(i64, WarehouseId, Sku, u64)>>,
    open: BTreeSet<(WarehouseId, Sku)>,
    /// Per product, the units customers asked for over about the last day (a sum that
    /// decays by e every simulated day), and when it was last brought up to date.
    asked: HashMap<(WarehouseId, Sku), (f64, i64)>,
    /// Events written by the last status line, and when.
    shown: (u64, Instant),
}

impl Sim {
    /// Places an order at `now_ms` arriving after `lead_ms`, unless one is on its way
    /// already: enough for what customers asked over the last day, for twice the lead
    /// time, and a margin; at least [`ORDER_UNITS`].
    fn order(&mut self, warehouse: &WarehouseId, sku: &Sku, now_ms: i64, lead_ms: i64) {
        if !self.open.insert((warehouse.clone(), sku.clone())) {
            return;
        }
        let per_day = self.asked_per_day(warehouse, sku, now_ms);
        let units = (per_day * 2.0 * lead_ms as f64 / DAY_MS + SAFETY_UNITS).ceil() as u64;
        self.orders.push(Reverse((
            now_ms + lead_ms,
            warehouse.clone(),
            sku.clone(),
            units.max(ORDER_UNITS),
        )));
        self.summary.orders += 1;
    }

    /// Units customers asked for over about the last simulated day, as of `now_ms`.
    fn asked_per_day(&self, warehouse: &WarehouseId, sku: &Sku, now_ms: i64) -> f64 {
        self.asked
            .get(&(warehouse.clone(), sku.clone()))
            .map_or(0.0, |(sum, at)| {
                sum * (-((now_ms - at).max(0) as f64) / DAY_MS).exp()
            })
    }

    async fn receive(&mut self, warehouse: &WarehouseId, sku: &Sku, at_ms: i64, units: u64) {
        let Ok(quantity) = Quantity::new(units) else {
            return;
        };
        let command = Command::Receive {
            warehouse: warehouse.clone(),
            sku: sku.clone(),
            location: self.location.clone(),
            quantity,
        };
        if self.record(&command, at_ms).await == Some(true) {
            self.summary.received += 1;
        }
    }

    async fn sell(&mut self, attempt: simulation::Attempt) {
        self.summary.attempts += 1;
        let key = (attempt.warehouse.clone(), attempt.sku.clone());
        let asked =
            self.asked_per_day(&key.0, &key.1, attempt.at_ms) + f64::from(attempt.quantity.get());
        self.asked.insert(key, (asked, attempt.at_ms));
        let command = Command::Sell {
            warehouse: attempt.warehouse,
            sku: attempt.sku,
            location: self.location.clone(),
            quantity: attempt.quantity,
        };
        match self.record(&command, attempt.at_ms).await {
            Some(true) => self.summary.sales += 1,
            Some(false) => self.summary.lost_sales += 1,
            None => {}
        }
    }

    /// Records a command at simulated time `at_ms`: `Some(true)` stored, `Some(false)`
    /// refused by a rule (not enough stock), `None` failed otherwise (counted, logged).
    async fn record(&mut self, command: &Command, at_ms: i64) -> Option<bool> {
        let meta = EventMeta {
            msg_id: format!("sim-{}", uuid::Uuid::new_v4()),
            timestamp_ms: at_ms,
        };
        match self.executor.execute(command, &meta).await {
            Ok(executed) => {
                self.summary.events += executed.sequences.len() as u64;
                Some(true)
            }
            Err(e) if e.kind().outcome() == CommandOutcome::Rejected => Some(false),
            Err(e) => {
                self.summary.failed += 1;
                tracing::warn!(error = %e, "a simulated event was not written");
                None
            }
        }
    }

    /// The status line on stderr: simulated time, events/s since the last line, the counts.
    fn status(&mut self, clock: &SimClock) {
        let at = chrono::DateTime::from_timestamp_millis(clock.now_ms())
            .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
            .unwrap_or_default();
        let (events, since) = self.shown;
        let elapsed = since.elapsed().as_secs_f64().max(1e-3);
        self.shown = (self.summary.events, Instant::now());
        let s = &self.summary;
        eprint!(
            "\r{at} UTC  {:.0} events/s  sales {}  lost {}  open orders {}  received {}   ",
            (s.events - events) as f64 / elapsed,
            s.sales,
            s.lost_sales,
            self.open.len(),
            s.received
        );
    }
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
