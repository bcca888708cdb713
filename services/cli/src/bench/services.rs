//! The services as the bench runs them: real processes (the binaries beside `stockwire`),
//! so that their memory and their stop on SIGTERM can be measured.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;

use super::same_connection;
use crate::failure::Failure;
use crate::Ctx;

/// One running service.
pub(super) struct Service {
    name: &'static str,
    child: tokio::process::Child,
}

/// What was measured of a service when it stopped.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Stopped {
    pub(super) peak_rss_mb: f64,
    pub(super) stop_ms: u64,
    pub(super) clean_exit: bool,
}

fn binary(name: &str) -> Result<PathBuf, Failure> {
    let exe = std::env::current_exe().context("finding the stockwire binary")?;
    let path = exe.with_file_name(name);
    if !path.is_file() {
        return Err(anyhow::anyhow!(
            "{} is not built beside {}: build the services (scripts/bench does)",
            name,
            exe.display()
        )
        .into());
    }
    Ok(path)
}

/// Starts `names` against the configured server.
pub(super) fn start(ctx: &Ctx, names: &[&'static str]) -> Result<Vec<Service>, Failure> {
    let mut started = Vec::new();
    for &name in names {
        let mut command = tokio::process::Command::new(binary(name)?);
        same_connection(ctx, &mut command);
        command
            // Their logs go to our stderr; STOCKWIRE_BENCH_SERVICE_LOG (a RUST_LOG filter)
            // shows more, e.g. `stockwire::view=debug` for each commit's size and time.
            .env(
                "RUST_LOG",
                std::env::var("STOCKWIRE_BENCH_SERVICE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true);
        let child = command
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        started.push(Service { name, child });
    }
    Ok(started)
}

impl Service {
    /// Peak resident memory so far (VmHWM), in MiB.
    fn peak_rss_mb(&self) -> f64 {
        let Some(pid) = self.child.id() else {
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

    /// Sends SIGTERM and waits for the exit; how long it took, and the peak memory.
    pub(super) async fn stop(mut self) -> (&'static str, Stopped) {
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

/// Stops every service and records each (keeping the larger peak of a service seen twice).
pub(super) async fn stop_all(services: Vec<Service>, into: &mut BTreeMap<String, Stopped>) {
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
