//! Alert latency: from the PubAck of the event that crosses a threshold to the alert
//! stored in `ALERTS`, under a steady background load.
//!
//! Every service runs as a process on the real buckets (the figure is taken first, on a
//! fresh server), so its peak memory and its stop on SIGTERM are measured too. Background events go out at the offered
//! rate; every 100 ms a probe product is sold below its threshold or refilled above it,
//! and each probe's PubAck time is matched with the time its alert was stored (the
//! server's timestamp; one machine, one clock). The time the stock view stored the probe's
//! new value splits the figure in two: event -> view (stock-projector) and view -> alert
//! (low-stock-watcher).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
use async_nats::jetstream::Context;
use futures::StreamExt;
use serde::Serialize;
use stockwire::clock::{Clock as _, SystemClock};
use stockwire::domain::{Event, Location, Quantity, Sku, WarehouseId};
use stockwire::envelope::EventMeta;
use stockwire::subjects;

use crate::failure::Failure;
use crate::{sample_events, services, Ctx};

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Latency {
    pub(crate) samples: usize,
    pub(crate) offered_events_per_s: u64,
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
    /// PubAck of the event -> the view's new value stored.
    pub(crate) to_view: Stage,
    /// The view's new value stored -> the alert stored.
    pub(crate) view_to_alert: Stage,
}

/// One stage of the alert's path, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Stage {
    pub(crate) p50: f64,
    pub(crate) p99: f64,
}

/// The value at quantile `q` of sorted `samples`, to 0.01 ms.
pub(crate) fn quantile(samples: &[f64], q: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
    (samples[i] * 100.0).round() / 100.0
}

fn stage(mut samples: Vec<f64>) -> Stage {
    samples.sort_by(f64::total_cmp);
    Stage {
        p50: quantile(&samples, 0.50),
        p99: quantile(&samples, 0.99),
    }
}

fn stored_at(msg: &async_nats::jetstream::Message) -> f64 {
    msg.info()
        .map(|i| i.published.unix_timestamp_nanos() as f64 / 1e6)
        .unwrap_or(0.0)
}

fn now_ms_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

pub(crate) async fn measure(
    ctx: &Ctx,
    js: &Context,
    run_id: &str,
    rate: u64,
    duration: Duration,
    stopped: &mut BTreeMap<String, services::Stopped>,
) -> Result<Latency, Failure> {
    let warehouse = format!("bl{}", &run_id[..8]);
    let running = services::start(ctx, &services::ALL)?;
    let result = run(ctx, js, &warehouse, rate, duration).await;
    services::stop_all(running, stopped).await;
    result
}

async fn run(
    ctx: &Ctx,
    js: &Context,
    warehouse: &str,
    rate: u64,
    duration: Duration,
) -> Result<Latency, Failure> {
    let wh = WarehouseId::parse(warehouse)?;
    let probe = Sku::parse("probe")?;
    let shelf = Location::parse("A1")?;
    let publish = |event: &Event| {
        let meta = EventMeta {
            msg_id: uuid::Uuid::new_v4().to_string(),
            timestamp_ms: SystemClock.now_ms(),
        };
        ctx.envelope.encode(event, &meta)
    };
    let acked = |out: stockwire::envelope::Outbound| async move {
        js.publish_with_headers(out.subject, out.headers, out.payload)
            .await
            .context("latency: publish")?
            .await
            .context("latency: PubAck")
    };
    // The probe starts at 20 (threshold 10): each sale of 15 crosses down, each delivery of
    // 15 crosses back up.
    let q15 = Quantity::new(15)?;
    acked(publish(&Event::Received {
        warehouse: wh.clone(),
        sku: probe.clone(),
        location: shelf.clone(),
        quantity: Quantity::new(20)?,
    }))
    .await?;

    let alerts = js
        .get_stream(subjects::ALERTS_STREAM)
        .await
        .context("ALERTS")?;
    let mut stored = alerts
        .create_consumer(OrderedConfig {
            filter_subject: subjects::low_stock_alert(&wh, &probe),
            deliver_policy: DeliverPolicy::New,
            ..Default::default()
        })
        .await
        .context("latency: following ALERTS")?
        .messages()
        .await
        .context("latency: following ALERTS")?;

    // Warm-up: one crossing down and back, unmeasured, so every service is up and live.
    for event in [
        Event::Sold {
            warehouse: wh.clone(),
            sku: probe.clone(),
            location: shelf.clone(),
            quantity: q15,
        },
        Event::Received {
            warehouse: wh.clone(),
            sku: probe.clone(),
            location: shelf.clone(),
            quantity: q15,
        },
    ] {
        acked(publish(&event)).await?;
        match tokio::time::timeout(Duration::from_secs(30), stored.next()).await {
            Ok(Some(Ok(_))) => {}
            _ => {
                return Err(anyhow::anyhow!(
                    "latency: the services did not announce the warm-up crossing within 30 s"
                )
                .into())
            }
        }
    }

    // The probe's values in the stock view, from now on: when each was stored, by the
    // sequence of the event it applied.
    let mut views = js
        .get_stream(subjects::kv_stream(subjects::STOCK_BUCKET))
        .await
        .context("latency: the stock view")?
        .create_consumer(OrderedConfig {
            filter_subject: subjects::kv_subject(
                subjects::STOCK_BUCKET,
                &subjects::view_key(&wh, &probe),
            ),
            deliver_policy: DeliverPolicy::New,
            ..Default::default()
        })
        .await
        .context("latency: following the stock view")?
        .messages()
        .await
        .context("latency: following the stock view")?;
    let mut view_stored: BTreeMap<u64, f64> = BTreeMap::new();
    let mut probe_seqs: VecDeque<u64> = VecDeque::new();
    let mut stages: (Vec<f64>, Vec<f64>) = (Vec::new(), Vec::new());

    let background = sample_events(warehouse, (rate * duration.as_secs()) as usize, 100);
    let mut background = background.iter();
    let mut pending_acks = VecDeque::new();
    let mut probe_acks: VecDeque<f64> = VecDeque::new();
    let mut samples = Vec::new();
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut low = false;
    let mut ticks = 0u64;
    while started.elapsed() < duration {
        tokio::select! {
            _ = tick.tick() => {
                ticks += 1;
                for event in background.by_ref().take((rate / 100) as usize) {
                    let out = publish(event);
                    let ack = js
                        .publish_with_headers(out.subject, out.headers, out.payload)
                        .await
                        .context("latency: background publish")?;
                    pending_acks.push_back(ack);
                }
                while pending_acks.len() > 2000 {
                    if let Some(ack) = pending_acks.pop_front() {
                        ack.await.context("latency: background PubAck")?;
                    }
                }
                if ticks.is_multiple_of(10) {
                    let event = if low {
                        Event::Received { warehouse: wh.clone(), sku: probe.clone(), location: shelf.clone(), quantity: q15 }
                    } else {
                        Event::Sold { warehouse: wh.clone(), sku: probe.clone(), location: shelf.clone(), quantity: q15 }
                    };
                    low = !low;
                    let ack = acked(publish(&event)).await?;
                    probe_acks.push_back(now_ms_f64());
                    probe_seqs.push_back(ack.sequence);
                }
            }
            view = views.next() => {
                let Some(view) = view else { break };
                let view = view.context("latency: reading the stock view")?;
                if let Ok(value) = serde_json::from_slice::<stockwire::domain::StockView>(&view.payload) {
                    view_stored.insert(value.last_seq, stored_at(&view));
                }
            }
            alert = stored.next() => {
                let Some(alert) = alert else { break };
                let alert = alert.context("latency: reading ALERTS")?;
                let at = stored_at(&alert);
                if let (Some(acked_at), Some(seq)) = (probe_acks.pop_front(), probe_seqs.pop_front()) {
                    samples.push((at - acked_at).max(0.0));
                    if let Some(view_at) = view_stored.remove(&seq) {
                        stages.0.push((view_at - acked_at).max(0.0));
                        stages.1.push((at - view_at).max(0.0));
                    }
                }
            }
        }
    }
    // The last probes' alerts.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !probe_acks.is_empty() && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(1), stored.next()).await {
            Ok(Some(Ok(alert))) => {
                if let Some(acked_at) = probe_acks.pop_front() {
                    samples.push((stored_at(&alert) - acked_at).max(0.0));
                }
            }
            _ => break,
        }
    }
    for ack in pending_acks {
        ack.await.context("latency: background PubAck")?;
    }
    let offered = (ticks * (rate / 100)) as f64 / started.elapsed().as_secs_f64();
    if samples.is_empty() {
        return Err(anyhow::anyhow!("no alert arrived for the probe product").into());
    }
    samples.sort_by(f64::total_cmp);
    Ok(Latency {
        samples: samples.len(),
        offered_events_per_s: offered.round() as u64,
        p50: quantile(&samples, 0.50),
        p90: quantile(&samples, 0.90),
        p99: quantile(&samples, 0.99),
        max: quantile(&samples, 1.0),
        to_view: stage(stages.0),
        view_to_alert: stage(stages.1),
    })
}
