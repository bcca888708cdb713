//! `stockwire setup`: create or update the streams and buckets; safe to run again.

use std::time::Duration;

use clap::Args;
use serde::Serialize;
use stockwire::provision::{self, Options};

use crate::failure::Outcome;
use crate::{output, Ctx};

#[derive(Debug, Args)]
pub struct SetupArgs {
    /// How long JetStream remembers an event id to drop repeats, in seconds.
    #[arg(long, env = "STOCKWIRE_DUPLICATE_WINDOW_S", default_value_t = 120,
          value_parser = clap::value_parser!(u64).range(1..=7 * 24 * 3600))]
    duplicate_window_s: u64,
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
    };
    let report = provision::provision(&js, &options)
        .await
        .map_err(anyhow::Error::new)?;
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
