//! `stockwire bench`: launches `stockwire-bench`, the benchmark's own binary, from beside
//! this one, with the arguments given and this command's connection settings.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;

use crate::failure::{Failure, Outcome};
use crate::Ctx;

/// The benchmark's binary, looked for in the directory of this one.
const BINARY: &str = "stockwire-bench";

/// Everything after `bench` goes to `stockwire-bench` as given (`stockwire bench --help`
/// shows its flags).
#[derive(Debug, Args)]
#[command(disable_help_flag = true)]
pub struct BenchArgs {
    /// Flags of stockwire-bench: [--quick] [--rounds N] [--events N] [--products N]
    /// [--projection-products A,B] [--latency-seconds S] [--latency-rate R] [--skip-rebuild]
    /// [--report FILE] [--allow-existing].
    #[arg(
        value_name = "FLAGS",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub args: Vec<OsString>,
}

pub(crate) async fn run(ctx: &Ctx, args: BenchArgs) -> Outcome {
    let path = beside_this_binary()?;
    if !path.is_file() {
        return Err(anyhow::anyhow!(
            "{} is not there: build it (`cargo build --release -p stockwire-bench`, or \
             scripts/bench) and run it from the same directory as stockwire",
            path.display()
        )
        .into());
    }
    let mut command = std::process::Command::new(&path);
    command
        .envs(ctx.connect.env())
        .env("STOCKWIRE_HEADER_PREFIX", ctx.envelope.prefix());
    if ctx.json && !args.args.iter().any(|a| a == "--json") {
        command.arg("--json");
    }
    command.args(&args.args);
    launch(command, &path)
}

fn beside_this_binary() -> Result<PathBuf, Failure> {
    let exe = std::env::current_exe().context("finding the stockwire binary")?;
    Ok(exe.with_file_name(BINARY))
}

/// Becomes the bench: signals and the exit code are its own.
#[cfg(unix)]
fn launch(mut command: std::process::Command, path: &std::path::Path) -> Outcome {
    use std::os::unix::process::CommandExt as _;
    let error = command.exec();
    Err(anyhow::Error::new(error)
        .context(format!("running {}", path.display()))
        .into())
}

/// Runs the bench and exits with its exit code.
#[cfg(not(unix))]
fn launch(mut command: std::process::Command, path: &std::path::Path) -> Outcome {
    let status = command
        .status()
        .with_context(|| format!("running {}", path.display()))?;
    std::process::exit(status.code().unwrap_or(1))
}
