//! This running instance as the NATS service API shows it (`$SRV.PING`, `$SRV.INFO`,
//! `$SRV.STATS`): registered under its service's name with its instance id and version
//! (info metadata, fixed at start), and in its stats data whether it is active or
//! standby, its lag, the events it applied, its commits and its errors. `stockwire status`
//! lists the instances from the same API.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use async_nats::service::ServiceExt;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::partition::Partition;
use crate::subjects;

/// The services that run in instances, each with a lease of its own: every one must have
/// an active instance.
pub const SERVICES: [&str; 5] = [
    "stock-projector",
    "transit-projector",
    "velocity-projector",
    "low-stock-watcher",
    "velocity-watcher",
];

/// The version every Stockwire service registers with.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The info metadata key holding the instance id.
pub const INSTANCE_METADATA: &str = "instance";

/// What an instance reports in its stats data (and on its own endpoint).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceStats {
    /// Its instance id (also in its info metadata).
    pub instance: String,
    /// Holds its service's lease and does the work; else standby.
    pub active: bool,
    /// Events waiting in the log after the last one it read (projectors; 0 for watchers).
    pub lag: u64,
    /// Events applied (projectors) or view changes read (watchers).
    pub applied: u64,
    /// View commits (projectors) or alerts announced (watchers).
    pub commits: u64,
    /// Failures it retried (a read, a commit, an announcement).
    pub errors: u64,
    /// The partition of the view it projects, and of how many (projectors; 0 of 1 when
    /// the view is not split, and for watchers).
    #[serde(default)]
    pub partition: u32,
    #[serde(default = "one")]
    pub partitions: u32,
}

fn one() -> u32 {
    1
}

/// Counters a service's loop updates as it works.
#[derive(Debug, Default)]
pub struct Counters {
    lag: AtomicU64,
    applied: AtomicU64,
    commits: AtomicU64,
    errors: AtomicU64,
    partition: AtomicU32,
    partitions: AtomicU32,
}

impl Counters {
    pub fn set_lag(&self, lag: u64) {
        self.lag.store(lag, Ordering::Relaxed);
    }
    pub fn applied(&self, n: u64) {
        self.applied.fetch_add(n, Ordering::Relaxed);
    }
    pub fn committed(&self) {
        self.commits.fetch_add(1, Ordering::Relaxed);
    }
    pub fn failed(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }
    pub fn set_partition(&self, partition: Partition) {
        self.partition.store(partition.index(), Ordering::Relaxed);
        self.partitions.store(partition.count(), Ordering::Relaxed);
    }

    fn snapshot(&self, instance: &str, active: bool) -> InstanceStats {
        InstanceStats {
            instance: instance.to_string(),
            active,
            lag: self.lag.load(Ordering::Relaxed),
            applied: self.applied.load(Ordering::Relaxed),
            commits: self.commits.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            partition: self.partition.load(Ordering::Relaxed),
            partitions: self.partitions.load(Ordering::Relaxed).max(1),
        }
    }
}

/// This instance's registration with the NATS service API; gone when stopped or dropped.
pub struct Registration {
    service: Option<async_nats::service::Service>,
    answering: Option<tokio::task::JoinHandle<()>>,
}

impl Registration {
    /// Registers `service` (its name) as `instance`. A failure is logged and leaves the
    /// instance unlisted: it still works.
    pub async fn start(
        client: &async_nats::Client,
        service: &str,
        instance: &str,
        active: watch::Receiver<bool>,
        counters: Arc<Counters>,
    ) -> Self {
        let stats = {
            let (active, counters, instance) =
                (active.clone(), counters.clone(), instance.to_string());
            move |_endpoint: String, _: async_nats::service::endpoint::Stats| {
                serde_json::to_value(counters.snapshot(&instance, *active.borrow()))
                    .unwrap_or(serde_json::Value::Null)
            }
        };
        let metadata = HashMap::from([(INSTANCE_METADATA.to_string(), instance.to_string())]);
        let started = client
            .service_builder()
            .description(format!("Stockwire {service}"))
            .metadata(metadata)
            .stats_handler(stats)
            .start(service, VERSION)
            .await;
        let registered = match started {
            Ok(registered) => registered,
            Err(e) => {
                tracing::warn!(service, error = %e, "not registered with the NATS service API");
                return Self {
                    service: None,
                    answering: None,
                };
            }
        };
        let subject = subjects::instance_requests(service, instance);
        let instance = instance.to_string();
        let answering = match registered
            .endpoint_builder()
            .name("instance")
            .add(subject)
            .await
        {
            Ok(mut endpoint) => Some(tokio::spawn(async move {
                while let Some(request) = endpoint.next().await {
                    let body = serde_json::to_vec(&counters.snapshot(&instance, *active.borrow()))
                        .unwrap_or_default();
                    if let Err(e) = request.respond(Ok(body.into())).await {
                        tracing::debug!(error = %e, "cannot answer a state request");
                    }
                }
            })),
            Err(e) => {
                tracing::warn!(service, error = %e, "no state endpoint: stats carry no data");
                None
            }
        };
        Self {
            service: Some(registered),
            answering,
        }
    }

    /// Leaves the service API.
    pub async fn stop(mut self) {
        if let Some(answering) = self.answering.take() {
            answering.abort();
        }
        if let Some(service) = self.service.take() {
            if let Err(e) = service.stop().await {
                tracing::debug!(error = %e, "leaving the service API");
            }
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(answering) = self.answering.take() {
            answering.abort();
        }
    }
}

/// One running instance, as it answered `$SRV.STATS`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listed {
    pub service: String,
    pub version: String,
    #[serde(flatten)]
    pub stats: InstanceStats,
}

/// Every running instance of [`SERVICES`], by service then instance id: each answers
/// `$SRV.STATS.<service>`; answers are gathered until none came for `quiet` (at most 2 s).
pub async fn list(
    client: &async_nats::Client,
    quiet: std::time::Duration,
) -> Result<Vec<Listed>, async_nats::Error> {
    let inbox = client.new_inbox();
    let mut answers = client.subscribe(inbox.clone()).await?;
    for service in SERVICES {
        client
            .publish_with_reply(subjects::service_stats(service), inbox.clone(), "".into())
            .await?;
    }
    client.flush().await?;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    let mut listed = Vec::new();
    loop {
        let until = deadline.min(tokio::time::Instant::now() + quiet);
        let Ok(Some(answer)) = tokio::time::timeout_at(until, answers.next()).await else {
            break;
        };
        let Ok(stats) = serde_json::from_slice::<async_nats::service::Stats>(&answer.payload)
        else {
            continue;
        };
        let data = stats.endpoints.into_iter().find_map(|e| e.data);
        let Some(Ok(data)) = data.map(serde_json::from_value::<InstanceStats>) else {
            continue;
        };
        listed.push(Listed {
            service: stats.name,
            version: stats.version,
            stats: data,
        });
    }
    listed.sort_by(|a, b| (&a.service, &a.stats.instance).cmp(&(&b.service, &b.stats.instance)));
    Ok(listed)
}
