//! The events the figures publish: a day's trading of a warehouse, encoded with the
//! run's header prefix.

use stockwire::clock::{Clock as _, SystemClock};
use stockwire::domain::{Event, Location, Quantity, Sku, WarehouseId};
use stockwire::envelope::{EventMeta, Outbound};

use crate::Ctx;

/// A day's trading of a warehouse: mostly sales, some deliveries, a few moves.
pub(crate) fn sample_events(warehouse: &str, n: usize, products: usize) -> Vec<Event> {
    let warehouse = WarehouseId::parse(warehouse).ok();
    let skus: Vec<Sku> = (0..products)
        .filter_map(|p| Sku::parse(&format!("p{p}")).ok())
        .collect();
    let locations: Vec<Location> = ["A1", "A2", "B1"]
        .iter()
        .filter_map(|l| Location::parse(l).ok())
        .collect();
    let (Some(warehouse), false, 3) = (warehouse, skus.is_empty(), locations.len()) else {
        return Vec::new();
    };
    (0..n)
        .filter_map(|i| {
            let sku = skus[i % skus.len()].clone();
            let quantity = Quantity::new(1 + (i % 5) as u64).ok()?;
            let location = locations[i % 2].clone();
            Some(match i % 10 {
                0 | 1 => Event::Received {
                    warehouse: warehouse.clone(),
                    sku,
                    location,
                    quantity,
                },
                2 => Event::moved(
                    warehouse.clone(),
                    sku,
                    location,
                    locations[2].clone(),
                    quantity,
                )
                .ok()?,
                _ => Event::Sold {
                    warehouse: warehouse.clone(),
                    sku,
                    location,
                    quantity,
                },
            })
        })
        .collect()
}

pub(crate) fn encode_all(ctx: &Ctx, events: &[Event], id_prefix: &str) -> Vec<Outbound> {
    let now = SystemClock.now_ms();
    events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            ctx.envelope.encode(
                e,
                &EventMeta {
                    msg_id: format!("{id_prefix}-{i}"),
                    timestamp_ms: now,
                },
            )
        })
        .collect()
}
