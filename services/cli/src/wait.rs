//! `--wait`: read your own write. Returns once the stock view has applied an event.

use std::time::{Duration, Instant};

use stockwire::{subjects, view};

use crate::failure::Outcome;
use crate::Ctx;

/// Time allowed for one read of the view's checkpoints.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Waits until the stock view has applied the event stored at `seq` for each of
/// `products` (warehouse, SKU): the checkpoint of the partition each belongs to is at or
/// past it (a checkpoint moves only once every key of its commit is stored). With no
/// products named, every partition must be (an import).
pub(crate) async fn wait_applied(ctx: &Ctx, seq: u64, products: &[(&str, &str)]) -> Outcome {
    let client = ctx.client().await?;
    let deadline = Instant::now() + ctx.wait_timeout;
    loop {
        let position = view::position(&client, subjects::STOCK_BUCKET, READ_TIMEOUT)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "reading the stock view's checkpoints (run `stockwire setup`?): {e}"
                )
            })?;
        let applied = products
            .iter()
            .map(|(warehouse, sku)| position.of_product(warehouse, sku))
            .min()
            .unwrap_or_else(|| position.lowest());
        if applied >= seq {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(anyhow::anyhow!(
                "event #{seq} is stored, but the stock view has not applied it within {} s \
                 (it is at #{applied}): is stock-projector running{}?",
                ctx.wait_timeout.as_secs(),
                if position.partitions > 1 {
                    format!(" for each of its {} partitions", position.partitions)
                } else {
                    String::new()
                }
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
