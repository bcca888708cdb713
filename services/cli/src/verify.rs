//! `stockwire verify`: the `stock` view, and the `transit` view, against a replay of the log
//! in memory.
//!
//! Each key of the view is compared with the replay at that key's own `last_seq`, so a
//! projector that is still catching up (or running meanwhile) is not a difference. A key
//! the log has up to the view's checkpoint but the view lacks is one, and so is a key whose
//! event up to the checkpoint is not applied, or a key the log does not explain. Differences are listed; exit 3 if there is any.
//! The in-transit view is checked the same way, except that a transfer with both legs may
//! be gone from it (its key expires a week after it closed).

use std::collections::BTreeMap;

use clap::Args;
use serde::Serialize;
use stockwire::domain::{StockBook, StockView, TransitView};
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
    let transit = transit(ctx, &js).await?;
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    match (differences.len(), transit) {
        (0, 0) => Ok(()),
        (stock, 0) => Err(Failure {
            kind: Kind::Rejected,
            error: anyhow::anyhow!(
                "the stock view differs from the log in {stock} key{}",
                plural(stock)
            ),
        }),
        (stock, transit) => Err(Failure {
            kind: Kind::Rejected,
            error: anyhow::anyhow!(
                "the views differ from the log: stock in {stock} key{}, transit in {transit} key{}",
                plural(stock),
                plural(transit)
            ),
        }),
    }
}

#[derive(Debug, Serialize)]
struct TransitDifference {
    view_name: &'static str,
    key: String,
    problem: String,
    view: Option<TransitView>,
    log: Option<TransitView>,
}

/// The in-transit view against a replay of the transfers; returns how many keys differ.
/// Nothing to check where there is no such view, or it is the hub's copy (an edge site).
async fn transit(ctx: &Ctx, js: &async_nats::jetstream::Context) -> Result<usize, Failure> {
    let bucket = views::TRANSIT.bucket;
    match js.get_stream(subjects::kv_stream(bucket)).await {
        Ok(stream) if stream.cached_info().config.mirror.is_none() => {}
        _ => return Ok(0),
    }
    let checkpoint = view::position(&js.client(), bucket, READ_TIMEOUT)
        .await
        .map_err(|e| anyhow::anyhow!("reading the transit view's checkpoint: {e}"))?
        .lowest();
    let in_view: BTreeMap<String, TransitView> = view::snapshot(js, bucket)
        .await
        .map_err(anyhow::Error::new)?
        .into_iter()
        .collect();
    let mut reader = Reader::open(js, subjects::INVENTORY_STREAM, &views::TRANSIT.filter(), 1)
        .await
        .map_err(anyhow::Error::new)?;
    let mut book: BTreeMap<String, Option<TransitView>> = BTreeMap::new();
    let mut checked: BTreeMap<String, Option<TransitView>> = BTreeMap::new();
    let mut last_within_checkpoint: BTreeMap<String, u64> = BTreeMap::new();
    let mut events = 0u64;
    while let Some(stored) = reader.next().await {
        let stored = stored.map_err(anyhow::Error::new)?;
        let Ok(rec) = ctx.envelope.decode_stored(&stored) else {
            continue;
        };
        let (stockwire::domain::Event::TransferredOut { transfer_id, .. }
        | stockwire::domain::Event::TransferredIn { transfer_id, .. }) = &rec.event
        else {
            continue;
        };
        events += 1;
        let key = transfer_id.to_string();
        let slot = book.entry(key.clone()).or_default();
        TransitView::apply(slot, &rec.event, stored.sequence, rec.meta.timestamp_ms);
        if stored.sequence <= checkpoint {
            last_within_checkpoint.insert(key.clone(), stored.sequence);
        }
        if in_view
            .get(&key)
            .is_some_and(|v| v.last_seq == stored.sequence)
        {
            checked.insert(key, slot.clone());
        }
    }
    let mut differences = Vec::new();
    let mut differ = |key: &str, problem: String, view: Option<&TransitView>, log| {
        differences.push(TransitDifference {
            view_name: bucket,
            key: key.to_string(),
            problem,
            view: view.cloned(),
            log,
        })
    };
    for (key, v) in &in_view {
        if let Some(&missed) = last_within_checkpoint.get(key).filter(|&&s| s > v.last_seq) {
            differ(
                key,
                format!("event #{missed} is within the checkpoint but not applied"),
                Some(v),
                None,
            );
            continue;
        }
        match checked.get(key) {
            Some(Some(replayed)) if replayed == v => {}
            Some(replayed) => differ(
                key,
                "differs from the log".into(),
                Some(v),
                replayed.clone(),
            ),
            None => differ(
                key,
                format!("no event #{} of this transfer in the log", v.last_seq),
                Some(v),
                None,
            ),
        }
    }
    for (key, replayed) in &book {
        let Some(replayed) = replayed else { continue };
        // A closed transfer's key expires; one still waiting for a leg must be there once
        // the checkpoint has passed its first event.
        if !replayed.closed()
            && !in_view.contains_key(key)
            && last_within_checkpoint.contains_key(key)
        {
            differ(
                key,
                "missing from the view".into(),
                None,
                Some(replayed.clone()),
            );
        }
    }
    if ctx.json {
        for d in &differences {
            output::json_line(d);
        }
    } else {
        for d in &differences {
            output::line(format!("transit {}: {}", d.key, d.problem));
        }
        output::line(format!(
            "verified {} keys of the transit view (checkpoint #{checkpoint}) against {events} transfer events of the log: {}",
            in_view.len(),
            if differences.is_empty() {
                "no differences".to_string()
            } else {
                format!("{} differences", differences.len())
            }
        ));
    }
    Ok(differences.len())
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
