//! Rebuild and verify over the whole log the run has written: stock-projector (a process)
//! first catches up, then `stockwire rebuild stock` and `stockwire verify` are run as a
//! user runs them, and timed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::Context;
use serde::Serialize;
use stockwire::{subjects, view};

use crate::failure::Failure;
use crate::{services, Ctx};

#[derive(Debug, Clone, Serialize)]
pub(crate) struct RebuildFigures {
    pub(crate) events: u64,
    pub(crate) catch_up_events_per_s: f64,
    pub(crate) rebuild_seconds: f64,
    pub(crate) rebuild_events_per_s: f64,
    pub(crate) verify_seconds: f64,
}

pub(crate) async fn measure(
    ctx: &Ctx,
    js: &Context,
    stopped: &mut BTreeMap<String, services::Stopped>,
) -> Result<RebuildFigures, Failure> {
    let mut inventory = js
        .get_stream(subjects::INVENTORY_STREAM)
        .await
        .context("INVENTORY")?;
    let info = inventory.info().await.context("INVENTORY")?;
    let (events, last) = (info.state.messages, info.state.last_sequence);
    let from = view::read_checkpoint(&js.client(), subjects::STOCK_BUCKET)
        .await
        .unwrap_or(0);

    let running = services::start(ctx, &["stock-projector"])?;
    let result = async {
        let started = Instant::now();
        let deadline = started + Duration::from_secs(600);
        while view::read_checkpoint(&js.client(), subjects::STOCK_BUCKET)
            .await
            .unwrap_or(0)
            < last
        {
            if Instant::now() > deadline {
                return Err(
                    anyhow::anyhow!("stock-projector did not catch up within 10 minutes").into(),
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let catch_up = (last - from) as f64 / started.elapsed().as_secs_f64().max(1e-9);
        eprintln!(
            "bench: stock-projector caught up on {} events at {catch_up:.0} events/s",
            last - from
        );
        let rebuild = timed(ctx, &["rebuild", "stock"]).await?;
        eprintln!("bench: rebuild stock of {events} events in {rebuild:.1} s");
        let verify = timed(ctx, &["verify"]).await?;
        eprintln!("bench: verify of {events} events in {verify:.1} s");
        Ok::<_, Failure>(RebuildFigures {
            events,
            catch_up_events_per_s: catch_up.round(),
            rebuild_seconds: (rebuild * 100.0).round() / 100.0,
            rebuild_events_per_s: (events as f64 / rebuild.max(1e-9)).round(),
            verify_seconds: (verify * 100.0).round() / 100.0,
        })
    }
    .await;
    services::stop_all(running, stopped).await;
    result
}

/// Runs `stockwire` (the CLI beside this binary) with `args` against the same server; its
/// wall time in seconds.
async fn timed(ctx: &Ctx, args: &[&str]) -> Result<f64, Failure> {
    let mut command = ctx.command("stockwire")?;
    let started = Instant::now();
    command
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let status = command
        .status()
        .await
        .with_context(|| format!("running stockwire {}", args.join(" ")))?;
    if !status.success() {
        return Err(anyhow::anyhow!("stockwire {} failed: {status}", args.join(" ")).into());
    }
    Ok(started.elapsed().as_secs_f64())
}
