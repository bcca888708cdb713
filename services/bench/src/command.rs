//! A checked sale against a product's history: the command executor on a product with a
//! short history and on one with a long one, with stock-projector (in this process)
//! keeping the `stock` view current, as it is in production. A sale starts from the
//! product's view value and reads only the events after it, so the two should cost about
//! the same; before, a sale read the product's whole history on every attempt.

use std::time::{Duration, Instant};

use serde::Serialize;
use stock_projector::StockProjection;
use stockwire::domain::{Command, Event, Location, Quantity, Sku, WarehouseId};
use stockwire::envelope::EventMeta;
use stockwire::execute::{Executor, Outcome};
use stockwire::{aggregate, projector, subjects, view};
use tokio_util::sync::CancellationToken;

use crate::failure::Failure;
use crate::latency::quantile;
use crate::{send_batches, Ctx};

/// Events of the short history.
const SHORT: usize = 10;

/// What the figure found.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CheckedSale {
    pub(crate) short_history_events: usize,
    pub(crate) long_history_events: usize,
    pub(crate) sales_each: usize,
    pub(crate) short_p50_ms: f64,
    pub(crate) short_p99_ms: f64,
    pub(crate) long_p50_ms: f64,
    pub(crate) long_p99_ms: f64,
    /// The long history's p50 over the short one's (the target: at most 2).
    pub(crate) long_over_short: f64,
    /// Reading the long history whole, as every attempt of a sale did before it started
    /// from the view (and as a refused sale still does once, to look for its msg id).
    pub(crate) long_full_read_ms: f64,
}

fn id<T>(
    what: &str,
    parse: impl Fn(&str) -> Result<T, stockwire::domain::InvalidField>,
    s: &str,
) -> Result<T, Failure> {
    parse(s).map_err(|e| anyhow::anyhow!("{what} {s}: {e}").into())
}

/// Writes `SHORT` and `long` events of history (deliveries), lets the stock view catch up,
/// then times `sales` (at least 1) checked sales of one unit on each product, taking turns.
pub(crate) async fn measure(
    ctx: &Ctx,
    client: &async_nats::Client,
    run_id: &str,
    long: usize,
    sales: usize,
    timeout: Duration,
) -> Result<CheckedSale, Failure> {
    let sales = sales.max(1);
    let js = async_nats::jetstream::new(client.clone());
    let warehouse = id(
        "warehouse",
        WarehouseId::parse,
        &format!("cmd{}", &run_id[..8]),
    )?;
    let location = id("location", Location::parse, "A1")?;
    let one = Quantity::new(1).map_err(|e| anyhow::anyhow!("{e}"))?;
    // The first delivery brings enough for every sale of the figure.
    let stock = Quantity::new(sales as u64).map_err(|e| anyhow::anyhow!("{e}"))?;
    let products = [
        (id("sku", Sku::parse, "short-history")?, SHORT),
        (id("sku", Sku::parse, "long-history")?, long),
    ];
    let mut batches = Vec::new();
    let mut batch = Vec::with_capacity(stockwire::batch::MAX_BATCH);
    let now = chrono_now_ms();
    for (sku, events) in &products {
        for i in 0..*events {
            let event = Event::Received {
                warehouse: warehouse.clone(),
                sku: sku.clone(),
                location: location.clone(),
                quantity: if i == 0 { stock } else { one },
            };
            let meta = EventMeta {
                msg_id: format!("{run_id}-{sku}-{i}"),
                timestamp_ms: now,
            };
            batch.push(ctx.envelope.encode(&event, &meta));
            if batch.len() == stockwire::batch::MAX_BATCH {
                batches.push(std::mem::take(&mut batch));
            }
        }
    }
    batches.push(batch);
    let last = send_batches(client, batches, timeout)
        .await
        .map_err(|e| anyhow::anyhow!("writing the histories: {e}"))?
        .map_or(0, |(_, last)| last);

    // stock-projector keeps the view current, here in this process.
    let projector = InProcessProjector::start(ctx, client);
    let measured = async {
        projector
            .caught_up(client, last, Duration::from_secs(600), "the histories")
            .await?;
        let executor = Executor::new(js.clone(), ctx.envelope.clone(), timeout);
        let mut took: [Vec<f64>; 2] = [Vec::with_capacity(sales), Vec::with_capacity(sales)];
        for i in 0..sales {
            for (n, (sku, _)) in products.iter().enumerate() {
                let sale = Command::Sell {
                    warehouse: warehouse.clone(),
                    sku: sku.clone(),
                    location: location.clone(),
                    quantity: one,
                };
                let meta = EventMeta {
                    msg_id: format!("{run_id}-sale-{sku}-{i}"),
                    timestamp_ms: chrono_now_ms(),
                };
                let started = Instant::now();
                let done = executor
                    .execute(&sale, &meta)
                    .await
                    .map_err(|e| anyhow::anyhow!("a checked sale of {sku}: {e}"))?;
                took[n].push(started.elapsed().as_secs_f64() * 1000.0);
                if done.outcome != Outcome::Stored {
                    return Err(anyhow::anyhow!("a checked sale of {sku} was not stored").into());
                }
            }
        }
        let started = Instant::now();
        let long_sku = &products[1].0;
        aggregate::load_all(&js, &ctx.envelope, &warehouse, long_sku)
            .await
            .map_err(|e| anyhow::anyhow!("reading the long history: {e}"))?;
        let full_read = started.elapsed().as_secs_f64() * 1000.0;
        Ok::<_, Failure>((took, full_read))
    }
    .await;
    projector.stop().await;
    let ([mut short, mut long_took], full_read) = measured?;
    short.sort_by(f64::total_cmp);
    long_took.sort_by(f64::total_cmp);
    let round = |ms: f64| (ms * 100.0).round() / 100.0;
    let (short_p50, long_p50) = (quantile(&short, 0.5), quantile(&long_took, 0.5));
    Ok(CheckedSale {
        short_history_events: SHORT,
        long_history_events: long,
        sales_each: sales,
        short_p50_ms: round(short_p50),
        short_p99_ms: round(quantile(&short, 0.99)),
        long_p50_ms: round(long_p50),
        long_p99_ms: round(quantile(&long_took, 0.99)),
        long_over_short: if short_p50 > 0.0 {
            round(long_p50 / short_p50)
        } else {
            0.0
        },
        long_full_read_ms: round(full_read),
    })
}

/// stock-projector run in this process, keeping the `stock` view current, as it is in
/// production, until stopped.
pub(crate) struct InProcessProjector {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), stockwire::view::ViewError>>,
}

impl InProcessProjector {
    pub(crate) fn start(ctx: &Ctx, client: &async_nats::Client) -> Self {
        let stop = CancellationToken::new();
        let config = stockwire::projection::Config {
            envelope: ctx.envelope.clone(),
            ..Default::default()
        };
        let task = tokio::spawn(projector::run(
            client.clone(),
            StockProjection::default(),
            config,
            stop.clone(),
        ));
        Self { stop, task }
    }

    /// Waits until the view has applied the log up to `seq` (`what` it holds, for the error).
    pub(crate) async fn caught_up(
        &self,
        client: &async_nats::Client,
        seq: u64,
        within: Duration,
        what: &str,
    ) -> Result<(), Failure> {
        let deadline = Instant::now() + within;
        while view::read_checkpoint(client, subjects::STOCK_BUCKET)
            .await
            .unwrap_or(0)
            < seq
        {
            if Instant::now() > deadline || self.task.is_finished() {
                return Err(Failure::from(anyhow::anyhow!(
                    "the stock view did not catch up with {what}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    pub(crate) async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

fn chrono_now_ms() -> i64 {
    use stockwire::clock::Clock as _;
    stockwire::clock::SystemClock.now_ms()
}
