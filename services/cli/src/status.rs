//! `stockwire status [--check] [--max-lag N]`: the streams, the buckets, how far each
//! projector lags behind the log, the dead letters, and the running instances of each service
//! (see `instances`); `--check` turns it into a health check.
//!
//! Every figure is exact. A bucket's keys are read as the last entry of each key (headers
//! only), so deleted keys and the system keys (`_checkpoint`) are not counted. A projector's
//! lag is the number of `INVENTORY` events after its `_checkpoint` that its view reads,
//! counted by the server for a throw-away consumer with the view's filter. A stream or
//! bucket that does not exist is reported as missing, not as an error.

use std::collections::BTreeMap;

use anyhow::Context as _;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::stream::Stream;
use async_nats::jetstream::{Context, ErrorCode};
use clap::Args;
use futures::StreamExt;
use serde::Serialize;

use stockwire::sites::{self, Home, SiteError, SiteState};
use stockwire::{subjects, view, views};

use crate::failure::{Failure, Outcome};
use crate::{instances, output, Ctx};

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Exit 1 when a projector lags by more than --max-lag events, a dead letter exists,
    /// a stream or bucket is missing, or a service has no active instance (for health checks).
    #[arg(long)]
    check: bool,
    /// Events a projector may lag behind the log before --check fails.
    #[arg(
        long,
        value_name = "N",
        env = "STOCKWIRE_MAX_LAG",
        default_value_t = 1000
    )]
    max_lag: u64,
    /// An edge site silent for longer than this many seconds is reported (and fails --check).
    #[arg(
        long,
        value_name = "S",
        env = "STOCKWIRE_SITE_OFFLINE_S",
        default_value_t = 60
    )]
    site_offline_s: u64,
}

/// Time allowed for one read of a view's checkpoints.
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// What is shown for something `stockwire setup` has not created.
const MISSING: &str = "missing (run `stockwire setup`)";

/// The streams shown, in order.
const STREAMS: [&str; 3] = [
    subjects::INVENTORY_STREAM,
    subjects::ALERTS_STREAM,
    subjects::DEADLETTER_STREAM,
];

/// The buckets shown, in order.
const BUCKETS: [&str; 4] = [
    views::STOCK.bucket,
    views::VELOCITY.bucket,
    views::TRANSIT.bucket,
    subjects::THRESHOLDS_BUCKET,
];

#[derive(Debug, Serialize)]
struct StreamStats {
    messages: u64,
    bytes: u64,
    first_seq: u64,
    last_seq: u64,
    /// Copies kept (1 on a single server, 3 for R3 on a cluster).
    replicas: usize,
    /// The node that leads the stream (on a cluster).
    leader: Option<String>,
    /// Whether every other replica is current with the leader (on a cluster).
    replicas_current: Option<bool>,
}

#[derive(Debug, Serialize)]
struct BucketStats {
    keys: u64,
    /// The node that leads the bucket's stream (on a cluster).
    leader: Option<String>,
}

#[derive(Debug, Serialize)]
struct ProjectorStats {
    /// Every event up to it is applied to the view (the lowest of its partitions').
    checkpoint: u64,
    /// Events the view reads after the checkpoint; `None` when `INVENTORY` is missing.
    lag: Option<u64>,
    /// Into how many partitions the view is split (1: not split).
    partitions: u32,
    /// Each partition's checkpoint and lag, when the view is split.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    by_partition: Vec<PartitionStats>,
}

#[derive(Debug, Serialize)]
struct PartitionStats {
    partition: u32,
    /// `None`: no instance of this partition has written a checkpoint yet.
    checkpoint: Option<u64>,
    /// Events of the view's subjects after its checkpoint (a partition reads them all,
    /// applying its own products' events).
    lag: Option<u64>,
}

#[derive(Debug, Serialize)]
struct SiteSummary {
    #[serde(flatten)]
    state: SiteState,
    online: bool,
}

/// Everything `status` reports; `None` (JSON `null`) stands for missing.
#[derive(Debug, Serialize)]
struct Report {
    streams: BTreeMap<&'static str, Option<StreamStats>>,
    buckets: BTreeMap<&'static str, Option<BucketStats>>,
    projectors: BTreeMap<&'static str, Option<ProjectorStats>>,
    dead_letters: Option<u64>,
    /// The running instances of every service (the NATS service API).
    instances: Vec<stockwire::instance::Listed>,
    /// The edge sites, as the hub sees them (none at a site, or without sites).
    sites: Vec<SiteSummary>,
    /// Views that are a copy of the hub's here (at an edge site): projected at the hub.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    copies: Vec<&'static str>,
    max_lag: u64,
    /// Why `--check` fails (or would fail); empty when healthy.
    problems: Vec<String>,
}

pub(crate) async fn run(ctx: &Ctx, args: StatusArgs) -> Outcome {
    let client = ctx.client().await?;
    let js = async_nats::jetstream::new(client.clone());
    let mut report = gather(&js, args.max_lag).await?;
    // A view copied from the hub has no projector here.
    let not_here: Vec<&str> = views::ALL
        .iter()
        .filter(|v| report.copies.contains(&v.bucket))
        .map(|v| v.owner)
        .collect();
    let (listed, problems) = instances::gather(&client, &not_here).await?;
    report.problems.extend(problems);
    for (bucket, stats) in &report.projectors {
        let (Some(stats), Some(spec)) = (stats, views::by_bucket(bucket)) else {
            continue;
        };
        report.problems.extend(instances::missing_partitions(
            &listed,
            spec.owner,
            stats.partitions,
        ));
    }
    report.instances = listed;
    let offline_after = std::time::Duration::from_secs(args.site_offline_s);
    match sites_of(&js).await {
        Ok(states) => {
            for state in states {
                let online = state.online(offline_after);
                if !online {
                    report.problems.push(match state.silent_ms {
                        Some(ms) => format!(
                            "site {} silent for {} (more than --site-offline-s {})",
                            state.warehouse,
                            crate::site::ago(ms),
                            args.site_offline_s
                        ),
                        None => format!("site {} never heard from", state.warehouse),
                    });
                }
                report.sites.push(SiteSummary { state, online });
            }
        }
        Err(e) => report.problems.push(format!("edge sites: {e}")),
    }
    if ctx.json {
        output::json_line(&report);
    } else {
        // With --check, the failure itself says what is wrong (on stderr).
        print_tables(&report, !args.check);
    }
    if args.check && !report.problems.is_empty() {
        return Err(Failure::from(anyhow::anyhow!(
            "status check failed: {}",
            report.problems.join("; ")
        )));
    }
    Ok(())
}

async fn gather(js: &Context, max_lag: u64) -> Result<Report, Failure> {
    let mut problems = Vec::new();

    let mut streams = BTreeMap::new();
    let mut inventory = None;
    for name in STREAMS {
        let stats = match find_stream(js, name).await? {
            Some(stream) => {
                let info = stream.cached_info();
                let state = &info.state;
                let cluster = info.cluster.as_ref().filter(|c| c.leader.is_some());
                let replicas_current =
                    cluster.map(|c| c.replicas.iter().all(|r| r.current && !r.offline));
                if replicas_current == Some(false) {
                    problems.push(format!("stream {name} has a replica that is not current"));
                }
                let stats = StreamStats {
                    messages: state.messages,
                    bytes: state.bytes,
                    first_seq: state.first_sequence,
                    last_seq: state.last_sequence,
                    replicas: info.config.num_replicas.max(1),
                    leader: cluster.and_then(|c| c.leader.clone()),
                    replicas_current,
                };
                if name == subjects::INVENTORY_STREAM {
                    inventory = Some(stream);
                }
                Some(stats)
            }
            None => {
                problems.push(format!("stream {name} is {MISSING}"));
                None
            }
        };
        streams.insert(name, stats);
    }
    let dead_letters = streams
        .get(subjects::DEADLETTER_STREAM)
        .and_then(|s| s.as_ref())
        .map(|s| s.messages);

    let mut buckets = BTreeMap::new();
    let mut stores = BTreeMap::new();
    let mut copies = Vec::new();
    for bucket in BUCKETS {
        let stats = if let Some(stream) = find_stream(js, &subjects::kv_stream(bucket)).await? {
            let leader = stream
                .cached_info()
                .cluster
                .as_ref()
                .and_then(|c| c.leader.clone());
            let kv = js
                .get_key_value(bucket)
                .await
                .with_context(|| format!("opening bucket {bucket}"))?;
            let keys = count_keys(&kv, bucket).await?;
            if stream.cached_info().config.mirror.is_some() {
                copies.push(bucket);
            } else {
                stores.insert(bucket, kv);
            }
            Some(BucketStats { keys, leader })
        } else {
            problems.push(format!("bucket {bucket} is {MISSING}"));
            None
        };
        buckets.insert(bucket, stats);
    }

    let mut projectors = BTreeMap::new();
    for spec in views::ALL {
        let (bucket, filter) = (spec.bucket, spec.filter());
        let stats = match stores.get(bucket) {
            Some(_) => {
                let position = view::position(&js.client(), bucket, READ_TIMEOUT)
                    .await
                    .map_err(|e| anyhow::anyhow!(e))
                    .with_context(|| format!("reading the checkpoints of view {bucket}"))?;
                let n = position.partitions;
                let mut by_partition = Vec::new();
                for (i, checkpoint) in position.checkpoints.iter().enumerate() {
                    // A partition with no checkpoint yet has every event still to read.
                    let lag = match &inventory {
                        Some(stream) => Some(lag(stream, &filter, checkpoint.unwrap_or(0)).await?),
                        None => None,
                    };
                    let which = if n > 1 {
                        format!("partition {i} of {n} of view {bucket}")
                    } else {
                        format!("view {bucket}")
                    };
                    if checkpoint.is_none() && n > 1 {
                        problems.push(format!(
                            "{which} has no checkpoint yet: start its projector with \
                             --partition {i} --partitions {n}"
                        ));
                    }
                    if let Some(lag) = lag.filter(|lag| *lag > max_lag) {
                        problems.push(format!(
                            "{which} lags by {lag} event{} (more than --max-lag {max_lag}); \
                             is its projector running?",
                            plural(lag)
                        ));
                    }
                    by_partition.push(PartitionStats {
                        partition: i as u32,
                        checkpoint: *checkpoint,
                        lag,
                    });
                }
                let checkpoint = position.lowest();
                let lag = by_partition.iter().filter_map(|p| p.lag).max();
                if n == 1 {
                    by_partition.clear();
                }
                Some(ProjectorStats {
                    checkpoint,
                    lag,
                    partitions: n,
                    by_partition,
                })
            }
            None => None,
        };
        projectors.insert(bucket, stats);
    }

    if let Some(n) = dead_letters.filter(|n| *n > 0) {
        problems.push(format!(
            "{n} dead letter{} (see `stockwire deadletter list`)",
            plural(n)
        ));
    }

    Ok(Report {
        streams,
        buckets,
        projectors,
        dead_letters,
        instances: Vec::new(),
        sites: Vec::new(),
        copies,
        max_lag,
        problems,
    })
}

/// The stream called `name`, or `None` when it does not exist; any other answer is a failure.
pub(crate) async fn find_stream(js: &Context, name: &str) -> Result<Option<Stream>, Failure> {
    match js.get_stream(name).await {
        Ok(stream) => Ok(Some(stream)),
        Err(e)
            if matches!(
                e.kind(),
                GetStreamErrorKind::JetStream(api)
                    if api.error_code() == ErrorCode::STREAM_NOT_FOUND
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(Failure::from(
            anyhow::Error::new(e).context(format!("looking up stream {name}")),
        )),
    }
}

/// Keys that hold a value now, system keys (`_checkpoint`) left out.
async fn count_keys(kv: &async_nats::jetstream::kv::Store, bucket: &str) -> Result<u64, Failure> {
    let fail = |e: &dyn std::fmt::Display| anyhow::anyhow!("counting the keys of {bucket}: {e}");
    let mut keys = kv.keys().await.map_err(|e| fail(&e))?;
    let mut count = 0;
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| fail(&e))?;
        if !key.starts_with('_') {
            count += 1;
        }
    }
    Ok(count)
}

/// Events of `INVENTORY` under `filter` after `checkpoint`, as the server counts them.
async fn lag(inventory: &Stream, filter: &str, checkpoint: u64) -> Result<u64, Failure> {
    if checkpoint >= inventory.cached_info().state.last_sequence {
        return Ok(0);
    }
    let consumer = inventory
        .create_consumer(stockwire::read::ordered_config(
            filter,
            DeliverPolicy::ByStartSequence {
                start_sequence: checkpoint + 1,
            },
        ))
        .await
        .with_context(|| format!("counting the events under {filter} after #{checkpoint}"))?;
    // Only the count is needed; the server removes the idle consumer by itself (users
    // such as cli may not delete consumers).
    Ok(consumer.cached_info().num_pending)
}

/// The edge sites as the hub sees them; none at a site's own server.
async fn sites_of(js: &async_nats::jetstream::Context) -> Result<Vec<SiteState>, SiteError> {
    // A hub without a registry (set up before sites existed, or not set up: the missing
    // streams say the rest) has no sites; a registry that cannot be read is a problem.
    match Home::of(js).await? {
        Home::Hub(Some(_)) => sites::states(js).await,
        Home::Hub(None) | Home::Site(_) => Ok(Vec::new()),
    }
}

fn print_tables(report: &Report, with_problems: bool) {
    let mut streams = output::table([
        "stream",
        "messages",
        "bytes",
        "first seq",
        "last seq",
        "replicas",
    ]);
    for name in STREAMS {
        streams.add_row(match report.streams.get(name).and_then(Option::as_ref) {
            Some(s) => vec![
                name.to_string(),
                s.messages.to_string(),
                human_bytes(s.bytes),
                s.first_seq.to_string(),
                s.last_seq.to_string(),
                match (&s.leader, s.replicas_current) {
                    (Some(leader), Some(current)) => format!(
                        "{} (leader {leader}, {})",
                        s.replicas,
                        if current { "all current" } else { "one behind" }
                    ),
                    _ => s.replicas.to_string(),
                },
            ],
            None => vec![name.to_string(), MISSING.to_string()],
        });
    }
    output::line(&streams);

    let mut buckets = output::table(["bucket", "keys", "checkpoint", "lag"]);
    for bucket in BUCKETS {
        let mut row = vec![bucket.to_string()];
        match report.buckets.get(bucket).and_then(Option::as_ref) {
            Some(s) => row.push(s.keys.to_string()),
            None => row.push(MISSING.to_string()),
        }
        match report.projectors.get(bucket) {
            Some(Some(p)) => {
                row.push(p.checkpoint.to_string());
                row.push(p.lag.map_or_else(|| "?".to_string(), |l| l.to_string()));
                if p.partitions > 1 {
                    buckets.add_row(row);
                    for part in &p.by_partition {
                        buckets.add_row(vec![
                            format!("  partition {} of {}", part.partition, p.partitions),
                            String::new(),
                            part.checkpoint
                                .map_or_else(|| "none".to_string(), |c| c.to_string()),
                            part.lag.map_or_else(|| "?".to_string(), |l| l.to_string()),
                        ]);
                    }
                    continue;
                }
            }
            Some(None) => {}
            // Written by people, not by a projector.
            None => row.extend(["-".to_string(), "-".to_string()]),
        }
        buckets.add_row(row);
    }
    output::line(&buckets);

    instances::print(&report.instances);
    if !report.sites.is_empty() {
        let mut table = output::table(["site", "online", "last contact", "events at the hub"]);
        for site in &report.sites {
            table.add_row(vec![
                site.state.warehouse.to_string(),
                if site.online { "yes" } else { "NO" }.to_string(),
                site.state.silent_ms.map_or_else(
                    || "never".into(),
                    |ms| format!("{} ago", crate::site::ago(ms)),
                ),
                site.state.events.to_string(),
            ]);
        }
        output::line(&table);
    }
    output::line(format!(
        "dead letters: {}",
        report
            .dead_letters
            .map_or_else(|| MISSING.to_string(), |n| n.to_string())
    ));
    if with_problems {
        for problem in &report.problems {
            output::line(format!("! {problem}"));
        }
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// `512 B`, `1.5 KiB`, `3.2 MiB`, ...
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_like_a_person_would_write_them() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024), "5.0 MiB");
    }
}
