//! The simulator's figure: `stockwire simulate` with a week of backfilled history for 3
//! warehouses x 1,000 products, then live at `--simulate-rate` (500 purchase attempts a
//! second by default) with the four services as processes. Did it keep up with the
//! planned customers? Then the same at ten times the rate, which it cannot reach: the
//! rate it does reach is the ceiling of the checked path taken one sale at a time, set
//! against the plain sequential get -> put -> ack loop measured in the same run.

use std::collections::BTreeMap;

use anyhow::Context as _;
use serde::Serialize;

use crate::failure::Failure;
use crate::{ratio, services, Ctx};

/// What the figure found.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SimulateFigures {
    pub(crate) warehouses: u64,
    pub(crate) skus: u64,
    pub(crate) backfill_days: f64,
    pub(crate) backfill_events: u64,
    /// Wall-clock seconds of the backfill run (history written, the view caught up).
    pub(crate) backfill_seconds: f64,
    pub(crate) backfill_events_per_s: f64,
    /// The rate asked for (attempts per second, on average over a day), what the run
    /// did, and how late against the plan the latest attempt was handled.
    pub(crate) live_rate_asked: f64,
    pub(crate) live_seconds: f64,
    pub(crate) live_attempts_per_s: f64,
    pub(crate) live_events_per_s: f64,
    pub(crate) live_late_max_ms: f64,
    pub(crate) live_late_over_1s: u64,
    pub(crate) live_lost_sales_share: f64,
    /// At ten times the rate: the attempts it handled per second, over the sequential
    /// get -> put -> ack loop.
    pub(crate) ceiling_attempts_per_s: f64,
    pub(crate) get_put_ack_per_s: f64,
    pub(crate) ceiling_over_get_put_ack: f64,
}

const WAREHOUSES: u64 = 3;
const SKUS: u64 = 1_000;

/// Runs the three simulations with the services running; `get_put_ack_per_s` is the
/// sequential loop's figure from the projection figures of this run.
pub(crate) async fn measure(
    ctx: &Ctx,
    backfill_days: f64,
    seconds: u64,
    rate: f64,
    get_put_ack_per_s: f64,
    stopped: &mut BTreeMap<String, services::Stopped>,
) -> Result<SimulateFigures, Failure> {
    let running = services::start(ctx, &services::ALL)?;
    let figures = async {
        // The week goes in at 1/600 of the live demand per simulated hour (about 500,000
        // attempts at 500/s): at the live rate a week would be 300 million.
        let speed = 600.0;
        let started = std::time::Instant::now();
        let backfill = simulate(
            ctx,
            &[
                "--backfill-days",
                &backfill_days.to_string(),
                "--rate",
                &rate.to_string(),
                "--speed",
                &speed.to_string(),
                "--duration-s",
                "0.1",
            ],
        )
        .await?;
        let backfill_seconds = started.elapsed().as_secs_f64();
        let backfill_events = field(&backfill, "backfilled") as u64;
        eprintln!(
            "bench: simulate: {backfill_days} days backfilled, {backfill_events} events in {backfill_seconds:.1} s"
        );
        let live = simulate(
            ctx,
            &[
                "--rate",
                &rate.to_string(),
                "--duration-s",
                &seconds.to_string(),
            ],
        )
        .await?;
        let live_seconds = field(&live, "live_seconds").max(1e-3);
        let attempts = field(&live, "live_attempts");
        eprintln!(
            "bench: simulate: asked {rate}/s, handled {:.0} attempts/s, latest {} ms late",
            attempts / live_seconds,
            field(&live, "late_max_ms")
        );
        let flat_out = simulate(
            ctx,
            &[
                "--rate",
                &(rate * 10.0).to_string(),
                "--duration-s",
                &(seconds / 3).max(5).to_string(),
            ],
        )
        .await?;
        let ceiling = field(&flat_out, "live_attempts") / field(&flat_out, "live_seconds").max(1e-3);
        eprintln!("bench: simulate: at most {ceiling:.0} attempts/s");
        Ok::<_, Failure>(SimulateFigures {
            warehouses: WAREHOUSES,
            skus: SKUS,
            backfill_days,
            backfill_events,
            backfill_seconds: round2(backfill_seconds),
            backfill_events_per_s: (backfill_events as f64 / backfill_seconds.max(1e-3)).round(),
            live_rate_asked: rate,
            live_seconds,
            live_attempts_per_s: (attempts / live_seconds).round(),
            live_events_per_s: (field(&live, "events") / live_seconds).round(),
            live_late_max_ms: field(&live, "late_max_ms"),
            live_late_over_1s: field(&live, "late_over_1s") as u64,
            live_lost_sales_share: round2(field(&live, "lost_sales") / attempts.max(1.0)),
            ceiling_attempts_per_s: ceiling.round(),
            get_put_ack_per_s,
            ceiling_over_get_put_ack: ratio(ceiling, get_put_ack_per_s),
        })
    }
    .await;
    services::stop_all(running, stopped).await;
    figures
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn field(summary: &serde_json::Value, name: &str) -> f64 {
    summary[name].as_f64().unwrap_or(0.0)
}

/// Runs `stockwire simulate` over the figure's network with `args`; its summary.
async fn simulate(ctx: &Ctx, args: &[&str]) -> Result<serde_json::Value, Failure> {
    let mut command = ctx.command("stockwire")?;
    command
        .arg("simulate")
        .args(["--warehouses", &WAREHOUSES.to_string()])
        .args(["--skus", &SKUS.to_string()])
        .args(args)
        .args(["--allow-existing", "--json", "--wait-timeout-s", "120"])
        .stderr(std::process::Stdio::inherit());
    let output = command
        .output()
        .await
        .context("running stockwire simulate")?;
    if !output.status.success() {
        return Err(
            anyhow::anyhow!("stockwire simulate {args:?} failed: {}", output.status).into(),
        );
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let last = text.lines().last().unwrap_or_default();
    Ok(serde_json::from_str(last)
        .with_context(|| format!("reading the summary of stockwire simulate: {last:?}"))?)
}
