//! The edge site's figures (`scripts/bench --sites`): a hub and one site's server, a
//! leaf node of the hub through a relay (`scripts/relay.py`) this figure cuts and
//! restores.
//!
//! - **Catch-up after an outage.** With the link cut, N events are recorded at the site;
//!   the link is restored and the hub's `INVENTORY` catches up through its source. The
//!   ceiling is raw sourcing measured the same way: a bare stream at the site, sourced by
//!   a bare stream at the hub, the same N messages (same subjects' shape, headers, msg ids
//!   and sizes) written while cut. Both rates count from the first message that reaches
//!   the hub to the last (the leaf's reconnect, up to a second, is reported apart).
//! - **Checked sales at the site.** One clerk selling one unit at a time through the
//!   command executor, with stock-projector keeping the site's view current, at the site
//!   and at the hub in the same run: a site sells as fast as the hub does.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::stream::{Config, External, Source, StorageType};
use serde::Serialize;
use stockwire::connect::{connect_with, Startup};
use stockwire::domain::{Command, Event, Location, Quantity, Sku, WarehouseId};
use stockwire::envelope::{EventMeta, Outbound};
use stockwire::execute::{Executor, Outcome};
use stockwire::{sites, subjects};

use crate::command::InProcessProjector;
use crate::failure::Failure;
use crate::{rate, ratio, send_batches, Ctx};

/// What the figure found.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SiteFigures {
    pub(crate) site: String,
    pub(crate) outage_events: usize,
    /// The hub's INVENTORY catching up through its source.
    pub(crate) catch_up_events_per_s: f64,
    /// Raw sourcing of the same messages, measured the same way.
    pub(crate) raw_catch_up_events_per_s: f64,
    pub(crate) catch_up_ratio: f64,
    /// From the restore to the first event at the hub (the leaf reconnecting).
    pub(crate) reconnect_ms: f64,
    pub(crate) raw_reconnect_ms: f64,
    /// Sequential checked sales per second, at the site and at the hub.
    pub(crate) site_checked_sales_per_s: f64,
    pub(crate) hub_checked_sales_per_s: f64,
    pub(crate) site_over_hub: f64,
}

const RAW_SITE: &str = "BENCH_SITE_RAW";
const RAW_HUB: &str = "BENCH_HUB_RAW";

pub(crate) async fn measure(
    ctx: &Ctx,
    hub: &async_nats::Client,
    site_url: &str,
    relay_pid: u32,
    events: usize,
    sales_seconds: u64,
    timeout: Duration,
) -> Result<SiteFigures, Failure> {
    let site_args = stockwire::connect::ConnectArgs {
        nats_url: site_url.to_string(),
        ..ctx.connect.clone()
    };
    let site_client = connect_with(
        &site_args,
        "stockwire-bench",
        Startup::FailFast,
        &ctx.signals,
    )
    .await
    .map_err(|e| anyhow::anyhow!("connecting to the site at {site_url}: {e}"))?;
    let site_js = async_nats::jetstream::new(site_client.clone());
    let hub_js = async_nats::jetstream::new(hub.clone());
    let site = match sites::Home::of(&site_js)
        .await
        .map_err(anyhow::Error::new)?
    {
        sites::Home::Site(site) => site,
        sites::Home::Hub(_) => {
            return Err(Failure::invalid(format!(
                "{site_url} is not a site's server (its JetStream domain is not a warehouse)"
            )))
        }
    };
    let relay = Relay(relay_pid);

    // The ceiling: bare streams, sourced through the same link.
    let _ = site_js.delete_stream(RAW_SITE).await;
    let _ = hub_js.delete_stream(RAW_HUB).await;
    site_js
        .create_stream(Config {
            name: RAW_SITE.into(),
            subjects: vec!["benchraw.>".into()],
            storage: StorageType::File,
            allow_atomic_publish: true,
            ..Default::default()
        })
        .await
        .context("creating the raw stream at the site")?;
    hub_js
        .create_stream(Config {
            name: RAW_HUB.into(),
            storage: StorageType::File,
            sources: Some(vec![Source {
                name: RAW_SITE.into(),
                external: Some(External {
                    api_prefix: subjects::domain_api(site.as_str()),
                    delivery_prefix: None,
                }),
                ..Default::default()
            }]),
            ..Default::default()
        })
        .await
        .context("creating the raw stream at the hub")?;

    let outage = outage_events(ctx, &site, events)?;
    let raw: Vec<Outbound> = outage
        .iter()
        .map(|o| Outbound {
            subject: format!("benchraw.{}", o.subject),
            ..o.clone()
        })
        .collect();
    eprintln!("bench: site {site}: raw sourcing of {events} messages after an outage");
    let (raw_reconnect, raw_rate) = catch_up(&relay, &site_client, raw, timeout, || async {
        stream_messages(&hub_js, RAW_HUB).await
    })
    .await?;
    eprintln!("bench: site {site}: raw sourcing caught up at {raw_rate:.0}/s (reconnect {raw_reconnect:.0} ms)");

    // The hub records nothing else meanwhile: its INVENTORY grows by the site's events.
    let (reconnect, stockwire_rate) = catch_up(&relay, &site_client, outage, timeout, || async {
        stream_messages(&hub_js, subjects::INVENTORY_STREAM).await
    })
    .await?;
    eprintln!("bench: site {site}: the hub's INVENTORY caught up at {stockwire_rate:.0}/s (reconnect {reconnect:.0} ms)");
    let _ = hub_js.delete_stream(RAW_HUB).await;
    let _ = site_js.delete_stream(RAW_SITE).await;

    let site_sales = checked_sales(ctx, &site_client, &site, sales_seconds, timeout).await?;
    let hub_warehouse = WarehouseId::parse(&format!(
        "hub{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ))
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let hub_sales = checked_sales(ctx, hub, &hub_warehouse, sales_seconds, timeout).await?;
    eprintln!("bench: checked sales, one clerk: {site_sales:.0}/s at the site, {hub_sales:.0}/s at the hub");
    let round = |x: f64| (x * 10.0).round() / 10.0;
    Ok(SiteFigures {
        site: site.to_string(),
        outage_events: events,
        catch_up_events_per_s: stockwire_rate.round(),
        raw_catch_up_events_per_s: raw_rate.round(),
        catch_up_ratio: ratio(stockwire_rate, raw_rate),
        reconnect_ms: round(reconnect),
        raw_reconnect_ms: round(raw_reconnect),
        site_checked_sales_per_s: site_sales.round(),
        hub_checked_sales_per_s: hub_sales.round(),
        site_over_hub: ratio(site_sales, hub_sales),
    })
}

/// The relay process in the leaf link.
struct Relay(u32);

impl Relay {
    fn signal(&self, signal: &str) -> Result<(), Failure> {
        let status = std::process::Command::new("kill")
            .args([signal, &self.0.to_string()])
            .status()
            .context("signalling the relay")?;
        if !status.success() {
            return Err(anyhow::anyhow!(
                "kill {signal} {}: {status} (is the relay running?)",
                self.0
            )
            .into());
        }
        Ok(())
    }
    fn cut(&self) -> Result<(), Failure> {
        self.signal("-USR1")
    }
    fn restore(&self) -> Result<(), Failure> {
        self.signal("-USR2")
    }
}

/// Deliveries at the site, spread over 1,000 products, as the site records them.
fn outage_events(ctx: &Ctx, site: &WarehouseId, events: usize) -> Result<Vec<Outbound>, Failure> {
    let location = Location::parse("A1").map_err(|e| anyhow::anyhow!("{e}"))?;
    let one = Quantity::new(1).map_err(|e| anyhow::anyhow!("{e}"))?;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let now = now_ms();
    (0..events)
        .map(|i| {
            let sku = Sku::parse(&format!("p{}", i % 1_000)).map_err(|e| anyhow::anyhow!("{e}"))?;
            let event = Event::Received {
                warehouse: site.clone(),
                sku,
                location: location.clone(),
                quantity: one,
            };
            let meta = EventMeta {
                msg_id: format!("{run}-{i}"),
                timestamp_ms: now,
            };
            Ok(ctx.envelope.encode(&event, &meta))
        })
        .collect()
}

/// Cuts the link, writes `messages` at the site, restores the link, and times the hub
/// until `held` has grown by their number: (ms from the restore to the first one at the
/// hub, messages per second from the first to the last).
async fn catch_up<F, Fut>(
    relay: &Relay,
    site: &async_nats::Client,
    messages: Vec<Outbound>,
    timeout: Duration,
    held: F,
) -> Result<(f64, f64), Failure>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<u64, Failure>>,
{
    let before = held().await?;
    let total = messages.len() as u64;
    relay.cut()?;
    // The hub stops hearing from the site.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let batches: Vec<Vec<Outbound>> = messages
        .chunks(stockwire::batch::MAX_BATCH)
        .map(<[Outbound]>::to_vec)
        .collect();
    let written = send_batches(site, batches, timeout).await;
    relay.restore()?;
    written.map_err(|e| anyhow::anyhow!("writing at the site during the outage: {e}"))?;
    let restored = Instant::now();
    let deadline = restored + Duration::from_secs(600);
    let mut first: Option<(Instant, u64)> = None;
    loop {
        let now = held().await? - before;
        if first.is_none() && now > 0 {
            first = Some((Instant::now(), now));
        }
        if now >= total {
            let done = Instant::now();
            let (at, seen) = first.unwrap_or((restored, 0));
            let reconnect = at.duration_since(restored).as_secs_f64() * 1000.0;
            let caught = (total - seen) as usize;
            return Ok((reconnect, rate(caught, done.duration_since(at))));
        }
        if Instant::now() > deadline {
            return Err(anyhow::anyhow!("the hub holds {now} of {total} after 600 s").into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn stream_messages(
    js: &async_nats::jetstream::Context,
    stream: &str,
) -> Result<u64, Failure> {
    let mut stream = js
        .get_stream(stream)
        .await
        .with_context(|| format!("stream {stream}"))?;
    Ok(stream.info().await.context("stream info")?.state.messages)
}

/// Checked sales of one unit, one after the other, for `seconds`, with stock-projector
/// keeping the view current in this process; sales per second.
async fn checked_sales(
    ctx: &Ctx,
    client: &async_nats::Client,
    warehouse: &WarehouseId,
    seconds: u64,
    timeout: Duration,
) -> Result<f64, Failure> {
    let js = async_nats::jetstream::new(client.clone());
    let location = Location::parse("A1").map_err(|e| anyhow::anyhow!("{e}"))?;
    let sku = Sku::parse("checked-sales").map_err(|e| anyhow::anyhow!("{e}"))?;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let stock = Quantity::new(1_000_000).map_err(|e| anyhow::anyhow!("{e}"))?;
    let one = Quantity::new(1).map_err(|e| anyhow::anyhow!("{e}"))?;
    let delivery = ctx.envelope.encode(
        &Event::Received {
            warehouse: warehouse.clone(),
            sku: sku.clone(),
            location: location.clone(),
            quantity: stock,
        },
        &EventMeta {
            msg_id: format!("{run}-stock"),
            timestamp_ms: now_ms(),
        },
    );
    let last = send_batches(client, vec![vec![delivery]], timeout)
        .await
        .map_err(|e| anyhow::anyhow!("the delivery before the sales: {e}"))?
        .map_or(0, |(_, last)| last);
    let projector = InProcessProjector::start(ctx, client);
    let measured = async {
        projector
            .caught_up(client, last, Duration::from_secs(120), "the delivery")
            .await?;
        let executor = Executor::new(js.clone(), ctx.envelope.clone(), timeout);
        let started = Instant::now();
        let mut sold = 0;
        while started.elapsed() < Duration::from_secs(seconds) {
            let sale = Command::Sell {
                warehouse: warehouse.clone(),
                sku: sku.clone(),
                location: location.clone(),
                quantity: one,
            };
            let meta = EventMeta {
                msg_id: format!("{run}-sale-{sold}"),
                timestamp_ms: now_ms(),
            };
            let done = executor
                .execute(&sale, &meta)
                .await
                .map_err(|e| anyhow::anyhow!("a checked sale at {warehouse}: {e}"))?;
            if done.outcome != Outcome::Stored {
                return Err(anyhow::anyhow!("a checked sale at {warehouse} was not stored").into());
            }
            sold += 1;
        }
        Ok::<_, Failure>(rate(sold, started.elapsed()))
    }
    .await;
    projector.stop().await;
    measured
}

fn now_ms() -> i64 {
    use stockwire::clock::Clock as _;
    stockwire::clock::SystemClock.now_ms()
}
