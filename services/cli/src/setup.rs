//! `stockwire setup`: create or update the streams and buckets; safe to run again.

use std::time::Duration;

use clap::Args;
use serde::Serialize;
use stockwire::domain::WarehouseId;
use stockwire::provision::{self, Options};
use stockwire::{sites, subjects};

use crate::failure::{Failure, Outcome};
use crate::{output, Ctx};

#[derive(Debug, Args)]
pub struct SetupArgs {
    /// How long JetStream remembers an event id to drop repeats, in seconds.
    #[arg(long, env = "STOCKWIRE_DUPLICATE_WINDOW_S", default_value_t = 120,
          value_parser = clap::value_parser!(u64).range(1..=7 * 24 * 3600))]
    duplicate_window_s: u64,
    /// Replicas of every stream and bucket (3 on a 3-node cluster). Without it, each
    /// existing stream keeps its count and new ones get 1; lowering it needs this flag.
    #[arg(long, env = "STOCKWIRE_REPLICAS", value_parser = clap::value_parser!(u64).range(1..=5))]
    replicas: Option<u64>,
    /// Set up an edge site's own server: the warehouse is the server's JetStream domain,
    /// and its `INVENTORY` holds that warehouse's events only (see `site/site.conf`).
    #[arg(long)]
    site: bool,
}

#[derive(Serialize)]
struct Line<'a> {
    stream: &'a str,
    what: &'a str,
    outcome: String,
}

pub(crate) async fn run(ctx: &Ctx, args: SetupArgs) -> Outcome {
    let js = ctx.jetstream().await?;
    let site = site_of(&js, args.site).await?;
    let options = Options {
        duplicate_window: Duration::from_secs(args.duplicate_window_s),
        replicas: args.replicas.map(|n| n as usize),
        site,
    };
    let report = match provision::provision(&js, &options).await {
        Ok(report) => report,
        Err(e) if args.replicas.is_some_and(|n| n > 1) && e.is_about_replicas() => {
            return Err(Failure::invalid(format!(
                "--replicas {}: {e} (a stream takes at most as many replicas as the cluster has \
                 JetStream servers; a single server takes 1)",
                args.replicas.unwrap_or(1)
            )))
        }
        Err(e) => return Err(anyhow::Error::new(e).into()),
    };
    if ctx.json {
        for c in &report {
            output::json_line(&Line {
                stream: &c.stream,
                what: &c.what,
                outcome: c.outcome.to_string(),
            });
        }
    } else {
        let mut table = output::table(["stream", "holds", "setup"]);
        for c in &report {
            table.add_row(vec![
                c.stream.clone(),
                c.what.clone(),
                c.outcome.to_string(),
            ]);
        }
        output::line(&table);
    }
    Ok(())
}

/// The warehouse whose site this server is, from its JetStream domain; checks that
/// `--site` is given exactly when the server is a site's.
async fn site_of(
    js: &async_nats::jetstream::Context,
    site: bool,
) -> Result<Option<WarehouseId>, Failure> {
    // A cluster that has just started answers once it has a meta leader: as provisioning
    // does, ask for a minute.
    let domain = sites::domain(js, Duration::from_secs(60))
        .await
        .map_err(anyhow::Error::new)?;
    match (domain.as_deref(), site) {
        (None, false) => Ok(None),
        (Some(subjects::HUB_DOMAIN), false) => Ok(None),
        (Some(domain), false) => Err(Failure::invalid(format!(
            "this server's JetStream domain is {domain:?}: it is an edge site's server; set it \
             up with `stockwire setup --site` (its INVENTORY then holds warehouse {domain}'s \
             events only)"
        ))),
        (None, true) => Err(Failure::invalid(
            "--site: this server has no JetStream domain; a site's server names its warehouse \
             with `jetstream { domain: <warehouse> }` (site/site.conf does)",
        )),
        (Some(subjects::HUB_DOMAIN), true) => Err(Failure::invalid(format!(
            "--site: this server's JetStream domain is {:?}, the hub's; run `stockwire setup` \
             here, and `stockwire setup --site` on the site's own server",
            subjects::HUB_DOMAIN
        ))),
        (Some(domain), true) => WarehouseId::parse(domain).map(Some).map_err(|e| {
            Failure::invalid(format!(
                "--site: this server's JetStream domain {domain:?} is not a warehouse id: {e}"
            ))
        }),
    }
}
