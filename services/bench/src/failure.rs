//! How the bench fails, and the exit code each kind of failure maps to: 1 a failure
//! talking to NATS or running a binary, 2 invalid flags (nothing was measured).

use std::process::ExitCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// NATS, a child process or a file failed (exit 1).
    Run,
    /// The flags are wrong, or the server is not one to bench on (exit 2).
    Invalid,
}

/// A failed run: what kind of failure, and the whole story of it.
#[derive(Debug)]
pub(crate) struct Failure {
    kind: Kind,
    pub(crate) error: anyhow::Error,
}

impl Failure {
    pub(crate) fn invalid(message: impl std::fmt::Display) -> Self {
        Self {
            kind: Kind::Invalid,
            error: anyhow::anyhow!("{message}"),
        }
    }

    pub(crate) fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self.kind {
            Kind::Run => 1,
            Kind::Invalid => 2,
        })
    }
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Self {
            kind: Kind::Run,
            error,
        }
    }
}

/// The server refused something the bench needed: its words, exit 1.
impl From<stockwire::connect::Refused> for Failure {
    fn from(refused: stockwire::connect::Refused) -> Self {
        anyhow::Error::new(refused).into()
    }
}

impl From<stockwire::domain::InvalidField> for Failure {
    fn from(error: stockwire::domain::InvalidField) -> Self {
        Self::invalid(error)
    }
}

pub(crate) type Outcome = Result<(), Failure>;
