//! Edge sites: warehouses that record at their own NATS server, a leaf node of the hub
//! with the warehouse id as its JetStream domain.
//!
//! The hub keeps a registry (the `sites` bucket, one key per warehouse) and sources each
//! site's `INVENTORY` into its own through the leaf connection, with the site's API
//! (`$JS.{warehouse}.API`). NATS keeps each source's order and resumes where it stopped
//! when a link comes back; the events keep their msg ids. While a link is down the
//! source's lag says 0 and nothing fails: only its `active` (the time since the hub last
//! heard from the site) grows, which is what [`SiteState::online`] reads.

use std::time::Duration;

use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::stream::{External, Source};
use async_nats::jetstream::Context;
use serde::{Deserialize, Serialize};

use crate::domain::WarehouseId;
use crate::subjects;

/// A site silent longer than this is shown offline, unless told otherwise.
pub const DEFAULT_OFFLINE_AFTER: Duration = Duration::from_secs(60);

/// One site in the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteEntry {
    pub warehouse: WarehouseId,
    /// When it became a site (ms since the epoch).
    pub added_ms: i64,
}

/// The hub's `INVENTORY` source for a site's events.
pub fn source(site: &WarehouseId) -> Source {
    Source {
        name: subjects::INVENTORY_STREAM.into(),
        filter_subject: Some(subjects::warehouse_events(site)),
        external: Some(External {
            api_prefix: subjects::domain_api(site.as_str()),
            delivery_prefix: None,
        }),
        ..Default::default()
    }
}

/// What the hub's permissions refuse its clients for a site: every event subject of its
/// warehouse (they enter the hub only by sourcing).
pub fn refused_at_the_hub(site: &WarehouseId) -> String {
    format!("warehouse.{site}.>")
}

/// Whether `source` is the one that brings `site`'s events.
pub fn is_source_of(source: &Source, site: &WarehouseId) -> bool {
    source.external.as_ref().map(|e| e.api_prefix.as_str())
        == Some(subjects::domain_api(site.as_str()).as_str())
}

/// A registry or stream read that failed: what was asked, and why.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct SiteError {
    what: String,
    reason: String,
}

fn failed<E: std::fmt::Display>(what: impl Into<String>) -> impl FnOnce(E) -> SiteError {
    let what = what.into();
    move |e| SiteError {
        what,
        reason: e.to_string(),
    }
}

/// Where the server a client talks to records events: the hub (every warehouse but the
/// sites'), or one site (its own warehouse only). One home per warehouse: a site's events
/// enter the hub only by sourcing.
#[derive(Debug, Clone)]
pub enum Home {
    /// The hub, with its registry (`None`: no `sites` bucket, set up before there were
    /// sites, so none).
    Hub(Option<Box<async_nats::jetstream::kv::Store>>),
    Site(WarehouseId),
}

/// The JetStream domain of the server `js` talks to, if it has one. JetStream that cannot
/// answer yet (a cluster electing its meta leader) is asked again for up to `budget`.
pub async fn domain(js: &Context, budget: Duration) -> Result<Option<String>, SiteError> {
    use async_nats::jetstream::context::AccountErrorKind;
    let started = std::time::Instant::now();
    let mut backoff =
        crate::retry::Backoff::new(Duration::from_millis(250), Duration::from_secs(2));
    loop {
        match js.query_account().await {
            Ok(account) => return Ok(account.domain.filter(|d| !d.is_empty())),
            Err(e)
                if (match e.kind() {
                    AccountErrorKind::TimedOut | AccountErrorKind::JetStreamUnavailable => true,
                    // 503: JetStream is there, not ready (no meta leader yet).
                    AccountErrorKind::JetStream(api) => api.code() == 503,
                    AccountErrorKind::Other => false,
                }) && started.elapsed() < budget =>
            {
                tracing::debug!(error = %e, "JetStream does not answer yet; asking again");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(e) => {
                return Err(failed(
                    "asking the server for its JetStream account (and its domain)",
                )(e))
            }
        }
    }
}

impl Home {
    /// The server's home, from its JetStream domain (no domain, or `hub`: the hub).
    pub async fn of(js: &Context) -> Result<Self, SiteError> {
        let domain = domain(js, crate::execute::UNAVAILABLE_FOR).await?;
        match domain.as_deref() {
            Some(domain) if domain != subjects::HUB_DOMAIN => WarehouseId::parse(domain)
                .map(Home::Site)
                .map_err(failed(format!(
                    "this server's JetStream domain {domain:?} is not a warehouse id"
                ))),
            _ => match js.get_key_value(subjects::SITES_BUCKET).await {
                Ok(registry) => Ok(Home::Hub(Some(Box::new(registry)))),
                Err(e) => {
                    use async_nats::jetstream::context::GetStreamErrorKind;
                    // A hub set up before sites existed has no registry, so no sites.
                    match js
                        .get_stream(subjects::kv_stream(subjects::SITES_BUCKET))
                        .await
                    {
                        Err(missing)
                            if matches!(
                                missing.kind(),
                                GetStreamErrorKind::JetStream(api)
                                    if api.error_code()
                                        == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND
                            ) =>
                        {
                            Ok(Home::Hub(None))
                        }
                        _ => Err(failed(format!("opening bucket {}", subjects::SITES_BUCKET))(e)),
                    }
                }
            },
        }
    }

    /// Why this server may not record events of `warehouse`, if it may not.
    pub async fn refuses(&self, warehouse: &WarehouseId) -> Result<Option<String>, SiteError> {
        match self {
            Home::Site(site) if site == warehouse => Ok(None),
            Home::Site(site) => Ok(Some(format!(
                "this server is warehouse {site}'s edge site, which records {site}'s events \
                 only; {warehouse}'s are recorded at the hub or at its own site"
            ))),
            Home::Hub(None) => Ok(None),
            Home::Hub(Some(registry)) => {
                let entry = registry
                    .get(warehouse.as_str())
                    .await
                    .map_err(failed(format!(
                        "looking {warehouse} up in bucket {}",
                        subjects::SITES_BUCKET
                    )))?;
                Ok(entry.map(|_| {
                    format!(
                        "warehouse {warehouse} is an edge site: its events are recorded at its \
                         own server (site {warehouse}) and reach the hub from there, never \
                         published at the hub"
                    )
                }))
            }
        }
    }
}

/// How the hub sees a site.
#[derive(Debug, Clone, Serialize)]
pub struct SiteState {
    pub warehouse: WarehouseId,
    pub added_ms: i64,
    /// Whether the hub's `INVENTORY` has a source for it.
    pub sourced: bool,
    /// Time since the hub last heard from the site's stream, if it ever did.
    pub silent_ms: Option<u64>,
    /// Events of the site the source has not brought yet, as the hub last knew.
    pub lag: u64,
    /// What the source reports wrong, if anything.
    pub error: Option<String>,
    /// Events of this warehouse stored at the hub.
    pub events: u64,
}

impl SiteState {
    /// Heard from within `offline_after`.
    pub fn online(&self, offline_after: Duration) -> bool {
        self.sourced
            && self
                .silent_ms
                .is_some_and(|ms| u128::from(ms) < offline_after.as_millis())
    }
}

/// The registry, by warehouse.
pub async fn registry(js: &Context) -> Result<Vec<SiteEntry>, SiteError> {
    use futures::TryStreamExt;
    let kv = js
        .get_key_value(subjects::SITES_BUCKET)
        .await
        .map_err(failed(format!("opening bucket {}", subjects::SITES_BUCKET)))?;
    let mut keys: Vec<String> = kv
        .keys()
        .await
        .map_err(failed(format!("listing bucket {}", subjects::SITES_BUCKET)))?
        .try_collect()
        .await
        .map_err(failed(format!("listing bucket {}", subjects::SITES_BUCKET)))?;
    keys.sort();
    let mut entries = Vec::with_capacity(keys.len());
    for key in keys {
        let Some(value) = kv.get(&key).await.map_err(failed(format!(
            "reading {key} in {}",
            subjects::SITES_BUCKET
        )))?
        else {
            continue;
        };
        let entry: SiteEntry = serde_json::from_slice(value.as_ref()).map_err(failed(format!(
            "{key} in {} is not a site entry",
            subjects::SITES_BUCKET
        )))?;
        entries.push(entry);
    }
    Ok(entries)
}

/// Every registered site as the hub sees it now.
pub async fn states(js: &Context) -> Result<Vec<SiteState>, SiteError> {
    let entries = registry(js).await?;
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    // async-nats's source info leaves out `external` and `error`: read the answer raw.
    let info: serde_json::Value = js
        .request(subjects::stream_info_api(subjects::INVENTORY_STREAM), &())
        .await
        .map_err(failed(format!(
            "stream info of {}",
            subjects::INVENTORY_STREAM
        )))?;
    if let Some(error) = info.get("error") {
        return Err(failed(format!(
            "stream info of {}",
            subjects::INVENTORY_STREAM
        ))(error));
    }
    let sources = info["sources"].as_array().cloned().unwrap_or_default();
    let inventory = js
        .get_stream(subjects::INVENTORY_STREAM)
        .await
        .map_err(failed(format!("opening {}", subjects::INVENTORY_STREAM)))?;
    let mut states = Vec::with_capacity(entries.len());
    for entry in entries {
        let api = subjects::domain_api(entry.warehouse.as_str());
        let source = sources
            .iter()
            .find(|s| s["external"]["api"].as_str() == Some(api.as_str()));
        let events = count(&inventory, &subjects::warehouse_events(&entry.warehouse)).await?;
        states.push(SiteState {
            warehouse: entry.warehouse,
            added_ms: entry.added_ms,
            sourced: source.is_some(),
            // Nanoseconds; -1 when never heard from.
            silent_ms: source
                .and_then(|s| s["active"].as_i64())
                .filter(|ns| *ns >= 0)
                .map(|ns| ns as u64 / 1_000_000),
            lag: source.and_then(|s| s["lag"].as_u64()).unwrap_or(0),
            error: source
                .and_then(|s| s.get("error"))
                .filter(|e| !e.is_null())
                .map(|e| e["description"].as_str().unwrap_or("").to_string()),
            events,
        });
    }
    Ok(states)
}

/// Messages of `stream` under `filter`, as the server counts them.
pub async fn count(
    stream: &async_nats::jetstream::stream::Stream,
    filter: &str,
) -> Result<u64, SiteError> {
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: filter.to_string(),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(failed(format!("counting the events under {filter}")))?;
    // Only the count is needed; the server removes the idle consumer by itself.
    Ok(consumer.cached_info().num_pending)
}
