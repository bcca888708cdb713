//! `stockwire stock [-w W] [-s SKU] [--as-of TIME]`: the `stock` view as a table.
//!
//! Without `--as-of` it reads the view that stock-projector keeps. With `--as-of TIME` it
//! replays the log instead, applying in stream order the events whose time is at or before
//! TIME with the same code the projector uses; the view is not touched.

use clap::Args;
use std::collections::HashMap;

use stockwire::domain::{
    days_of_cover, format_ms, parse_time_ms, InvalidField, Sku, StockView, VelocityView,
    WarehouseId,
};
use stockwire::{replay, subjects, view};

use crate::failure::Outcome;
use crate::{output, Ctx};

#[derive(Debug, Args)]
pub struct StockArgs {
    /// Only this warehouse.
    #[arg(short = 'w', long, value_parser = WarehouseId::parse)]
    warehouse: Option<WarehouseId>,
    /// Only this SKU.
    #[arg(short = 's', long, value_parser = Sku::parse)]
    sku: Option<Sku>,
    /// Stock as it was at TIME (RFC 3339 or ms since the epoch), replayed from the log.
    #[arg(long, value_name = "TIME", value_parser = parse_as_of)]
    as_of: Option<i64>,
}

fn parse_as_of(value: &str) -> Result<i64, InvalidField> {
    parse_time_ms("--as-of", value)
}

pub(crate) async fn run(ctx: &Ctx, args: StockArgs) -> Outcome {
    let js = ctx.jetstream().await?;
    let wanted = |v: &StockView| {
        args.warehouse.as_ref().is_none_or(|w| *w == v.warehouse)
            && args.sku.as_ref().is_none_or(|s| *s == v.sku)
    };
    let mut cover: Option<HashMap<String, f64>> = None;
    let (views, note) = match args.as_of {
        Some(at) => {
            let replayed = replay::stock(&js, &ctx.envelope, Some(at))
                .await
                .map_err(anyhow::Error::new)?;
            let note = format!(
                "as of {}: {} events replayed from the log",
                format_ms(at),
                replayed.applied
            );
            (
                replayed.book.into_views().filter(|v| wanted(v)).collect(),
                note,
            )
        }
        None => {
            let all: Vec<(String, StockView)> = view::snapshot(&js, subjects::STOCK_BUCKET)
                .await
                .map_err(anyhow::Error::new)?;
            let views: Vec<StockView> = all
                .into_iter()
                .map(|(_, v)| v)
                .filter(|v| wanted(v))
                .collect();
            let checkpoint = view::read_checkpoint(&js.client(), subjects::STOCK_BUCKET)
                .await
                .unwrap_or(0);
            // Days of cover, where the velocity view knows the rate of sale.
            let rates: Vec<(String, VelocityView)> = view::snapshot(&js, subjects::VELOCITY_BUCKET)
                .await
                .unwrap_or_default();
            if !rates.is_empty() {
                cover = Some(
                    rates
                        .into_iter()
                        .map(|(k, v)| (k, v.units_per_day))
                        .collect(),
                );
            }
            (views, format!("the stock view, up to event #{checkpoint}"))
        }
    };
    print(ctx, &views, &note, cover.as_ref());
    Ok(())
}

fn print(ctx: &Ctx, views: &[StockView], note: &str, cover: Option<&HashMap<String, f64>>) {
    if ctx.json {
        for v in views {
            output::json_line(v);
        }
        return;
    }
    if views.is_empty() {
        output::line(format!("no stock ({note})"));
        return;
    }
    let mut table = output::table(["warehouse", "sku", "on hand", "locations", "last event"]);
    if cover.is_some() {
        table.set_header([
            "warehouse",
            "sku",
            "on hand",
            "locations",
            "last event",
            "days of cover",
        ]);
    }
    for v in views {
        let locations: Vec<String> = v
            .locations
            .iter()
            .map(|(l, q)| format!("{l}: {q}"))
            .collect();
        let mut row = vec![
            v.warehouse.to_string(),
            v.sku.to_string(),
            v.on_hand.to_string(),
            locations.join(", "),
            format!("#{} {}", v.last_seq, format_ms(v.updated_ms)),
        ];
        if let Some(rates) = cover {
            let days = rates
                .get(&subjects::view_key(&v.warehouse, &v.sku))
                .and_then(|per_day| days_of_cover(v.on_hand, *per_day));
            row.push(days.map_or_else(|| "-".to_string(), |d| format!("{d:.1}")));
        }
        table.add_row(row);
    }
    output::line(&table);
    output::line(note);
}
