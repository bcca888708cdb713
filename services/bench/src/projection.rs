//! Projection figures: how fast events become view values.
//!
//! The same events (in a warehouse of their own) are applied three ways, each into a
//! scratch bucket set up like `stock` and removed afterwards:
//! - the ceiling: a plain loop that reads them in order and writes, per batch of up to
//!   20,000 (the projector's size), one value per touched key (the last payload, no
//!   decoding, no checks) in atomic batches of 999, three in flight;
//! - stock-projector's loop (`stockwire::projector::run` with the stock projection): decode,
//!   fold per key, commit the keys and the checkpoint in chained atomic batches;
//! - a sequential get-put-ack loop, as a first projector is often written: a durable
//!   consumer, and per event get -> put -> ack, one at a time (measured on the first
//!   events only: it is slow).
//!
//! The ceiling and the projector take turns for the run's rounds; each counts its median.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::Context;
use futures::StreamExt;
use stock_projector::StockProjection;
use stockwire::batch::MAX_BATCH;
use stockwire::domain::{StockView, WarehouseId};
use stockwire::envelope::{Envelope, Outbound};
use stockwire::projector;
use stockwire::provision::kv_config;
use stockwire::{subjects, view};
use tokio_util::sync::CancellationToken;

use crate::failure::Failure;
use crate::{encode_all, median, rate, sample_events, send_batches, Ctx};

pub(crate) const CEILING_BUCKET: &str = "bench_ceiling";
const PROJECTOR_BUCKET: &str = "bench_stock";
const GET_PUT_ACK_BUCKET: &str = "bench_get_put_ack";

/// Events folded into one write, at most (as stock-projector's default).
const BATCH: usize = stockwire::projection::DEFAULT_MAX_BATCH;

/// Events the sequential get-put-ack loop is timed on, at most.
const GET_PUT_ACK_EVENTS: usize = 3000;

/// Events per second for one workload: the ceiling and the projector take turns for the
/// run's rounds, and each counts its median round.
#[derive(Debug, Clone)]
pub(crate) struct Figures {
    pub(crate) ceiling: f64,
    pub(crate) projector: f64,
    /// The sequential get-put-ack loop.
    pub(crate) get_put_ack: f64,
    /// Every round, in the order run: (ceiling, projector).
    pub(crate) rounds: Vec<(f64, f64)>,
}

pub(crate) async fn measure(
    ctx: &Ctx,
    js: &Context,
    events: usize,
    products: usize,
    run_id: &str,
    rounds: u64,
    timeout: Duration,
) -> Result<Figures, Failure> {
    let client = &js.client();
    let warehouse = format!("bp{}-{}", products, &run_id[..8]);
    let sample = sample_events(&warehouse, events, products);
    let messages = encode_all(ctx, &sample, &format!("bench-{warehouse}"));
    let (first, last) = publish_all(client, &messages, timeout).await?;
    let filter = subjects::warehouse_events(&WarehouseId::parse(&warehouse)?);

    let result = async {
        let mut all = Vec::new();
        for round in 1..=rounds {
            let ceiling = rate(
                events,
                ceiling(client, js, CEILING_BUCKET, &filter, first, events, timeout).await?,
            );
            eprintln!(
                "bench: {products} products: round {round}: ceiling loop  {ceiling:>10.0} events/s"
            );
            let projector = rate(events, projector(client, js, ctx, &filter, last).await?);
            eprintln!(
                "bench: {products} products: round {round}: stock-projector {projector:>8.0} events/s"
            );
            all.push((ceiling.round(), projector.round()));
        }
        let n = events.min(GET_PUT_ACK_EVENTS);
        let get_put_ack = rate(n, get_put_ack_loop(js, &ctx.envelope, &filter, n).await?);
        eprintln!(
            "bench: {products} products: sequential get-put-ack loop {get_put_ack:>7.0} events/s"
        );
        Ok::<_, Failure>(Figures {
            ceiling: median(all.iter().map(|r| r.0)),
            projector: median(all.iter().map(|r| r.1)),
            get_put_ack,
            rounds: all,
        })
    }
    .await;
    for bucket in [CEILING_BUCKET, PROJECTOR_BUCKET, GET_PUT_ACK_BUCKET] {
        let _ = js.delete_stream(subjects::kv_stream(bucket)).await;
    }
    result
}

/// Publishes the events (three atomic batches in flight); returns their first and last sequence.
async fn publish_all(
    client: &async_nats::Client,
    messages: &[Outbound],
    timeout: Duration,
) -> Result<(u64, u64), Failure> {
    let batches = messages.chunks(MAX_BATCH).map(<[_]>::to_vec);
    let stored = send_batches(client, batches, timeout)
        .await
        .context("publishing bench events")?;
    Ok(stored.unwrap_or((1, 0)))
}

/// A fresh bucket for one figure, with as many replicas as INVENTORY (a view on a
/// cluster is replicated like the log).
pub(crate) async fn scratch_bucket(
    js: &Context,
    bucket: &str,
) -> Result<async_nats::jetstream::kv::Store, Failure> {
    let replicas = js
        .get_stream(subjects::INVENTORY_STREAM)
        .await
        .context("INVENTORY")?
        .info()
        .await
        .context("reading INVENTORY")?
        .config
        .num_replicas;
    let _ = js.delete_stream(subjects::kv_stream(bucket)).await;
    let config = async_nats::jetstream::stream::Config {
        num_replicas: replicas.max(1),
        ..kv_config(bucket, "stockwire bench scratch view", true)
    };
    js.create_stream(config)
        .await
        .with_context(|| format!("creating scratch bucket {bucket}"))?;
    Ok(js
        .get_key_value(bucket)
        .await
        .with_context(|| format!("opening scratch bucket {bucket}"))?)
}

/// The plain loop: ordered read (in a task of its own, so reading overlaps writing, as
/// the projector does), last payload per key, one atomic batch per 999 keys, three in flight.
/// Into a fresh scratch bucket, or into `bucket` as it is (the catalogue's copy).
pub(crate) async fn ceiling(
    client: &async_nats::Client,
    js: &Context,
    bucket: &'static str,
    filter: &str,
    first: u64,
    events: usize,
    timeout: Duration,
) -> Result<Duration, Failure> {
    if bucket == CEILING_BUCKET {
        scratch_bucket(js, CEILING_BUCKET).await?;
    }
    let stream = js
        .get_stream(subjects::INVENTORY_STREAM)
        .await
        .context("INVENTORY")?;
    let started = Instant::now();
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: filter.to_string(),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: first,
            },
            ..Default::default()
        })
        .await
        .context("ceiling loop: consumer")?;
    let mut messages = consumer
        .messages()
        .await
        .context("ceiling loop: messages")?;
    // The reader also names each event's key (its subject in the bucket), so that the
    // loop below only folds and writes, as the projector's reader decodes ahead of it.
    let (tx, mut rx) = tokio::sync::mpsc::channel(2 * BATCH);
    let reader = tokio::spawn(async move {
        while let Some(Ok(msg)) = messages.next().await {
            let pending = msg.info().map_or(0, |i| i.pending);
            let Some((w, s, _)) = subjects::split_event(&msg.subject) else {
                continue;
            };
            let subject = subjects::kv_subject(bucket, &format!("{w}.{s}"));
            if tx
                .send((subject, msg.payload.clone(), pending))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let mut seen = 0;
    while seen < events {
        let Some(first) = rx.recv().await else { break };
        // Batches of the projector's size: while more events are waiting, wait for them.
        let mut more = first.2 > 0;
        let mut chunk = vec![first];
        while chunk.len() < BATCH {
            let next = match rx.try_recv() {
                Ok(next) => next,
                Err(_) if more => {
                    match tokio::time::timeout(Duration::from_millis(50), rx.recv()).await {
                        Ok(Some(next)) => next,
                        _ => break,
                    }
                }
                Err(_) => break,
            };
            more = next.2 > 0;
            chunk.push(next);
        }
        seen += chunk.len();
        // The last payload per key, the keys in the order first touched (as the
        // projector writes them).
        let mut latest: Vec<Outbound> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for (subject, payload, _) in chunk {
            match index.get(&subject) {
                Some(&i) => latest[i].payload = payload,
                None => {
                    index.insert(subject.clone(), latest.len());
                    latest.push(Outbound {
                        subject,
                        headers: async_nats::HeaderMap::new(),
                        payload,
                    });
                }
            }
        }
        // Up to three batches in flight, as the raw ingest loop keeps (a plain loop may:
        // no other writer shares its bucket).
        let mut latest = latest.into_iter().peekable();
        let parts = std::iter::from_fn(|| {
            latest.peek()?;
            Some(latest.by_ref().take(MAX_BATCH - 1).collect::<Vec<_>>())
        });
        send_batches(client, parts, timeout)
            .await
            .context("ceiling loop: commit")?;
    }
    reader.abort();
    Ok(started.elapsed())
}

/// stock-projector's loop on a scratch view, timed until its checkpoint reaches `last`.
async fn projector(
    client: &async_nats::Client,
    js: &Context,
    ctx: &Ctx,
    filter: &str,
    last: u64,
) -> Result<Duration, Failure> {
    scratch_bucket(js, PROJECTOR_BUCKET).await?;
    let stop = CancellationToken::new();
    let config = stockwire::projection::Config {
        envelope: ctx.envelope.clone(),
        ..Default::default()
    };
    let started = Instant::now();
    let task = tokio::spawn(projector::run(
        client.clone(),
        StockProjection::into_bucket(PROJECTOR_BUCKET, filter.to_string()),
        config,
        stop.clone(),
    ));
    let deadline = started + Duration::from_secs(600);
    loop {
        if view::read_checkpoint(client, PROJECTOR_BUCKET)
            .await
            .unwrap_or(0)
            >= last
        {
            break;
        }
        if Instant::now() > deadline || task.is_finished() {
            stop.cancel();
            return Err(anyhow::anyhow!("the projector did not catch up").into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = started.elapsed();
    stop.cancel();
    let _ = task.await;
    Ok(took)
}

/// The sequential get-put-ack loop: durable consumer; per event get, modify, put, ack,
/// one at a time.
async fn get_put_ack_loop(
    js: &Context,
    envelope: &Envelope,
    filter: &str,
    n: usize,
) -> Result<Duration, Failure> {
    let kv = scratch_bucket(js, GET_PUT_ACK_BUCKET).await?;
    let stream = js
        .get_stream(subjects::INVENTORY_STREAM)
        .await
        .context("INVENTORY")?;
    let name = format!("bench-get-put-ack-{}", uuid::Uuid::new_v4().simple());
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(name.clone()),
            filter_subject: filter.to_string(),
            ack_policy: AckPolicy::Explicit,
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .context("get-put-ack loop: consumer")?;
    let started = Instant::now();
    let mut messages = consumer
        .messages()
        .await
        .context("get-put-ack loop: messages")?;
    let mut done = 0;
    while done < n {
        let Some(msg) = messages.next().await else {
            break;
        };
        let msg = msg.map_err(|e| anyhow::anyhow!("get-put-ack loop: reading: {e}"))?;
        let (seq, stored_ms) = msg
            .info()
            .map(|i| (i.stream_sequence, stockwire::read::stored_ms(&i)))
            .unwrap_or_default();
        if let Ok(rec) =
            envelope.decode(&msg.subject, msg.headers.as_ref(), &msg.payload, stored_ms)
        {
            let key = subjects::view_key(rec.event.warehouse(), rec.event.sku());
            let mut current: StockView =
                match kv.get(&key).await.context("get-put-ack loop: get")? {
                    Some(bytes) => {
                        serde_json::from_slice(&bytes).context("get-put-ack loop: decode")?
                    }
                    None => StockView::new(rec.event.warehouse().clone(), rec.event.sku().clone()),
                };
            current.apply(&rec.event, seq, rec.meta.timestamp_ms);
            let value = serde_json::to_vec(&current).context("get-put-ack loop: encode")?;
            kv.put(&key, value.into())
                .await
                .context("get-put-ack loop: put")?;
        }
        msg.ack()
            .await
            .map_err(|e| anyhow::anyhow!("get-put-ack loop: ack: {e}"))?;
        done += 1;
    }
    let took = started.elapsed();
    let _ = stream.delete_consumer(&name).await;
    Ok(took)
}
