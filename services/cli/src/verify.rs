//! `stockwire verify`: the `stock` view against a replay of the log in memory.
//!
//! Each key of the view is compared with the replay at that key's own `last_seq`, so a
//! projector that is still catching up (or running meanwhile) is not a difference. A key
//! the log has up to the view's checkpoint but the view lacks is one, and so is a key whose
//! event up to the checkpoint is not applied, or a key the log does not explain. Differences are listed; exit 3 if there is any.

use std::collections::BTreeMap;

use clap::Args;
use serde::Serialize;
use stockwire::domain::{StockBook, StockView};
use stockwire::read::Reader;
use stockwire::view::Position;
use stockwire::{subjects, view, views};

use crate::failure::{Failure, Kind, Outcome};
use crate::{output, Ctx};

#[derive(Debug, Args)]
pub struct VerifyArgs {}

/// Time allowed for one read of the view's checkpoints.
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, Serialize)]
struct Difference {
    key: String,
    problem: String,
    view: Option<StockView>,
    log: Option<StockView>,
}

pub(crate) async fn run(ctx: &Ctx, _args: VerifyArgs) -> Outcome {
    let js = ctx.jetstream().await?;
    // Each product is judged by the checkpoint of its own partition.
    let position = view::position(&js.client(), views::STOCK.bucket, READ_TIMEOUT)
        .await
        .map_err(|e| {
            anyhow::anyhow!("reading the stock view's checkpoints (run `stockwire setup`?): {e}")
        })?;
    let in_view: BTreeMap<String, StockView> = view::snapshot(&js, views::STOCK.bucket)
        .await
        .map_err(anyhow::Error::new)?
        .into_iter()
        .collect();

    // Replay, and compare each key when the replay reaches the view's last_seq for it.
    let mut reader = Reader::open(
        &js,
        subjects::INVENTORY_STREAM,
        subjects::INVENTORY_SUBJECTS,
        1,
    )
    .await
    .map_err(anyhow::Error::new)?;
    let mut book = StockBook::default();
    let mut checked: BTreeMap<String, Option<StockView>> = BTreeMap::new();
    let mut first_event: BTreeMap<String, u64> = BTreeMap::new();
    let mut last_within_checkpoint: BTreeMap<String, u64> = BTreeMap::new();
    let mut events = 0u64;
    while let Some(stored) = reader.next().await {
        let stored = stored.map_err(anyhow::Error::new)?;
        let Ok(rec) = ctx.envelope.decode_stored(&stored) else {
            continue;
        };
        events += 1;
        book.apply(&rec.event, stored.sequence, rec.meta.timestamp_ms);
        let key = subjects::view_key(rec.event.warehouse(), rec.event.sku());
        first_event.entry(key.clone()).or_insert(stored.sequence);
        if stored.sequence
            <= position.of_product(rec.event.warehouse().as_str(), rec.event.sku().as_str())
        {
            last_within_checkpoint.insert(key.clone(), stored.sequence);
        }
        if let Some(v) = in_view.get(&key) {
            if v.last_seq == stored.sequence {
                let replayed = book.get(rec.event.warehouse(), rec.event.sku()).cloned();
                checked.insert(key, replayed);
            }
        }
    }

    let mut differences = Vec::new();
    for (key, v) in &in_view {
        if let Some(&missed) = last_within_checkpoint.get(key).filter(|&&s| s > v.last_seq) {
            differences.push(Difference {
                key: key.clone(),
                problem: format!("event #{missed} is within the checkpoint but not applied"),
                view: Some(v.clone()),
                log: None,
            });
            continue;
        }
        match checked.get(key) {
            Some(Some(replayed)) if replayed == v => {}
            Some(replayed) => differences.push(Difference {
                key: key.clone(),
                problem: "differs from the log".into(),
                view: Some(v.clone()),
                log: replayed.clone(),
            }),
            None => differences.push(Difference {
                key: key.clone(),
                problem: format!("no event #{} of this product in the log", v.last_seq),
                view: Some(v.clone()),
                log: None,
            }),
        }
    }
    for replayed in book.views() {
        let key = subjects::view_key(&replayed.warehouse, &replayed.sku);
        // Missing only if the view's checkpoint says it applied the product's first event.
        let first = first_event.get(&key).copied().unwrap_or(u64::MAX);
        if !in_view.contains_key(&key)
            && first <= position.of_product(replayed.warehouse.as_str(), replayed.sku.as_str())
        {
            differences.push(Difference {
                key,
                problem: "missing from the view".into(),
                view: None,
                log: Some(replayed.clone()),
            });
        }
    }

    report(ctx, &differences, in_view.len(), events, &position);
    if differences.is_empty() {
        Ok(())
    } else {
        Err(Failure {
            kind: Kind::Rejected,
            error: anyhow::anyhow!(
                "the stock view differs from the log in {} key{}",
                differences.len(),
                if differences.len() == 1 { "" } else { "s" }
            ),
        })
    }
}

fn report(ctx: &Ctx, differences: &[Difference], keys: usize, events: u64, position: &Position) {
    let checkpoint = position.lowest();
    if ctx.json {
        for d in differences {
            output::json_line(d);
        }
        return;
    }
    if !differences.is_empty() {
        let mut table = output::table(["key", "problem", "view", "log"]);
        let show = |v: &Option<StockView>| {
            v.as_ref().map_or_else(String::new, |v| {
                let locations: Vec<String> = v
                    .locations
                    .iter()
                    .map(|(l, q)| format!("{l}: {q}"))
                    .collect();
                format!(
                    "on hand {} ({}) #{}",
                    v.on_hand,
                    locations.join(", "),
                    v.last_seq
                )
            })
        };
        for d in differences {
            table.add_row(vec![
                d.key.clone(),
                d.problem.clone(),
                show(&d.view),
                show(&d.log),
            ]);
        }
        output::line(&table);
    }
    output::line(format!(
        "verified {keys} keys of the stock view (checkpoint #{checkpoint}{}) against {events} events of the log: {}",
        if position.partitions > 1 {
            format!(", the lowest of {} partitions", position.partitions)
        } else {
            String::new()
        },
        if differences.is_empty() {
            "no differences".to_string()
        } else {
            format!("{} differences", differences.len())
        }
    ));
}
