//! Idempotent creation and update of Stockwire's streams and buckets.
//!
//! Each one is described here in full; [`provision`] creates what is missing, updates what
//! differs in the settings Stockwire owns, and leaves the rest alone, so running it twice
//! changes nothing the second time. KV buckets are provisioned as their backing streams
//! (`KV_{bucket}`, the same settings `create_key_value` uses) so that the view buckets can
//! also get `allow_atomic`, which the KV API cannot set.

use std::fmt;
use std::time::Duration;

use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::stream::{
    Config, DiscardPolicy, External, RetentionPolicy, Source, StorageType,
};
use async_nats::jetstream::{Context, ErrorCode};

use crate::domain::WarehouseId;
use crate::retry::Backoff;
use crate::subjects;
use crate::views;

/// Largest event: 64 KiB.
pub const MAX_EVENT_SIZE: i32 = 64 * 1024;
/// How long JetStream remembers a `Nats-Msg-Id` by default.
pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How long alerts are kept.
pub const ALERTS_MAX_AGE: Duration = Duration::from_secs(90 * 24 * 3600);
/// How long dead letters are kept.
pub const DEADLETTER_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);

/// Settings an operator may choose.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `INVENTORY` duplicate window (repeats of a `Nats-Msg-Id` inside it are dropped).
    pub duplicate_window: Duration,
    /// Replicas of every stream and bucket; `None` keeps each existing stream's count (a
    /// new one gets 1), so a plain re-run never scales an R3 deployment back to R1.
    pub replicas: Option<usize>,
    /// The warehouse whose own server this is (an edge site), or `None` at the hub. A
    /// site's `INVENTORY` holds that warehouse's events only, and its `sites` bucket is a
    /// mirror of the hub's.
    pub site: Option<WarehouseId>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            duplicate_window: DEFAULT_DUPLICATE_WINDOW,
            replicas: None,
            site: None,
        }
    }
}

/// What [`provision`] did to one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Updated,
    Unchanged,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Created => "created",
            Outcome::Updated => "updated",
            Outcome::Unchanged => "unchanged",
        })
    }
}

/// One line of the provisioning report.
#[derive(Debug, Clone)]
pub struct Change {
    /// The stream name (`INVENTORY`, `KV_stock`, ...).
    pub stream: String,
    /// What the stream is for, e.g. `bucket stock`.
    pub what: String,
    pub outcome: Outcome,
}

#[derive(Debug, thiserror::Error)]
#[error("provisioning stream {stream}: {source}")]
pub struct ProvisionError {
    pub stream: String,
    #[source]
    pub source: async_nats::Error,
}

impl ProvisionError {
    /// Whether JetStream was not ready to answer (a timeout, no leader yet), as opposed
    /// to a refusal: worth asking again.
    pub fn is_transient(&self) -> bool {
        let text = self.source.to_string().to_lowercase();
        [
            "timed out",
            "temporarily unavailable",
            "no responders",
            "code 503",
        ]
        .iter()
        .any(|clue| text.contains(clue))
    }

    /// Whether the server refused the replica count (more than the cluster has, or more
    /// than one on a single server).
    pub fn is_about_replicas(&self) -> bool {
        let text = self.source.to_string().to_lowercase();
        ["replicas", "insufficient resources", "no suitable peers"]
            .iter()
            .any(|clue| text.contains(clue))
    }
}

/// The streams Stockwire needs, with a word on what each is.
pub fn desired(options: &Options) -> Vec<(String, Config)> {
    let (subjects, description) = match &options.site {
        Some(site) => (
            subjects::warehouse_events(site),
            format!("Stockwire events of record of warehouse {site}, recorded at its site"),
        ),
        None => (
            subjects::INVENTORY_SUBJECTS.to_string(),
            "Stockwire events of record: the source of truth".to_string(),
        ),
    };
    let mut wanted = vec![
        (
            "events of record".into(),
            Config {
                name: subjects::INVENTORY_STREAM.into(),
                description: Some(description),
                subjects: vec![subjects],
                storage: StorageType::File,
                retention: RetentionPolicy::Limits,
                duplicate_window: options.duplicate_window,
                allow_direct: true,
                allow_atomic_publish: true,
                max_message_size: MAX_EVENT_SIZE,
                ..Default::default()
            },
        ),
        (
            "derived events".into(),
            Config {
                name: subjects::ALERTS_STREAM.into(),
                description: Some("Stockwire derived events: low stock, velocity, stockout".into()),
                subjects: vec![subjects::ALERTS_SUBJECTS.into()],
                storage: StorageType::File,
                max_age: ALERTS_MAX_AGE,
                duplicate_window: DEFAULT_DUPLICATE_WINDOW,
                allow_direct: true,
                max_message_size: MAX_EVENT_SIZE,
                ..Default::default()
            },
        ),
        (
            "dead letters".into(),
            Config {
                name: subjects::DEADLETTER_STREAM.into(),
                description: Some("Stockwire events a projector could not apply".into()),
                subjects: vec![subjects::DEADLETTER_SUBJECTS.into()],
                storage: StorageType::File,
                max_age: DEADLETTER_MAX_AGE,
                duplicate_window: DEFAULT_DUPLICATE_WINDOW,
                allow_direct: true,
                max_message_size: MAX_EVENT_SIZE,
                ..Default::default()
            },
        ),
    ];
    for view in views::ALL {
        let config = Config {
            allow_message_ttl: view.expires,
            ..kv_config(view.bucket, view.description, true)
        };
        wanted.push(match &options.site {
            // A site's own log holds one leg of a transfer to or from another home: the
            // hub pairs them, and a site reads the hub's view.
            Some(_) if view == views::TRANSIT => hub_copy(view.bucket, config),
            _ => (format!("bucket {}", view.bucket), config),
        });
    }
    wanted.push((
        format!("bucket {}", subjects::THRESHOLDS_BUCKET),
        kv_config(
            subjects::THRESHOLDS_BUCKET,
            "Stockwire low-stock and stockout thresholds",
            false,
        ),
    ));
    let sites = kv_config(
        subjects::SITES_BUCKET,
        "Stockwire edge sites: the warehouses that record at their own server",
        false,
    );
    wanted.push(match &options.site {
        None => (format!("bucket {}", subjects::SITES_BUCKET), sites),
        Some(_) => hub_copy(subjects::SITES_BUCKET, sites),
    });
    wanted.push((
        format!("bucket {}", subjects::LEASES_BUCKET),
        Config {
            // Each lease write carries its time to live (see `lease`).
            allow_message_ttl: true,
            ..kv_config(
                subjects::LEASES_BUCKET,
                "Stockwire leases: the active instance of each service",
                false,
            )
        },
    ));
    wanted
}

/// At a site, a copy of the hub's bucket kept by the server: a mirror has no subjects of
/// its own, and follows the hub whenever the link is up.
fn hub_copy(bucket: &str, config: Config) -> (String, Config) {
    (
        format!("bucket {bucket} (a mirror of the hub's)"),
        Config {
            subjects: Vec::new(),
            mirror: Some(Source {
                name: config.name.clone(),
                external: Some(External {
                    api_prefix: subjects::domain_api(subjects::HUB_DOMAIN),
                    delivery_prefix: None,
                }),
                ..Default::default()
            }),
            allow_atomic_publish: false,
            ..config
        },
    )
}

/// The backing stream of a KV bucket, as `create_key_value` would make it, one value per key.
pub fn kv_config(bucket: &str, description: &str, atomic: bool) -> Config {
    Config {
        name: subjects::kv_stream(bucket),
        description: Some(description.into()),
        subjects: vec![subjects::kv_subjects(bucket)],
        max_messages_per_subject: 1,
        storage: StorageType::File,
        discard: DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        duplicate_window: DEFAULT_DUPLICATE_WINDOW,
        allow_atomic_publish: atomic,
        ..Default::default()
    }
}

/// The config to send for an existing stream: what it has now, with the settings
/// Stockwire owns as `wanted` says. Everything else (sources, placement, a replica count
/// not asked for) is kept, since `update_stream` replaces the whole config.
fn merged(current: &Config, wanted: &Config, replicas: Option<usize>) -> Config {
    Config {
        subjects: wanted.subjects.clone(),
        description: wanted.description.clone(),
        retention: wanted.retention,
        max_age: wanted.max_age,
        max_messages_per_subject: wanted.max_messages_per_subject,
        max_message_size: wanted.max_message_size,
        discard: wanted.discard,
        duplicate_window: wanted.duplicate_window,
        allow_direct: wanted.allow_direct,
        allow_atomic_publish: wanted.allow_atomic_publish,
        allow_rollup: wanted.allow_rollup,
        deny_delete: wanted.deny_delete,
        allow_message_ttl: wanted.allow_message_ttl,
        num_replicas: replicas.unwrap_or(current.num_replicas),
        ..current.clone()
    }
}

/// True when `current` differs from `wanted` in a setting Stockwire owns.
/// The server reports "no limit" as -1 where a config left at its default says 0.
fn differs(current: &Config, wanted: &Config) -> bool {
    fn limit(n: i64) -> i64 {
        n.max(0)
    }
    current.subjects != wanted.subjects
        || current.description != wanted.description
        || current.retention != wanted.retention
        || current.max_age != wanted.max_age
        || limit(current.max_messages_per_subject) != limit(wanted.max_messages_per_subject)
        || limit(current.max_message_size.into()) != limit(wanted.max_message_size.into())
        || current.discard != wanted.discard
        || current.duplicate_window != wanted.duplicate_window
        || current.allow_direct != wanted.allow_direct
        || current.allow_atomic_publish != wanted.allow_atomic_publish
        || current.allow_rollup != wanted.allow_rollup
        || current.deny_delete != wanted.deny_delete
        || current.num_replicas.max(1) != wanted.num_replicas.max(1)
        || current.allow_message_ttl != wanted.allow_message_ttl
}

/// Creates or updates every stream and bucket; returns what it did to each.
pub async fn provision(js: &Context, options: &Options) -> Result<Vec<Change>, ProvisionError> {
    let mut report = Vec::new();
    for (what, wanted) in desired(options) {
        // A cluster that has just started (or is electing a leader) answers some requests
        // late: each step is idempotent, so it is asked again for a while.
        let started = std::time::Instant::now();
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(2));
        let outcome = loop {
            match provision_one(js, &wanted, options.replicas).await {
                Ok(outcome) => break outcome,
                Err(e) if e.is_transient() && started.elapsed() < Duration::from_secs(60) => {
                    tracing::debug!(error = %e, "JetStream not ready; asking again");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(e) => return Err(e),
            }
        };
        report.push(Change {
            stream: wanted.name.clone(),
            what,
            outcome,
        });
    }
    Ok(report)
}

/// Creates `wanted`, or updates it in what setup owns.
async fn provision_one(
    js: &Context,
    wanted: &Config,
    replicas: Option<usize>,
) -> Result<Outcome, ProvisionError> {
    let fail = |source: async_nats::Error| ProvisionError {
        stream: wanted.name.clone(),
        source,
    };
    match js.get_stream(&wanted.name).await {
        Ok(mut stream) => {
            let current = stream
                .info()
                .await
                .map_err(|e| fail(e.into()))?
                .config
                .clone();
            let next = merged(&current, wanted, replicas);
            if differs(&current, &next) {
                js.update_stream(&next).await.map_err(|e| fail(e.into()))?;
                Ok(Outcome::Updated)
            } else {
                Ok(Outcome::Unchanged)
            }
        }
        Err(e)
            if matches!(
                e.kind(),
                GetStreamErrorKind::JetStream(api)
                    if api.error_code() == ErrorCode::STREAM_NOT_FOUND
            ) =>
        {
            let new = Config {
                num_replicas: replicas.unwrap_or(1),
                ..wanted.clone()
            };
            js.create_stream(new).await.map_err(|e| fail(e.into()))?;
            Ok(Outcome::Created)
        }
        Err(e) => Err(fail(e.into())),
    }
}
