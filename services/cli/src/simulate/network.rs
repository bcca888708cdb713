//! The simulated business: what happens to stock, decided the same way in the past
//! (the backfill, on the simulator's own books) and in the present (live, each command
//! through the executor, checked against the log).

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use stockwire::domain::{
    decide, evolve, Command, Location, Locations, Quantity, Reason, Sku, Thresholds, TransferId,
    WarehouseId,
};
use stockwire::envelope::{Envelope, EventMeta};
use stockwire::execute::{CommandError, Executed, Executor, Outcome as CommandOutcome};
use stockwire::simulation::{self, Chore, ChoreKind};
use stockwire::{aggregate, subjects};
use tokio::task::JoinSet;

use super::Summary;
use crate::failure::Failure;
use crate::import::{self, Checked};
use crate::threshold;

/// Units a new product starts with.
const OPENING_UNITS: u64 = 40;

/// Units an order brings at least.
const MIN_ORDER: i64 = 20;

/// Units an order brings beyond the demand it is sized for: about the default low-stock
/// threshold, so a delivery lifts even a slow product clear of it.
const SAFETY_UNITS: f64 = 10.0;

/// A transfer between warehouses moves at least this many units, or none.
const MIN_TRANSFER: i64 = 10;

const HOUR_MS: i64 = 60 * 60 * 1000;
const DAY_MS: f64 = 24.0 * HOUR_MS as f64;

/// How long a delivery waits at the dock before it is put on the shelf.
const PUT_AWAY_MS: i64 = HOUR_MS / 2;

/// Live sales in flight at once (never two for one product): a network has many tills.
const TILLS: usize = 32;

/// Events the backfill decides before writing them out.
const BACKFILL_CHUNK: usize = 100_000;

/// The shelf products are sold from, and the dock deliveries arrive at.
pub(super) const SHELF: &str = "A1";
pub(super) const DOCK: &str = "DOCK";

/// A warehouse's lead time, simulated: 2 to 5 hours, by warehouse.
pub(super) fn lead_time_ms(warehouse: usize) -> i64 {
    (2 + (warehouse as i64 * 7) % 4) * HOUR_MS
}

pub(super) type Product = (WarehouseId, Sku);

/// Something planned for a later simulated time.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Due {
    /// An order arrives at the dock.
    Delivery { product: Product, units: u64 },
    /// A delivery goes from the dock to the shelf.
    PutAway { product: Product, units: u64 },
}

/// Where the simulator's writes go.
pub(super) enum Ledger {
    /// The past: decided on the simulator's own books, written in atomic batches through
    /// the import path.
    Books(Books),
    /// The present: every command through the executor, checked against the log.
    Live(Box<Executor>),
}

/// The backfill's own books: every product's locations, and what is decided but not
/// yet written.
#[derive(Default)]
pub(super) struct Books {
    stock: HashMap<Product, Locations>,
    pending: Vec<Checked>,
    /// Products whose stock changed since they were last looked at.
    touched: Vec<Product>,
    /// Per product, what the watchers would have said last: low, short of cover.
    said: HashMap<Product, (bool, bool)>,
    /// Events written so far, and the sequence of the last.
    pub(super) written: u64,
    pub(super) last_seq: u64,
}

/// A live sale as its till ends it: the product, and what the executor said.
type Sale = (Product, Result<Executed, CommandError>);

/// What a write came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Written {
    Stored,
    /// Refused by a rule: not enough stock where it was to come from.
    Refused,
    /// Failed otherwise (NATS); counted and logged, not retried.
    Failed,
}

/// The network's state as the simulator knows it, and its writes.
pub(super) struct Network {
    pub(super) ledger: Ledger,
    js: async_nats::jetstream::Context,
    client: async_nats::Client,
    envelope: Envelope,
    timeout: Duration,
    thresholds_kv: kv::Store,
    shelf: Location,
    dock: Location,
    pub(super) summary: Summary,
    /// What is planned, by simulated time (the counter keeps equal times in order).
    due: BinaryHeap<Reverse<(i64, u64, Due)>>,
    planned: u64,
    /// Products with an order on its way.
    pub(super) open: BTreeSet<Product>,
    discontinued: HashSet<Product>,
    /// Products whose last customer left empty-handed: out of stock, as last seen.
    pub(super) out: HashSet<Product>,
    /// Per product, the units customers asked for over about the last day (a sum that
    /// decays by e every simulated day), and when it was last brought up to date.
    asked: HashMap<Product, (f64, i64)>,
    /// Per product, when units were last transferred to it.
    transferred: HashMap<Product, i64>,
    thresholds: HashMap<String, Thresholds>,
    /// The warehouses, in order (their index gives the lead time).
    warehouses: Vec<WarehouseId>,
    /// Events written by the last status line, and when.
    pub(super) shown: (u64, Instant),
    /// Live sales being recorded, each on its own task, and their products.
    tills: JoinSet<Sale>,
    busy: HashMap<tokio::task::Id, Product>,
    /// The live run's clock, once live: how late each customer is served.
    pub(super) clock: Option<super::SimClock>,
}

impl Network {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        ledger: Ledger,
        client: async_nats::Client,
        envelope: Envelope,
        timeout: Duration,
        thresholds_kv: kv::Store,
        thresholds: HashMap<String, Thresholds>,
        warehouses: Vec<WarehouseId>,
        summary: Summary,
    ) -> Result<Self, Failure> {
        Ok(Self {
            ledger,
            js: async_nats::jetstream::new(client.clone()),
            client,
            envelope,
            timeout,
            thresholds_kv,
            shelf: Location::parse(SHELF).map_err(Failure::invalid)?,
            dock: Location::parse(DOCK).map_err(Failure::invalid)?,
            summary,
            due: BinaryHeap::new(),
            planned: 0,
            open: BTreeSet::new(),
            discontinued: HashSet::new(),
            out: HashSet::new(),
            asked: HashMap::new(),
            transferred: HashMap::new(),
            thresholds,
            warehouses,
            shown: (0, Instant::now()),
            tills: JoinSet::new(),
            busy: HashMap::new(),
            clock: None,
        })
    }

    /// When the next planned thing is due.
    pub(super) fn next_due(&self) -> Option<i64> {
        self.due.peek().map(|Reverse((at, ..))| *at)
    }

    /// Takes the next planned thing if it is due by `now_ms`.
    pub(super) fn take_due(&mut self, now_ms: i64) -> Option<(i64, Due)> {
        match self.due.peek() {
            Some(Reverse((at, ..))) if *at <= now_ms => {
                self.due.pop().map(|Reverse((at, _, due))| (at, due))
            }
            _ => None,
        }
    }

    fn plan(&mut self, at_ms: i64, due: Due) {
        self.planned += 1;
        self.due.push(Reverse((at_ms, self.planned, due)));
    }

    fn lead_ms(&self, warehouse: &WarehouseId) -> i64 {
        let w = self.warehouses.iter().position(|x| x == warehouse);
        lead_time_ms(w.unwrap_or(0))
    }

    pub(super) fn low_stock_below_of(&self, product: &Product) -> i64 {
        let key = subjects::view_key(&product.0, &product.1);
        Thresholds::low_stock_below(
            self.thresholds.get(&key),
            self.thresholds.get(subjects::DEFAULT_THRESHOLD_KEY),
        )
    }

    fn stockout_days(&self, product: &Product) -> f64 {
        let key = subjects::view_key(&product.0, &product.1);
        Thresholds::stockout_days(
            self.thresholds.get(&key),
            self.thresholds.get(subjects::DEFAULT_THRESHOLD_KEY),
        )
    }

    /// A product whose own threshold is "low below 0" is one the warehouse no longer
    /// replenishes: that is how the simulator records a discontinuation.
    pub(super) fn note_discontinued(&mut self) {
        for (key, t) in &self.thresholds {
            if t.low_stock_below == Some(0) {
                if let Some((w, s)) = key.split_once('.') {
                    if let (Ok(w), Ok(s)) = (WarehouseId::parse(w), Sku::parse(s)) {
                        self.discontinued.insert((w, s));
                    }
                }
            }
        }
    }

    /// Does the planned thing `due` at simulated time `at_ms`.
    pub(super) async fn run_due(&mut self, at_ms: i64, due: Due) {
        match due {
            Due::Delivery { product, units } => {
                self.open.remove(&product);
                let dock = self.dock.clone();
                if self.receive(&product, &dock, at_ms, units).await {
                    self.plan(at_ms + PUT_AWAY_MS, Due::PutAway { product, units });
                }
            }
            Due::PutAway { product, units } => {
                let Ok(quantity) = Quantity::new(units) else {
                    return;
                };
                let command = Command::Move {
                    warehouse: product.0.clone(),
                    sku: product.1.clone(),
                    from: self.dock.clone(),
                    to: self.shelf.clone(),
                    quantity,
                };
                if self.record(&command, at_ms).await == Written::Stored {
                    self.summary.moves += 1;
                }
            }
        }
    }

    /// Stock arrives: the first stock of a product (straight to the shelf) or an order
    /// (at the dock). Returns whether it was recorded.
    pub(super) async fn receive(
        &mut self,
        product: &Product,
        location: &Location,
        at_ms: i64,
        units: u64,
    ) -> bool {
        let Ok(quantity) = Quantity::new(units) else {
            return false;
        };
        let command = Command::Receive {
            warehouse: product.0.clone(),
            sku: product.1.clone(),
            location: location.clone(),
            quantity,
        };
        let stored = self.record(&command, at_ms).await == Written::Stored;
        if stored {
            self.summary.received += 1;
            self.out.remove(product);
        }
        stored
    }

    /// The first stock of a product new to the network, on the shelf.
    pub(super) async fn open_product(&mut self, product: &Product, at_ms: i64) {
        let shelf = self.shelf.clone();
        self.receive(product, &shelf, at_ms, OPENING_UNITS).await;
    }

    /// A delivery waiting at the dock (found at start) is put away now.
    pub(super) fn put_away_later(&mut self, product: Product, units: u64, at_ms: i64) {
        self.plan(at_ms, Due::PutAway { product, units });
    }

    /// A customer tries to buy. Live, the sale is recorded on a till of its own, up to
    /// [`TILLS`] at once and one per product, so that a product's sales keep their order.
    pub(super) async fn sell(&mut self, attempt: simulation::Attempt) {
        self.summary.attempts += 1;
        let product = (attempt.warehouse.clone(), attempt.sku.clone());
        let asked = self.asked_per_day(&product, attempt.at_ms) + f64::from(attempt.quantity.get());
        self.asked.insert(product.clone(), (asked, attempt.at_ms));
        let command = Command::Sell {
            warehouse: attempt.warehouse,
            sku: attempt.sku,
            location: self.shelf.clone(),
            quantity: attempt.quantity,
        };
        if let Ledger::Live(executor) = &self.ledger {
            let executor = Executor::clone(executor);
            while self.busy.values().any(|p| *p == product) || self.tills.len() >= TILLS {
                self.settle_one().await;
            }
            if let Some(clock) = self.clock {
                let late_ms = (clock.now_ms() - attempt.at_ms).max(0) as f64 / clock.speed;
                let s = &mut self.summary;
                s.live_attempts += 1;
                s.late_max_ms = s.late_max_ms.max(late_ms);
                s.late_over_1s += u64::from(late_ms > 1000.0);
            }
            let meta = meta(attempt.at_ms);
            let owner = product.clone();
            let till = self.tills.spawn(async move {
                let result = executor.execute(&command, &meta).await;
                (product, result)
            });
            self.busy.insert(till.id(), owner);
            return;
        }
        let written = self.record(&command, attempt.at_ms).await;
        self.sold(product, written);
    }

    fn sold(&mut self, product: Product, written: Written) {
        match written {
            Written::Stored => {
                self.summary.sales += 1;
                self.out.remove(&product);
            }
            Written::Refused => {
                self.summary.lost_sales += 1;
                self.out.insert(product);
            }
            Written::Failed => {}
        }
    }

    /// Waits for one live sale to be recorded, and counts it.
    async fn settle_one(&mut self) {
        if let Some(joined) = self.tills.join_next_with_id().await {
            self.settled(joined);
        } else {
            self.busy.clear();
        }
    }

    /// Counts the live sales already recorded, without waiting.
    pub(super) fn settle_ready(&mut self) {
        while let Some(joined) = self.tills.try_join_next_with_id() {
            self.settled(joined);
        }
    }

    fn settled(&mut self, joined: Result<(tokio::task::Id, Sale), tokio::task::JoinError>) {
        match joined {
            Ok((id, (product, result))) => {
                self.busy.remove(&id);
                let written = self.written(result);
                self.sold(product, written);
            }
            Err(e) => {
                self.busy.remove(&e.id());
                self.summary.failed += 1;
                tracing::warn!(error = %e, "a simulated sale's task failed");
            }
        }
    }

    /// Waits for every live sale in flight: before anything else is written (a delivery,
    /// a chore, a restock reads and writes products the tills may be selling), and at
    /// the end.
    pub(super) async fn settle_all(&mut self) {
        while !self.tills.is_empty() {
            self.settle_one().await;
        }
        self.busy.clear();
    }

    /// The staff's chores: a cycle count, a breakage, a product discontinued.
    pub(super) async fn chore(&mut self, chore: Chore) {
        // A count reads the shelf: the sales before it must be in the log.
        self.settle_all().await;
        let product = (chore.warehouse.clone(), chore.sku.clone());
        match chore.kind {
            ChoreKind::Count { drift } => {
                let Some(shelf) = self.stock_at(&product, &self.shelf.clone()).await else {
                    return;
                };
                let command = Command::Correct {
                    warehouse: chore.warehouse,
                    sku: chore.sku,
                    location: self.shelf.clone(),
                    quantity: u32::try_from((shelf + drift).max(0)).unwrap_or(u32::MAX),
                };
                if self.record(&command, chore.at_ms).await == Written::Stored {
                    self.summary.counts += 1;
                }
            }
            ChoreKind::Breakage { quantity, reason } => {
                let Ok(reason) = Reason::parse(reason) else {
                    return;
                };
                let command = Command::Destroy {
                    warehouse: chore.warehouse,
                    sku: chore.sku,
                    location: self.shelf.clone(),
                    quantity,
                    reason,
                };
                // Nothing on the shelf to break: nothing happened.
                if self.record(&command, chore.at_ms).await == Written::Stored {
                    self.summary.destroyed += 1;
                }
            }
            ChoreKind::Discontinue => {
                if self.discontinued.contains(&product) {
                    return;
                }
                let key = subjects::view_key(&product.0, &product.1);
                let change = Thresholds {
                    low_stock_below: Some(0),
                    stockout_days: None,
                };
                match threshold::merge(&self.thresholds_kv, &key, change).await {
                    Ok(value) => {
                        self.thresholds.insert(key, value);
                        self.discontinued.insert(product);
                        self.summary.discontinued += 1;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e.error, "a product could not be discontinued")
                    }
                }
            }
        }
    }

    /// Units of `product` at `location` now: from the books, or the log (`None`: it
    /// cannot be read now).
    async fn stock_at(&mut self, product: &Product, location: &Location) -> Option<i64> {
        Some(self.stock_of(product).await?.at(location))
    }

    /// The product's locations now: from the books, or the log (`None`: it cannot be
    /// read now).
    async fn stock_of(&mut self, product: &Product) -> Option<Locations> {
        match &self.ledger {
            Ledger::Books(books) => Some(books.stock.get(product).cloned().unwrap_or_default()),
            Ledger::Live(_) => {
                match aggregate::load(&self.js, &self.envelope, &product.0, &product.1).await {
                    Ok(a) => Some(a.locations),
                    Err(e) => {
                        tracing::warn!(error = %e, "a product's stock could not be read");
                        None
                    }
                }
            }
        }
    }

    /// The product is low, or forecast to run out: unless it is discontinued or an order
    /// is on its way, bring it up to what it needs for the lead time and a day beyond its
    /// stockout threshold (at least [`MIN_ORDER`] units): from the warehouse that has the
    /// most to spare, or else by an order.
    pub(super) async fn restock(&mut self, product: &Product, now_ms: i64) {
        self.settle_all().await;
        if self.discontinued.contains(product) || self.open.contains(product) {
            return;
        }
        let lead_ms = self.lead_ms(&product.0);
        let per_day = self.asked_per_day(product, now_ms);
        // Up to enough for the lead time and a day beyond the stockout threshold: the
        // delivery clears the forecast, and the next one is asked for a day later, days
        // before the shelf is bare.
        let days = lead_ms as f64 / DAY_MS + self.stockout_days(product) + 1.0;
        let target = (per_day * days + SAFETY_UNITS).ceil() as i64;
        let Some(held) = self.stock_of(product).await.map(|l| l.on_hand()) else {
            return;
        };
        let wanted = (target - held.max(0)).max(MIN_ORDER).unsigned_abs();
        // A transfer that brings half of it or more will do until the next alert.
        if self.transfer_in(product, wanted, now_ms).await * 2 >= wanted {
            return;
        }
        self.open.insert(product.clone());
        self.plan(
            now_ms + lead_ms,
            Due::Delivery {
                product: product.clone(),
                units: wanted,
            },
        );
        self.summary.orders += 1;
    }

    /// Moves up to `wanted` units of the product from the warehouse with the most to
    /// spare: half of what it holds beyond four times its threshold and a day more than
    /// its stockout threshold of what its customers ask for, if that is at least
    /// [`MIN_TRANSFER`]. Returns the units moved.
    async fn transfer_in(&mut self, product: &Product, wanted: u64, now_ms: i64) -> u64 {
        // One transfer per product per lead time: a second would only chase the first.
        let lead_ms = self.lead_ms(&product.0);
        if self
            .transferred
            .get(product)
            .is_some_and(|at| now_ms - at < lead_ms)
        {
            return 0;
        }
        let shelf = self.shelf.clone();
        let others: Vec<WarehouseId> = self
            .warehouses
            .iter()
            .filter(|w| **w != product.0)
            .cloned()
            .collect();
        let mut best: Option<(i64, WarehouseId)> = None;
        for w in others {
            let from = (w.clone(), product.1.clone());
            if self.discontinued.contains(&from) {
                continue;
            }
            let Some(units) = self.stock_at(&from, &shelf).await else {
                continue;
            };
            let cover_days = self.stockout_days(&from) + 1.0;
            let keep = (4 * self.low_stock_below_of(&from))
                .max((cover_days * self.asked_per_day(&from, now_ms)).ceil() as i64);
            let spare = (units - keep) / 2;
            if spare >= MIN_TRANSFER && best.as_ref().is_none_or(|(s, _)| spare > *s) {
                best = Some((spare, w));
            }
        }
        let Some((spare, from)) = best else {
            return 0;
        };
        self.transferred.insert(product.clone(), now_ms);
        let units = spare.min(i64::try_from(wanted).unwrap_or(i64::MAX));
        let (Ok(quantity), Ok(transfer_id)) = (
            Quantity::new(units.unsigned_abs()),
            TransferId::parse(&format!("sim-{}", uuid::Uuid::new_v4().simple())),
        ) else {
            return 0;
        };
        let command = Command::Transfer {
            sku: product.1.clone(),
            from_warehouse: from,
            from: shelf.clone(),
            to_warehouse: product.0.clone(),
            to: shelf,
            quantity,
            transfer_id,
        };
        if self.record(&command, now_ms).await != Written::Stored {
            return 0;
        }
        self.summary.transfers += 1;
        self.out.remove(product);
        units.unsigned_abs()
    }

    /// Units customers asked for over about the last simulated day, as of `now_ms`.
    fn asked_per_day(&self, product: &Product, now_ms: i64) -> f64 {
        self.asked.get(product).map_or(0.0, |(sum, at)| {
            sum * (-((now_ms - at).max(0) as f64) / DAY_MS).exp()
        })
    }

    /// Records `command` at simulated time `at_ms`.
    async fn record(&mut self, command: &Command, at_ms: i64) -> Written {
        let meta = meta(at_ms);
        if let Ledger::Live(_) = &self.ledger {
            self.settle_all().await;
        }
        match &mut self.ledger {
            Ledger::Live(executor) => {
                let result = executor.execute(command, &meta).await;
                self.written(result)
            }
            Ledger::Books(books) => {
                let product = command.aggregate();
                let product = (product.0.clone(), product.1.clone());
                let state = books.stock.get(&product).cloned().unwrap_or_default();
                let Ok(events) = decide(command, &state) else {
                    return Written::Refused;
                };
                for (event, msg_id) in events.into_iter().zip(command.msg_ids(&meta.msg_id)) {
                    let key = (event.warehouse().clone(), event.sku().clone());
                    let now = books.stock.remove(&key).unwrap_or_default();
                    books.stock.insert(key.clone(), evolve(now, &event));
                    books.touched.push(key);
                    let meta = EventMeta {
                        msg_id,
                        timestamp_ms: at_ms,
                    };
                    books.pending.push((event, meta));
                    self.summary.events += 1;
                }
                Written::Stored
            }
        }
    }

    /// What an execution came to, counted.
    fn written(&mut self, result: Result<Executed, CommandError>) -> Written {
        match result {
            Ok(executed) => {
                self.summary.events += executed.sequences.len() as u64;
                Written::Stored
            }
            Err(e) if e.kind().outcome() == CommandOutcome::Rejected => Written::Refused,
            Err(e) => {
                self.summary.failed += 1;
                tracing::warn!(error = %e, "a simulated event was not written");
                Written::Failed
            }
        }
    }

    /// Backfill only: the products whose stock changed since the last call, each once,
    /// that an alert would now call for stock for. As the watchers do, a product is
    /// announced low when it falls below its threshold (again only after it recovered),
    /// and forecast to run out when its days of cover fall short (again only after they
    /// recovered).
    pub(super) fn calling_for_stock(&mut self, now_ms: i64) -> Vec<Product> {
        let Ledger::Books(books) = &mut self.ledger else {
            return Vec::new();
        };
        let mut touched = std::mem::take(&mut books.touched);
        touched.sort();
        touched.dedup();
        let now: Vec<(Product, i64, (bool, bool))> = touched
            .into_iter()
            .map(|p| {
                let units = books.stock.get(&p).map_or(0, Locations::on_hand);
                let said = books.said.get(&p).copied().unwrap_or_default();
                (p, units, said)
            })
            .collect();
        let mut calling = Vec::new();
        let mut saying = Vec::new();
        for (product, units, said) in now {
            let per_day = self.asked_per_day(&product, now_ms);
            let low = units < self.low_stock_below_of(&product);
            let short = per_day > 0.0 && (units as f64 / per_day) < self.stockout_days(&product);
            if (low && !said.0) || (short && !said.1) {
                calling.push(product.clone());
            }
            saying.push((product, (low, short)));
        }
        if let Ledger::Books(books) = &mut self.ledger {
            books.said.extend(saying);
        }
        calling
    }

    /// Backfill only: writes what the books decided once enough of it is waiting (or
    /// all of it, with `all`).
    pub(super) async fn flush(&mut self, all: bool) -> Result<(), Failure> {
        let Ledger::Books(books) = &mut self.ledger else {
            return Ok(());
        };
        if books.pending.is_empty() || (!all && books.pending.len() < BACKFILL_CHUNK) {
            return Ok(());
        }
        let events = std::mem::take(&mut books.pending);
        let last = import::write_events(
            &self.client,
            &self.js,
            &self.envelope,
            self.timeout,
            &events,
        )
        .await?;
        books.written += events.len() as u64;
        if let Some(last) = last {
            books.last_seq = last;
        }
        Ok(())
    }
}

/// A simulated event's id and time.
fn meta(at_ms: i64) -> EventMeta {
    EventMeta {
        msg_id: format!("sim-{}", uuid::Uuid::new_v4()),
        timestamp_ms: at_ms,
    }
}
