//! How a command fails, and the exit code each kind of failure maps to.
//!
//! 0 ok, 1 failure talking to NATS, 2 invalid input, 3 rejected by a domain rule or a
//! conflict (or, for `verify`, a view that differs from the log), 4 an event time ahead of
//! the server's clock. Every error of the command side maps to its code here, once.

use std::process::ExitCode;

use stockwire::execute::{CommandError, CommandErrorKind};
use stockwire::retry::{AppendError, AppendErrorKind};
use stockwire::subjects;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// NATS could not be reached, or answered with an error (exit 1).
    Nats,
    /// The input is wrong; nothing was published (exit 2).
    Invalid,
    /// A domain rule, a conflict or a check refused (exit 3).
    Rejected,
    /// The event time is more than 5 minutes ahead of the server's clock (exit 4).
    Clock,
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

    /// The error and its causes on one line, each said once: an error that already
    /// quotes its cause is not followed by it again.
    pub(crate) fn message(&self) -> String {
        let mut message = String::new();
        for cause in self.error.chain() {
            let text = cause.to_string();
            if message.contains(&text) {
                continue;
            }
            if !message.is_empty() {
                message.push_str(": ");
            }
            message.push_str(&text);
        }
        message
    }

    pub(crate) fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self.kind {
            Kind::Nats => 1,
            Kind::Invalid => 2,
            Kind::Rejected => 3,
            Kind::Clock => 4,
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

/// A command's events not stored: refused and contended are exit 3, the rest exit 1.
impl From<CommandError> for Failure {
    fn from(error: CommandError) -> Self {
        let kind = match error.kind() {
            CommandErrorKind::Rejected | CommandErrorKind::Contended => Kind::Rejected,
            // The stream answered the time check, so it exists: no leader, said so already.
            CommandErrorKind::Append(AppendErrorKind::NoResponders) => Kind::Nats,
            CommandErrorKind::Append(kind) => {
                return append_failure(kind, anyhow::Error::new(error))
            }
            CommandErrorKind::Read => Kind::Nats,
        };
        let error = match error.kind() {
            CommandErrorKind::Rejected => anyhow::anyhow!("{error}; nothing was stored"),
            _ => anyhow::Error::new(error),
        };
        Self { kind, error }
    }
}

/// An append that failed: explained for the usual causes.
impl From<AppendError> for Failure {
    fn from(error: AppendError) -> Self {
        append_failure(error.kind(), anyhow::Error::new(error))
    }
}

fn append_failure(kind: AppendErrorKind, error: anyhow::Error) -> Failure {
    match kind {
        AppendErrorKind::NoResponders => Failure::from(error.context(format!(
            "no stream stored it: run `stockwire setup` first (stream {}), \
             or, in a cluster, the stream has no leader right now",
            subjects::INVENTORY_STREAM
        ))),
        AppendErrorKind::TooLarge => Failure {
            kind: Kind::Invalid,
            error: error.context("the event is too large"),
        },
        _ => Failure::from(error),
    }
}
