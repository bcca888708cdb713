//! `stockwire threshold set | list`: the low-stock and stockout thresholds, per product or
//! as the default for every product.
//!
//! A product's setting wins over `default`, which wins over the built-in values (low stock
//! below 10, stockout within 3 days). `set` changes only the values given and keeps the
//! rest, with a compare-and-set write so two people setting at once lose nothing.

use async_nats::jetstream::kv;
use clap::{Args, Subcommand};
use serde::Serialize;
use stockwire::domain::{
    Sku, Thresholds, WarehouseId, DEFAULT_LOW_STOCK_BELOW, DEFAULT_STOCKOUT_DAYS,
};
use stockwire::{subjects, view};

use crate::failure::{Failure, Outcome};
use crate::{output, Ctx};

#[derive(Debug, Args)]
pub struct ThresholdArgs {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Set a product's thresholds (-w W -s SKU) or the default (--default).
    Set {
        #[arg(short = 'w', long, value_parser = WarehouseId::parse, requires = "sku")]
        warehouse: Option<WarehouseId>,
        #[arg(short = 's', long, value_parser = Sku::parse, requires = "warehouse")]
        sku: Option<Sku>,
        /// Set the default for every product without its own.
        #[arg(long, conflicts_with_all = ["warehouse", "sku"])]
        default: bool,
        /// Announce low stock when on hand falls below this many units.
        #[arg(long, value_name = "N", allow_negative_numbers = true,
              value_parser = clap::value_parser!(i64).range(0..=i64::from(u32::MAX)))]
        low_stock_below: Option<i64>,
        /// Forecast a stockout when the stock covers fewer than this many days of sales.
        #[arg(long, value_name = "DAYS", value_parser = parse_days)]
        stockout_days: Option<f64>,
    },
    /// Every threshold set.
    List,
}

fn parse_days(value: &str) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(d) if d.is_finite() && d > 0.0 && d <= 365.0 => Ok(d),
        _ => Err(format!(
            "{value:?} is not a number of days between 0 and 365"
        )),
    }
}

#[derive(Serialize)]
struct Shown<'a> {
    key: &'a str,
    low_stock_below: i64,
    stockout_days: f64,
    set: Thresholds,
}

pub(crate) async fn run(ctx: &Ctx, args: ThresholdArgs) -> Outcome {
    match args.action {
        Action::Set {
            warehouse,
            sku,
            default,
            low_stock_below,
            stockout_days,
        } => {
            let key = match (warehouse, sku, default) {
                (Some(w), Some(s), false) => subjects::view_key(&w, &s),
                (None, None, true) => subjects::DEFAULT_THRESHOLD_KEY.to_string(),
                _ => {
                    return Err(Failure::invalid(
                        "whose threshold? give -w WAREHOUSE -s SKU, or --default",
                    ))
                }
            };
            if low_stock_below.is_none() && stockout_days.is_none() {
                return Err(Failure::invalid(
                    "nothing to set: give --low-stock-below N and/or --stockout-days DAYS",
                ));
            }
            let change = Thresholds {
                low_stock_below,
                stockout_days,
            };
            set(ctx, &key, change).await
        }
        Action::List => list(ctx).await,
    }
}

async fn bucket(ctx: &Ctx) -> Result<(async_nats::jetstream::Context, kv::Store), Failure> {
    let js = ctx.jetstream().await?;
    let kv = js
        .get_key_value(subjects::THRESHOLDS_BUCKET)
        .await
        .map_err(|e| anyhow::anyhow!("opening bucket thresholds (run `stockwire setup`?): {e}"))?;
    Ok((js, kv))
}

async fn set(ctx: &Ctx, key: &str, change: Thresholds) -> Outcome {
    let (_, kv) = bucket(ctx).await?;
    let value = merge(&kv, key, change).await?;
    let default = read(&kv, subjects::DEFAULT_THRESHOLD_KEY).await;
    show(ctx, &[(key.to_string(), value)], default.as_ref());
    Ok(())
}

/// Writes the fields `change` sets into threshold `key`, keeping the others; returns
/// what the key holds now.
pub(crate) async fn merge(
    kv: &kv::Store,
    key: &str,
    change: Thresholds,
) -> Result<Thresholds, Failure> {
    for _ in 0..10 {
        let entry = kv
            .entry(key)
            .await
            .map_err(|e| anyhow::anyhow!("reading threshold {key}: {e}"))?;
        let (mut value, revision) = match entry {
            Some(e) if e.operation == kv::Operation::Put => (
                serde_json::from_slice::<Thresholds>(&e.value).unwrap_or_default(),
                Some(e.revision),
            ),
            Some(e) => (Thresholds::default(), Some(e.revision)),
            None => (Thresholds::default(), None),
        };
        if change.low_stock_below.is_some() {
            value.low_stock_below = change.low_stock_below;
        }
        if change.stockout_days.is_some() {
            value.stockout_days = change.stockout_days;
        }
        let body = serde_json::to_vec(&value).map_err(|e| anyhow::anyhow!("encoding: {e}"))?;
        // Someone else writing it meanwhile is a conflict: read again and merge.
        let written = match revision {
            Some(r) => match kv.update(key, body.into(), r).await {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
                Err(e) => Err(e.to_string()),
            },
            None => match kv.create(key, body.into()).await {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(e.to_string()),
            },
        };
        match written {
            Ok(true) => return Ok(value),
            Ok(false) => continue,
            Err(e) => return Err(anyhow::anyhow!("writing threshold {key}: {e}").into()),
        }
    }
    Err(anyhow::anyhow!("threshold {key} kept changing under us; try again").into())
}

async fn read(kv: &kv::Store, key: &str) -> Option<Thresholds> {
    kv.get(key)
        .await
        .ok()
        .flatten()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

async fn list(ctx: &Ctx) -> Outcome {
    let (js, _) = bucket(ctx).await?;
    let mut all: Vec<(String, Thresholds)> = view::snapshot(&js, subjects::THRESHOLDS_BUCKET)
        .await
        .map_err(anyhow::Error::new)?;
    // The default first.
    all.sort_by_key(|(k, _)| (k != subjects::DEFAULT_THRESHOLD_KEY, k.clone()));
    let default = all
        .iter()
        .find(|(k, _)| k == subjects::DEFAULT_THRESHOLD_KEY)
        .map(|(_, t)| *t);
    if all.is_empty() && !ctx.json {
        output::line(format!(
            "no thresholds set: every product uses low stock below {DEFAULT_LOW_STOCK_BELOW}, stockout within {DEFAULT_STOCKOUT_DAYS} days"
        ));
        return Ok(());
    }
    show(ctx, &all, default.as_ref());
    Ok(())
}

fn show(ctx: &Ctx, rows: &[(String, Thresholds)], default: Option<&Thresholds>) {
    let effective = |key: &str, t: &Thresholds| {
        let fallback = if key == subjects::DEFAULT_THRESHOLD_KEY {
            None
        } else {
            default
        };
        (
            Thresholds::low_stock_below(Some(t), fallback),
            Thresholds::stockout_days(Some(t), fallback),
        )
    };
    if ctx.json {
        for (key, t) in rows {
            let (low, days) = effective(key, t);
            output::json_line(&Shown {
                key,
                low_stock_below: low,
                stockout_days: days,
                set: *t,
            });
        }
        return;
    }
    let mut table = output::table(["threshold", "low stock below", "stockout within (days)"]);
    for (key, t) in rows {
        let (low, days) = effective(key, t);
        let mark = |set: bool| if set { "" } else { " (inherited)" };
        table.add_row(vec![
            key.clone(),
            format!("{low}{}", mark(t.low_stock_below.is_some())),
            format!("{days}{}", mark(t.stockout_days.is_some())),
        ]);
    }
    output::line(&table);
}
