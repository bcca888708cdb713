//! `stockwire velocity [-w W] [-s SKU]`: the `sales_velocity` view, fastest first.

use clap::Args;
use stockwire::domain::{format_ms, Sku, VelocityView, WarehouseId};
use stockwire::{subjects, view};

use crate::failure::Outcome;
use crate::{output, Ctx};

#[derive(Debug, Args)]
pub struct VelocityArgs {
    /// Only this warehouse.
    #[arg(short = 'w', long, value_parser = WarehouseId::parse)]
    warehouse: Option<WarehouseId>,
    /// Only this SKU.
    #[arg(short = 's', long, value_parser = Sku::parse)]
    sku: Option<Sku>,
}

pub(crate) async fn run(ctx: &Ctx, args: VelocityArgs) -> Outcome {
    let js = ctx.jetstream().await?;
    let mut views: Vec<VelocityView> = view::snapshot(&js, subjects::VELOCITY_BUCKET)
        .await
        .map_err(anyhow::Error::new)?
        .into_iter()
        .map(|(_, v): (String, VelocityView)| v)
        .filter(|v| {
            args.warehouse.as_ref().is_none_or(|w| *w == v.warehouse)
                && args.sku.as_ref().is_none_or(|s| *s == v.sku)
        })
        .collect();
    // Fastest first: the last day, then the week, then the hour.
    views.sort_by(|a, b| {
        (b.sold_last_day, b.sold_last_week, b.sold_last_hour)
            .cmp(&(a.sold_last_day, a.sold_last_week, a.sold_last_hour))
            .then_with(|| (&a.warehouse, &a.sku).cmp(&(&b.warehouse, &b.sku)))
    });
    if ctx.json {
        for mut v in views {
            // The window buckets are the projector's working state, not the answer.
            v.minutes.clear();
            v.hours.clear();
            output::json_line(&v);
        }
        return Ok(());
    }
    if views.is_empty() {
        output::line("no sales in the last week");
        return Ok(());
    }
    let mut table = output::table([
        "warehouse",
        "sku",
        "last hour",
        "last day",
        "last week",
        "per day",
        "as of",
    ]);
    for v in &views {
        table.add_row(vec![
            v.warehouse.to_string(),
            v.sku.to_string(),
            v.sold_last_hour.to_string(),
            v.sold_last_day.to_string(),
            v.sold_last_week.to_string(),
            format!("{:.1}", v.units_per_day),
            format_ms(v.as_of_ms),
        ]);
    }
    output::line(&table);
    Ok(())
}
