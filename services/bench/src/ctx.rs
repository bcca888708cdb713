//! What every figure gets: the settings, a way to reach NATS, and the binaries beside
//! this one (`stockwire` and the services), run against the same server.

use std::path::PathBuf;

use anyhow::Context as _;
use stockwire::connect::{connect_with, ConnectArgs, Signals, Startup};
use stockwire::envelope::Envelope;

use crate::failure::Failure;

pub(crate) struct Ctx {
    pub(crate) connect: ConnectArgs,
    pub(crate) envelope: Envelope,
    pub(crate) json: bool,
    /// What the server refuses any of the bench's own connections.
    pub(crate) signals: Signals,
}

impl Ctx {
    /// Connects, failing at once with the reason when the server is not there.
    pub(crate) async fn client(&self) -> Result<async_nats::Client, Failure> {
        connect_with(
            &self.connect,
            "stockwire-bench",
            Startup::FailFast,
            &self.signals,
        )
        .await
        .map_err(|e| Failure::from(anyhow::Error::new(e)))
    }

    /// The binary `name`, built beside this one (as `cargo build --release` and
    /// `scripts/bench` leave them).
    pub(crate) fn binary(&self, name: &str) -> Result<PathBuf, Failure> {
        let exe = std::env::current_exe().context("finding the stockwire-bench binary")?;
        let path = exe.with_file_name(name);
        if !path.is_file() {
            return Err(anyhow::anyhow!(
                "{name} is not built beside {}: build the workspace's binaries (scripts/bench does)",
                exe.display()
            )
            .into());
        }
        Ok(path)
    }

    /// A command for the binary `name` that reaches the same server with the same
    /// credentials, TLS settings and header prefix as this run.
    pub(crate) fn command(&self, name: &str) -> Result<tokio::process::Command, Failure> {
        let mut command = tokio::process::Command::new(self.binary(name)?);
        command
            .envs(self.connect.env())
            .env("STOCKWIRE_HEADER_PREFIX", self.envelope.prefix());
        Ok(command)
    }
}
