//! Ingest figures: the raw JetStream publish loops, and `stockwire publish --file`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use stockwire::batch::{self, MAX_BATCH};
use stockwire::clock::{Clock as _, SystemClock};
use stockwire::domain::Event;
use stockwire::envelope::Outbound;

use crate::failure::Failure;
use crate::{encode_all, send_batches, Ctx, WINDOW};

/// Plain async-nats: publish, keep up to WINDOW acks outstanding, await them in order.
pub(crate) async fn raw_pipelined(
    js: &async_nats::jetstream::Context,
    ctx: &Ctx,
    events: &[Event],
    run_id: &str,
) -> Result<Duration, Failure> {
    let messages = encode_all(ctx, events, &format!("bench-pipe-{run_id}"));
    let started = Instant::now();
    let mut pending: VecDeque<async_nats::jetstream::context::PublishAckFuture> =
        VecDeque::with_capacity(WINDOW);
    for out in messages {
        if pending.len() >= WINDOW {
            if let Some(ack) = pending.pop_front() {
                ack.await.context("raw pipelined publish: PubAck")?;
            }
        }
        let ack = js
            .publish_with_headers(out.subject, out.headers, out.payload)
            .await
            .context("raw pipelined publish")?;
        pending.push_back(ack);
    }
    for ack in pending {
        ack.await.context("raw pipelined publish: PubAck")?;
    }
    Ok(started.elapsed())
}

/// Atomic batches of 1,000, up to [`crate::BATCHES_IN_FLIGHT`] sent before the oldest is acknowledged.
pub(crate) async fn raw_batches(
    client: &async_nats::Client,
    ctx: &Ctx,
    events: &[Event],
    run_id: &str,
    timeout: Duration,
) -> Result<Duration, Failure> {
    let messages = encode_all(ctx, events, &format!("bench-batch-{run_id}"));
    let batches: Vec<Vec<Outbound>> = messages.chunks(MAX_BATCH).map(<[_]>::to_vec).collect();
    let started = Instant::now();
    send_batches(client, batches, timeout)
        .await
        .context("raw atomic batch")?;
    Ok(started.elapsed())
}

/// Runs `stockwire publish --file` (the CLI beside this binary) as a user would, on an
/// NDJSON file of the events.
pub(crate) async fn import_file(
    ctx: &Ctx,
    events: &[Event],
    run_id: &str,
) -> Result<(Duration, String), Failure> {
    let now = SystemClock.now_ms();
    let mut text = String::with_capacity(events.len() * 110);
    for (i, e) in events.iter().enumerate() {
        let mut line = serde_json::to_value(e).context("encoding a bench event")?;
        if let Some(map) = line.as_object_mut() {
            map.insert("type".into(), e.event_type().into());
            map.insert("timestamp_ms".into(), now.into());
            map.insert("msg_id".into(), format!("bench-file-{run_id}-{i}").into());
        }
        text.push_str(&line.to_string());
        text.push('\n');
    }
    let path = std::env::temp_dir().join(format!("stockwire-bench-{run_id}.ndjson"));
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    let mut command = ctx.command("stockwire")?;
    command
        .arg("publish")
        .arg("--file")
        .arg(&path)
        .arg("--json")
        .stderr(std::process::Stdio::inherit());
    let started = Instant::now();
    let output = command
        .output()
        .await
        .context("running stockwire publish --file");
    let took = started.elapsed();
    let _ = std::fs::remove_file(&path);
    let output = output?;
    if !output.status.success() {
        return Err(anyhow::anyhow!("stockwire publish --file failed: {}", output.status).into());
    }
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout)
        .context("reading the summary of stockwire publish --file --json")?;
    let method = format!(
        "{}, {:.2} s by its own count",
        summary["write_method"].as_str().unwrap_or("unknown"),
        summary["seconds"].as_f64().unwrap_or(0.0)
    );
    Ok((took, method))
}

/// What one event costs alone, one at a time (each waits for its PubAck): as a plain
/// publish, and as an atomic batch of one. A live projector commits small atomic batches,
/// so the second is the floor under its latency.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct RoundTrip {
    pub(crate) single_publish_p50_ms: f64,
    pub(crate) atomic_batch_of_one_p50_ms: f64,
}

pub(crate) async fn round_trips(
    client: &async_nats::Client,
    js: &async_nats::jetstream::Context,
    ctx: &Ctx,
    events: &[Event],
    run_id: &str,
    timeout: Duration,
) -> Result<RoundTrip, Failure> {
    const N: usize = 100;
    let events = &events[..events.len().min(2 * N)];
    let messages = encode_all(ctx, events, &format!("bench-rt-{run_id}"));
    let (singles, batches) = messages.split_at(messages.len() / 2);
    let mut single = Vec::with_capacity(N);
    for out in singles {
        let started = Instant::now();
        js.publish_with_headers(
            out.subject.clone(),
            out.headers.clone(),
            out.payload.clone(),
        )
        .await
        .context("round trip: publish")?
        .await
        .context("round trip: PubAck")?;
        single.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let mut atomic = Vec::with_capacity(N);
    for out in batches {
        let one = vec![out.clone()];
        let started = Instant::now();
        batch::publish_atomic(client, one, timeout)
            .await
            .context("round trip: atomic batch of one")?;
        atomic.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    single.sort_by(f64::total_cmp);
    atomic.sort_by(f64::total_cmp);
    Ok(RoundTrip {
        single_publish_p50_ms: crate::latency::quantile(&single, 0.5),
        atomic_batch_of_one_p50_ms: crate::latency::quantile(&atomic, 0.5),
    })
}
