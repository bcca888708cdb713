//! The services as the bench runs them: real processes (the binaries beside this one),
//! so that their memory and their stop on SIGTERM can be measured.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;

use crate::failure::Failure;
use crate::Ctx;

/// Every service, as the figures that run them all start them.
pub(crate) const ALL: [&str; 4] = [
    "stock-projector",
    "low-stock-watcher",
    "velocity-projector",
    "velocity-watcher",
];

/// One running service.
pub(crate) struct Service {
    name: &'static str,
    child: tokio::process::Child,
}

/// What was measured of a service when it stopped.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Stopped {
    pub(crate) peak_rss_mb: f64,
    pub(crate) stop_ms: u64,
    pub(crate) clean_exit: bool,
}

/// Starts `names` against the configured server.
pub(crate) fn start(ctx: &Ctx, names: &[&'static str]) -> Result<Vec<Service>, Failure> {
    let mut started = Vec::new();
    for &name in names {
        let mut command = ctx.command(name)?;
        quiet(&mut command);
        let child = command
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        started.push(Service { name, child });
    }
    Ok(started)
}

/// Sets up a process the bench runs beside itself: no input, no output but its logs on
/// our stderr, killed when dropped. STOCKWIRE_BENCH_SERVICE_LOG (a RUST_LOG filter) shows
/// more of them, e.g. `stockwire::view=debug` for each commit's size and time.
pub(crate) fn quiet(command: &mut tokio::process::Command) {
    command
        .env(
            "RUST_LOG",
            std::env::var("STOCKWIRE_BENCH_SERVICE_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true);
}

impl Service {
    fn peak_rss_mb(&self) -> f64 {
        peak_rss_mb(self.child.id())
    }

    /// Sends SIGTERM and waits for the exit; how long it took, and the peak memory.
    pub(crate) async fn stop(mut self) -> (&'static str, Stopped) {
        let peak_rss_mb = self.peak_rss_mb();
        let started = Instant::now();
        let signalled = match self.child.id() {
            Some(pid) => tokio::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await
                .is_ok_and(|s| s.success()),
            None => false,
        };
        let status = if signalled {
            tokio::time::timeout(Duration::from_secs(10), self.child.wait())
                .await
                .ok()
                .and_then(Result::ok)
        } else {
            None
        };
        if status.is_none() {
            let _ = self.child.kill().await;
        }
        (
            self.name,
            Stopped {
                peak_rss_mb,
                stop_ms: started.elapsed().as_millis() as u64,
                clean_exit: status.is_some_and(|s| s.success()),
            },
        )
    }
}

/// Peak resident memory so far (VmHWM) of the process `pid`, in MiB (0 when it is gone).
pub(crate) fn peak_rss_mb(pid: Option<u32>) -> f64 {
    let Some(pid) = pid else {
        return 0.0;
    };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| (kb / 1024.0 * 10.0).round() / 10.0)
}

/// Stops every service and records each (keeping the larger peak of a service seen twice).
pub(crate) async fn stop_all(services: Vec<Service>, into: &mut BTreeMap<String, Stopped>) {
    for service in services {
        let (name, stopped) = service.stop().await;
        let entry = into
            .entry(name.to_string())
            .or_insert_with(|| stopped.clone());
        if stopped.peak_rss_mb > entry.peak_rss_mb {
            entry.peak_rss_mb = stopped.peak_rss_mb;
        }
        entry.stop_ms = entry.stop_ms.max(stopped.stop_ms);
        entry.clean_exit &= stopped.clean_exit;
    }
}
