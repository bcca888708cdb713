//! How a command fails, and the exit code each kind of failure maps to.
//!
//! 0 ok, 1 failure talking to NATS, 2 invalid input, 3 rejected by a domain rule or a
//! conflict (or, for `verify`, a view that differs from the log).

use std::process::ExitCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// NATS could not be reached, or answered with an error (exit 1).
    Nats,
    /// The input is wrong; nothing was published (exit 2).
    Invalid,
    /// A domain rule, a conflict or a check refused (exit 3).
    Rejected,
}

/// A failed command: what kind of failure, and the whole story of it.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) kind: Kind,
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
            Kind::Nats => 1,
            Kind::Invalid => 2,
            Kind::Rejected => 3,
        })
    }
}

/// Errors from NATS, with their context, are failures of kind [`Kind::Nats`].
impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Self {
            kind: Kind::Nats,
            error,
        }
    }
}

/// The server refused something this command needed: its words, exit 1.
impl From<stockwire::connect::Refused> for Failure {
    fn from(refused: stockwire::connect::Refused) -> Self {
        Self {
            kind: Kind::Nats,
            error: anyhow::Error::new(refused),
        }
    }
}

impl From<stockwire::domain::InvalidField> for Failure {
    fn from(error: stockwire::domain::InvalidField) -> Self {
        Self::invalid(error)
    }
}

pub(crate) type Outcome = Result<(), Failure>;
