//! `stockwire setup`: create or update the streams and buckets; safe to run again.

use std::time::Duration;

use clap::Args;
use serde::Serialize;
use stockwire::provision::{self, Options};

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
}

#[derive(Serialize)]
struct Line<'a> {
    stream: &'a str,
    what: &'a str,
    outcome: String,
}

pub(crate) async fn run(ctx: &Ctx, args: SetupArgs) -> Outcome {
    let js = ctx.jetstream().await?;
    let options = Options {
        duplicate_window: Duration::from_secs(args.duplicate_window_s),
        replicas: args.replicas.map(|n| n as usize),
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
