//! Recording a command from the CLI: the event time checked against the server's clock,
//! then the command executor (`stockwire::execute`); with `--json`, a refusal is printed
//! on stdout too, with its outcome. `publish` and `transfer` both record this way.

use serde::Serialize;
use stockwire::domain::{Command, WarehouseId};
use stockwire::envelope::EventMeta;
use stockwire::execute::{Executed, Executor, Outcome as CommandOutcome};
use stockwire::sites::Home;

use crate::failure::Failure;
use crate::meta::{check_server_clock, server_now_ms};
use crate::{output, Ctx};

/// Checks the event time against the server's clock, then has the executor record the
/// command. With `--json`, a refusal is also printed on stdout with its outcome.
pub(crate) async fn execute(
    ctx: &Ctx,
    what: &str,
    command: &Command,
    meta: &EventMeta,
) -> Result<Executed, Failure> {
    let js = ctx.jetstream().await?;
    check_home(&js, command.warehouses()).await?;
    check_server_clock(what, meta.timestamp_ms, server_now_ms(&js).await?)?;
    let executor = Executor::new(js, ctx.envelope.clone(), ctx.connect.request_timeout());
    match executor.execute(command, meta).await {
        Ok(executed) => Ok(executed),
        Err(e) => {
            if ctx.json {
                output::json_line(&NotStored {
                    outcome: e.kind().outcome(),
                    error: e.to_string(),
                });
            }
            Err(e.into())
        }
    }
}

/// Refuses events of a warehouse recorded elsewhere: a site's at the hub, or another
/// warehouse's at a site (exit 2, nothing published).
pub(crate) async fn check_home(
    js: &async_nats::jetstream::Context,
    warehouses: Vec<&WarehouseId>,
) -> Result<(), Failure> {
    let home = Home::of(js).await.map_err(anyhow::Error::new)?;
    check_home_of(&home, warehouses).await
}

/// [`check_home`] against a home already asked for.
pub(crate) async fn check_home_of(
    home: &Home,
    warehouses: Vec<&WarehouseId>,
) -> Result<(), Failure> {
    for warehouse in warehouses {
        if let Some(why) = home.refuses(warehouse).await.map_err(anyhow::Error::new)? {
            return Err(Failure::invalid(format!("{why}; nothing was published")));
        }
    }
    Ok(())
}

/// A command that was not stored, as printed with `--json`.
#[derive(Serialize)]
struct NotStored {
    outcome: CommandOutcome,
    error: String,
}
