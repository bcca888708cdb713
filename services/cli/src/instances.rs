//! The running instances of every service, for `stockwire status`: each answers the NATS
//! service API (`$SRV.STATS.<service>`) with its instance id, version, whether it is
//! active or standby, and its counters. A service with no active instance is a problem.

use std::time::Duration;

use stockwire::instance::{self, Listed};

use crate::failure::Failure;
use crate::output;

/// How long to wait for one more instance to answer.
const QUIET: Duration = Duration::from_millis(250);

/// Every running instance, and what `--check` finds wrong with them (of the services
/// not in `not_here`, which do not run at this server).
pub(crate) async fn gather(
    client: &async_nats::Client,
    not_here: &[&str],
) -> Result<(Vec<Listed>, Vec<String>), Failure> {
    let listed = instance::list(client, QUIET)
        .await
        .map_err(|e| anyhow::anyhow!("asking the services for their state: {e}"))?;
    let mut problems = Vec::new();
    for service in instance::SERVICES {
        if not_here.contains(&service) {
            continue;
        }
        let running = listed.iter().filter(|l| l.service == service).count();
        let active = listed
            .iter()
            .any(|l| l.service == service && l.stats.active);
        if running == 0 {
            problems.push(format!("no instance of {service} is running"));
        } else if !active {
            problems.push(format!(
                "no active instance of {service} ({running} standing by)"
            ));
        }
    }
    Ok((listed, problems))
}

/// What is wrong when `owner`'s view is split into `partitions`: each partition without
/// an active instance.
pub(crate) fn missing_partitions(listed: &[Listed], owner: &str, partitions: u32) -> Vec<String> {
    if partitions <= 1 {
        return Vec::new();
    }
    (0..partitions)
        .filter(|i| {
            !listed.iter().any(|l| {
                l.service == owner
                    && l.stats.active
                    && l.stats.partitions == partitions
                    && l.stats.partition == *i
            })
        })
        .map(|i| format!("no active instance of {owner} for partition {i} of {partitions}"))
        .collect()
}

pub(crate) fn print(listed: &[Listed]) {
    let mut table = output::table([
        "service", "instance", "state", "version", "lag", "applied", "commits", "errors",
    ]);
    for l in listed {
        let s = &l.stats;
        let service = if s.partitions > 1 {
            format!(
                "{} (partition {} of {})",
                l.service, s.partition, s.partitions
            )
        } else {
            l.service.clone()
        };
        table.add_row(vec![
            service,
            s.instance.clone(),
            if s.active { "active" } else { "standby" }.to_string(),
            l.version.clone(),
            s.lag.to_string(),
            s.applied.to_string(),
            s.commits.to_string(),
            s.errors.to_string(),
        ]);
    }
    if listed.is_empty() {
        output::line("instances: none running");
    } else {
        output::line(&table);
    }
}
