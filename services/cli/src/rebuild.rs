//! `stockwire rebuild stock|velocity`: asks the running projector to rebuild its view from the log,
//! and shows its progress until it is done.
//!
//! The projector owns its view, so it does the work (see `stockwire::rebuild`); this
//! command sends the request and draws the progress it reports.

use std::time::Duration;

use clap::{Args, ValueEnum};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;

use stockwire::rebuild::{Progress, Report};
use stockwire::{subjects, view, views};

use crate::failure::{Failure, Outcome};
use crate::{output, Ctx};

/// How long to wait for the next word from the projector.
const SILENCE: Duration = Duration::from_secs(60);

/// How long every partition's projector has to say it has begun.
const FIRST_WORD: Duration = Duration::from_secs(10);

/// Time allowed for one read of the view's checkpoints.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ViewName {
    /// The stock view (stock-projector).
    Stock,
    /// The sales_velocity view (velocity-projector).
    Velocity,
    /// The transit view (transit-projector, in the stock-projector processes).
    Transit,
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
        ViewName::Transit => views::TRANSIT,
    };
    let (bucket, owner) = (spec.bucket, spec.owner);
    let client = ctx.client().await?;
    // Every partition of the view's current split answers, each for its own products.
    let partitions = view::position(&client, bucket, READ_TIMEOUT)
        .await
        .map_err(|e| anyhow::anyhow!("reading the checkpoints of the {bucket} view: {e}"))?
        .partitions;
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
    let mut states: BTreeMap<u32, Progress> = BTreeMap::new();
    // Each partition's last replay figures, kept while it writes.
    let mut replayed: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
    let answered_by = tokio::time::Instant::now() + FIRST_WORD;
    loop {
        // Each partition reports at once; one that does not has no active projector.
        let wait = if partitions > 1 && states.len() < partitions as usize {
            answered_by.saturating_duration_since(tokio::time::Instant::now())
        } else {
            SILENCE
        };
        let reply = match tokio::time::timeout(wait, replies.next()).await {
            Ok(Some(reply)) => reply,
            Ok(None) => {
                return Err(anyhow::anyhow!("the connection closed during the rebuild").into())
            }
            Err(_) if partitions > 1 && states.len() < partitions as usize => {
                bar.abandon();
                let silent: Vec<String> = (0..partitions)
                    .filter(|i| !states.contains_key(i))
                    .map(|i| i.to_string())
                    .collect();
                return Err(anyhow::anyhow!(
                    "no active {owner} answered for partition{} {} of {partitions}: start \
                     one with --partition N --partitions {partitions} and try again (the \
                     partitions that answered go on rebuilding)",
                    if silent.len() == 1 { "" } else { "s" },
                    silent.join(", ")
                )
                .into());
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
        let report: Report = serde_json::from_slice(&reply.payload).map_err(|e| {
            anyhow::anyhow!(
                "unexpected answer from {owner}: {e}: {}",
                String::from_utf8_lossy(&reply.payload)
            )
        })?;
        if report.partitions != partitions {
            tracing::warn!(
                partition = report.partition,
                partitions = report.partitions,
                "an instance of another split answered; ignoring it"
            );
            continue;
        }
        if let Progress::Failed { error } = &report.progress {
            bar.abandon();
            let which = if partitions > 1 {
                format!(" (partition {} of {partitions})", report.partition)
            } else {
                String::new()
            };
            return Err(Failure::from(anyhow::anyhow!(
                "{owner}{which} could not rebuild the {bucket} view: {error}"
            )));
        }
        if let Progress::Replaying { done, total } = report.progress {
            replayed.insert(report.partition, (done, total.max(done)));
        }
        states.insert(report.partition, report.progress);
        draw(&bar, &states, &replayed);
        let done: Vec<&Progress> = states
            .values()
            .filter(|p| matches!(p, Progress::Done { .. }))
            .collect();
        if done.len() == partitions as usize {
            bar.finish_and_clear();
            let total = summed(&done);
            if ctx.json {
                output::json_line(&total);
            } else if let Progress::Done {
                events,
                written,
                deleted,
                checkpoint,
                millis,
            } = total
            {
                output::line(format!(
                    "rebuilt the {bucket} view{}: {events} events replayed, {written} keys written, \
                     {deleted} deleted, checkpoint #{checkpoint}, in {:.1} s",
                    if partitions > 1 {
                        format!(" in {partitions} partitions")
                    } else {
                        String::new()
                    },
                    millis as f64 / 1000.0
                ));
            }
            return Ok(());
        }
    }
}

/// The progress of every partition as one bar: events replayed by all of them (each reads
/// the whole log), then the keys they write.
fn draw(bar: &ProgressBar, states: &BTreeMap<u32, Progress>, replayed: &BTreeMap<u32, (u64, u64)>) {
    let (mut done, mut total, mut writing) = (0, 0, 0);
    for (partition, progress) in states {
        match progress {
            Progress::Replaying { done: d, total: t } => {
                done += d;
                total += (*t).max(*d);
            }
            Progress::Writing { keys } => {
                // Its replay is over: all of it counts as done.
                let (_, t) = replayed.get(partition).copied().unwrap_or((0, 0));
                done += t;
                total += t;
                writing += keys;
            }
            Progress::Done { events, .. } => {
                done += events;
                total += events;
            }
            Progress::Failed { .. } => {}
        }
    }
    bar.set_length(total);
    bar.set_position(done);
    if writing > 0 {
        bar.set_message(format!("writing {writing} keys"));
    }
}

/// What every partition did, as one: the events each replayed, the keys all wrote and
/// deleted, the lowest checkpoint, and the longest time.
fn summed(done: &[&Progress]) -> Progress {
    let (mut events, mut written, mut deleted, mut checkpoint, mut millis) = (0, 0, 0, u64::MAX, 0);
    for progress in done {
        if let Progress::Done {
            events: e,
            written: w,
            deleted: d,
            checkpoint: c,
            millis: m,
        } = progress
        {
            events = events.max(*e);
            written += w;
            deleted += d;
            checkpoint = checkpoint.min(*c);
            millis = millis.max(*m);
        }
    }
    Progress::Done {
        events,
        written,
        deleted,
        checkpoint: if checkpoint == u64::MAX {
            0
        } else {
            checkpoint
        },
        millis,
    }
}
