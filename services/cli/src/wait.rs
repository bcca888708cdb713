//! `--wait`: read your own write. Returns once the stock view has applied an event.

use std::time::{Duration, Instant};

use stockwire::{subjects, view};

use crate::failure::Outcome;
use crate::Ctx;

/// Waits until the stock view has applied the event stored at `seq`: its checkpoint is at
/// or past it (the checkpoint moves only once every key of the commit is stored).
pub(crate) async fn wait_applied(ctx: &Ctx, seq: u64) -> Outcome {
    let js = ctx.jetstream().await?;
    let kv = js
        .get_key_value(subjects::STOCK_BUCKET)
        .await
        .map_err(|e| anyhow::anyhow!("opening bucket stock (run `stockwire setup`?): {e}"))?;
    let deadline = Instant::now() + ctx.wait_timeout;
    loop {
        let applied = view::read_checkpoint(&kv)
            .await
            .map_err(|e| anyhow::anyhow!("reading the stock view's checkpoint: {e}"))?;
        if applied >= seq {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(anyhow::anyhow!(
                "event #{seq} is stored, but the stock view has not applied it within {} s \
                 (it is at #{applied}): is stock-projector running?",
                ctx.wait_timeout.as_secs()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
