//! `stockwire rebuild stock|velocity`: asks the running projector to rebuild its view from the log,
//! and shows its progress until it is done.
//!
//! The projector owns its view, so it does the work (see `stockwire::rebuild`); this
//! command sends the request and draws the progress it reports.

use std::time::Duration;

use clap::{Args, ValueEnum};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use stockwire::rebuild::Progress;
use stockwire::{subjects, views};

use crate::failure::{Failure, Outcome};
use crate::{output, Ctx};

/// How long to wait for the next word from the projector.
const SILENCE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ViewName {
    /// The stock view (stock-projector).
    Stock,
    /// The sales_velocity view (velocity-projector).
    Velocity,
}

#[derive(Debug, Args)]
pub struct RebuildArgs {
    /// Which view.
    #[arg(value_enum)]
    view: ViewName,
}

pub(crate) async fn run(ctx: &Ctx, args: RebuildArgs) -> Outcome {
    let spec = match args.view {
        ViewName::Stock => views::STOCK,
        ViewName::Velocity => views::VELOCITY,
    };
    let (bucket, owner) = (spec.bucket, spec.owner);
    let client = ctx.client().await?;
    let inbox = client.new_inbox();
    let mut replies = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| anyhow::anyhow!("subscribing to {inbox}: {e}"))?;
    client
        .publish_with_reply(subjects::rebuild_requests(bucket), inbox, "".into())
        .await
        .map_err(|e| anyhow::anyhow!("asking {owner} to rebuild: {e}"))?;

    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{msg:9} [{bar:40}] {pos}/{len} events  {per_sec}  ETA {eta}")
            .map_err(|e| anyhow::anyhow!("progress bar: {e}"))?
            .progress_chars("=> "),
    );
    bar.set_message("replaying");
    loop {
        let reply = match tokio::time::timeout(SILENCE, replies.next()).await {
            Ok(Some(reply)) => reply,
            Ok(None) => {
                return Err(anyhow::anyhow!("the connection closed during the rebuild").into())
            }
            Err(_) => {
                bar.abandon();
                return Err(
                    anyhow::anyhow!("{owner} said nothing for {SILENCE:?}; see its log").into(),
                );
            }
        };
        if reply.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
            bar.finish_and_clear();
            return Err(anyhow::anyhow!(
                "no {owner} is running to rebuild the {bucket} view: start it (scripts/up) and try again"
            )
            .into());
        }
        let progress: Progress = serde_json::from_slice(&reply.payload).map_err(|e| {
            anyhow::anyhow!(
                "unexpected answer from {owner}: {e}: {}",
                String::from_utf8_lossy(&reply.payload)
            )
        })?;
        match progress {
            Progress::Replaying { done, total } => {
                bar.set_length(total.max(done));
                bar.set_position(done);
            }
            Progress::Writing { keys } => {
                bar.set_position(bar.length().unwrap_or(0));
                bar.set_message(format!("writing {keys} keys"));
            }
            Progress::Done {
                events,
                written,
                deleted,
                checkpoint,
                millis,
            } => {
                bar.finish_and_clear();
                if ctx.json {
                    output::json_line(&Progress::Done {
                        events,
                        written,
                        deleted,
                        checkpoint,
                        millis,
                    });
                } else {
                    output::line(format!(
                        "rebuilt the {bucket} view: {events} events replayed, {written} keys written, \
                         {deleted} deleted, checkpoint #{checkpoint}, in {:.1} s",
                        millis as f64 / 1000.0
                    ));
                }
                return Ok(());
            }
            Progress::Failed { error } => {
                bar.abandon();
                return Err(Failure::from(anyhow::anyhow!(
                    "{owner} could not rebuild the {bucket} view: {error}"
                )));
            }
        }
    }
}
