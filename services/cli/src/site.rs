//! `stockwire site add | list`, at the hub: the warehouses that record at their own server.
//!
//! `add` records the warehouse in the `sites` bucket and adds its source to the hub's
//! `INVENTORY`; from then on the site's events reach the hub by sourcing, in the site's
//! order and each once, whenever the leaf link is up. `list` shows each site's last
//! contact, the events of it the hub holds, and whether it is online.

use std::time::Duration;

use async_nats::jetstream::kv;
use clap::{Args, Subcommand};
use serde::Serialize;
use stockwire::clock::{Clock, SystemClock};
use stockwire::domain::WarehouseId;
use stockwire::sites::{self, SiteEntry, SiteState};
use stockwire::subjects;

use crate::failure::{Failure, Outcome};
use crate::{output, Ctx};

#[derive(Debug, Args)]
pub struct SiteArgs {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Make a warehouse an edge site: its events come from its own server from now on
    /// (admin; run at the hub, after `stockwire setup --site` on the site's server).
    Add {
        #[arg(value_parser = WarehouseId::parse)]
        warehouse: WarehouseId,
    },
    /// The hub's refused-events.conf, from the registry: the sites' events, which admin
    /// and cli may not publish at the hub (write it, then reload the server).
    Conf,
    /// Every site: last contact, the events of it at the hub, online or not.
    List {
        /// A site silent for longer than this many seconds is shown offline.
        #[arg(long, env = "STOCKWIRE_SITE_OFFLINE_S", default_value_t = 60)]
        site_offline_s: u64,
    },
}

#[derive(Serialize)]
struct Added<'a> {
    warehouse: &'a str,
    registry: &'static str,
    source: &'static str,
}

#[derive(Serialize)]
struct Shown<'a> {
    #[serde(flatten)]
    state: &'a SiteState,
    online: bool,
}

pub(crate) async fn run(ctx: &Ctx, args: SiteArgs) -> Outcome {
    let js = ctx.jetstream().await?;
    at_the_hub(&js).await?;
    match args.action {
        Action::Add { warehouse } => add(ctx, &js, &warehouse).await,
        Action::Conf => conf(&js).await,
        Action::List { site_offline_s } => {
            list(ctx, &js, Duration::from_secs(site_offline_s)).await
        }
    }
}

/// Refuses to run on a site's own server, whose registry is a read-only copy.
async fn at_the_hub(js: &async_nats::jetstream::Context) -> Result<(), Failure> {
    let domain = sites::domain(js, stockwire::execute::UNAVAILABLE_FOR)
        .await
        .map_err(anyhow::Error::new)?;
    match domain.as_deref() {
        Some(domain) if domain != subjects::HUB_DOMAIN => Err(Failure::invalid(format!(
            "this server is the site of warehouse {domain}: sites are added and listed at \
             the hub (JetStream domain {:?})",
            subjects::HUB_DOMAIN
        ))),
        _ => Ok(()),
    }
}

async fn add(ctx: &Ctx, js: &async_nats::jetstream::Context, warehouse: &WarehouseId) -> Outcome {
    let mut inventory = js
        .get_stream(subjects::INVENTORY_STREAM)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "opening {}: {e} (run `stockwire setup` first)",
                subjects::INVENTORY_STREAM
            )
        })?;
    let mut config = inventory
        .info()
        .await
        .map_err(|e| anyhow::anyhow!("stream info of {}: {e}", subjects::INVENTORY_STREAM))?
        .config
        .clone();
    let sourced = config
        .sources
        .iter()
        .flatten()
        .any(|s| sites::is_source_of(s, warehouse));
    if !sourced {
        // A site starts from an empty log: what the hub holds of this warehouse would be
        // missing there, and every checked sale at the site refused.
        let held = sites::count(&inventory, &subjects::warehouse_events(warehouse))
            .await
            .map_err(anyhow::Error::new)?;
        if held > 0 {
            return Err(Failure::invalid(format!(
                "warehouse {warehouse} already has {held} events at the hub; a site starts \
                 with an empty log, so its stock would be missing there. Open the site under \
                 a new warehouse id and record its stock there (the README, Edge sites, \
                 says how); nothing was changed"
            )));
        }
    }

    let registry = js
        .get_key_value(subjects::SITES_BUCKET)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "opening bucket {}: {e} (run `stockwire setup` at the hub first)",
                subjects::SITES_BUCKET
            )
        })?;
    let entry = SiteEntry {
        warehouse: warehouse.clone(),
        added_ms: SystemClock.now_ms(),
    };
    let value = serde_json::to_vec(&entry).map_err(anyhow::Error::new)?;
    let registered = match registry.create(warehouse.as_str(), value.into()).await {
        Ok(_) => "added",
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => "already there",
        Err(e) => {
            return Err(anyhow::anyhow!(
                "recording {warehouse} in bucket {}: {e}",
                subjects::SITES_BUCKET
            )
            .into())
        }
    };

    let source = if sourced {
        "already there"
    } else {
        // update_stream sends the whole config: everything else in it is kept as it is.
        config
            .sources
            .get_or_insert_with(Vec::new)
            .push(sites::source(warehouse));
        js.update_stream(&config).await.map_err(|e| {
            anyhow::anyhow!(
                "adding {warehouse}'s source to {}: {e}",
                subjects::INVENTORY_STREAM
            )
        })?;
        "added"
    };
    if ctx.json {
        output::json_line(&Added {
            warehouse: warehouse.as_str(),
            registry: registered,
            source,
        });
    } else {
        output::line(format!(
            "warehouse {warehouse} is an edge site: registry {registered}, source {source} \
             ({} from {})",
            subjects::INVENTORY_STREAM,
            subjects::domain_api(warehouse.as_str())
        ));
    }
    Ok(())
}

/// Prints refused-events.conf for the hub: one deny per site.
async fn conf(js: &async_nats::jetstream::Context) -> Outcome {
    let entries = sites::registry(js).await.map_err(anyhow::Error::new)?;
    let denied: Vec<String> = entries
        .iter()
        .map(|e| format!("{:?}", sites::refused_at_the_hub(&e.warehouse)))
        .collect();
    output::line(format!(
        "# Generated at the hub by `stockwire site conf` from the sites registry ({} site{}).\n\
         # Included by accounts.conf in the publish permissions of admin and cli: a site's\n\
         # events are recorded at its own server and reach the hub only by sourcing.\n\
         # Reload the hub after writing it (`nats-server --signal reload`, or SIGHUP).\n\
         deny: [{}]",
        entries.len(),
        if entries.len() == 1 { "" } else { "s" },
        denied.join(", ")
    ));
    Ok(())
}

async fn list(ctx: &Ctx, js: &async_nats::jetstream::Context, offline_after: Duration) -> Outcome {
    let states = sites::states(js).await.map_err(anyhow::Error::new)?;
    if ctx.json {
        for state in &states {
            output::json_line(&Shown {
                state,
                online: state.online(offline_after),
            });
        }
        return Ok(());
    }
    if states.is_empty() {
        output::line("no sites: every warehouse records at the hub");
        return Ok(());
    }
    let mut table = output::table([
        "site",
        "online",
        "last contact",
        "events at the hub",
        "behind",
        "problem",
    ]);
    for state in &states {
        let online = if state.online(offline_after) {
            "yes"
        } else {
            "NO"
        };
        let contact = match state.silent_ms {
            Some(ms) => format!("{} ago", ago(ms)),
            None => "never".into(),
        };
        let problem = match (&state.error, state.sourced) {
            (Some(e), _) => e.clone(),
            (None, false) => "no source in INVENTORY: run `stockwire site add` again".into(),
            (None, true) => String::new(),
        };
        table.add_row(vec![
            state.warehouse.to_string(),
            online.to_string(),
            contact,
            state.events.to_string(),
            state.lag.to_string(),
            problem,
        ]);
    }
    output::line(&table);
    Ok(())
}

/// A time since, to the unit that reads well: `800 ms`, `42 s`, `7 min`, `3 h`.
pub(crate) fn ago(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms} ms"),
        1_000..=119_999 => format!("{} s", ms / 1_000),
        120_000..=7_199_999 => format!("{} min", ms / 60_000),
        _ => format!("{} h", ms / 3_600_000),
    }
}
