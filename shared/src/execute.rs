//! The command executor: load the product, decide, append with expectations, and retry
//! with the same msg ids until the command is stored, refused, or contended.
//!
//! Every write of a fact goes through [`Executor::execute`]: the CLI's `publish` and
//! `transfer`, and anything else that records what happened. The decision is the pure
//! `domain::decide`; what a failed append calls for is `retry`'s rule; this file is the
//! loop between them.

use std::fmt;
use std::time::{Duration, Instant};

use async_nats::jetstream::Context;
use serde::Serialize;

use crate::aggregate::{self, expect_at, Aggregate};
use crate::batch;
use crate::domain::{decide, Command, DomainError};
use crate::envelope::{Envelope, EventMeta, Outbound};
use crate::error::Error;
use crate::read::ReadError;
use crate::retry::{AppendError, AppendErrorKind, Backoff, Next};

/// How long a command keeps deciding again against concurrent writers.
pub const CONTENDED_AFTER: Duration = Duration::from_secs(10);
/// How long a command keeps trying while the stream cannot take it (no leader during an
/// election, which takes 4 to 9 s after a node dies, plus a request timeout or two).
pub const UNAVAILABLE_FOR: Duration = Duration::from_secs(30);

/// What became of a command, for people and scripts (`--json` prints it as `outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Its events are stored now.
    Stored,
    /// An earlier attempt with the same msg id had stored them: nothing was stored again.
    AlreadyStored,
    /// A rule refused it; nothing was stored.
    Rejected,
    /// Other writers kept changing the product for the whole retry budget.
    Contended,
    /// NATS failed or refused the append.
    Failed,
}

/// A command whose events are in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Executed {
    /// `Stored` or `AlreadyStored`.
    pub outcome: Outcome,
    /// The stream sequence of each of its events, in the command's order.
    pub sequences: Vec<u64>,
}

/// Why a command was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandErrorKind {
    /// A domain rule refused it (the source is the `DomainError`).
    Rejected,
    /// The product changed under it on every attempt for [`CONTENDED_AFTER`].
    Contended,
    /// The product's events could not be read.
    Read,
    /// The append failed for this reason.
    Append(AppendErrorKind),
}

impl CommandErrorKind {
    /// The outcome a script sees.
    pub fn outcome(self) -> Outcome {
        match self {
            Self::Rejected => Outcome::Rejected,
            Self::Contended => Outcome::Contended,
            Self::Read | Self::Append(_) => Outcome::Failed,
        }
    }
}

impl fmt::Display for CommandErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rejected => f.write_str("refused"),
            Self::Contended => f.write_str("contended"),
            Self::Read => f.write_str("reading the product's events"),
            // The source (the append error) says why.
            Self::Append(_) => f.write_str("appending"),
        }
    }
}

pub type CommandError = Error<CommandErrorKind>;

impl From<ReadError> for CommandError {
    fn from(e: ReadError) -> Self {
        CommandError::with_source(CommandErrorKind::Read, e)
    }
}

impl From<AppendError> for CommandError {
    fn from(e: AppendError) -> Self {
        CommandError::with_source(CommandErrorKind::Append(e.kind()), e)
    }
}

fn rejected(e: DomainError) -> CommandError {
    CommandError::with_source(CommandErrorKind::Rejected, e)
}

/// Executes commands against the log.
#[derive(Clone)]
pub struct Executor {
    js: Context,
    envelope: Envelope,
    timeout: Duration,
    contended_after: Duration,
    unavailable_for: Duration,
}

/// One attempt's end: done, or try again (after a backoff).
enum Attempt {
    Done(Executed),
    Again(CommandError),
}

impl Executor {
    /// `timeout`: how long to wait for one acknowledgement.
    pub fn new(js: Context, envelope: Envelope, timeout: Duration) -> Self {
        Self {
            js,
            envelope,
            timeout,
            contended_after: CONTENDED_AFTER,
            unavailable_for: UNAVAILABLE_FOR,
        }
    }

    /// Records `command`: decided against the product's latest event when it is checked,
    /// appended expecting that event, and tried again with the same msg ids when another
    /// writer got in first or the server asks for a retry. `meta` gives the msg id (a
    /// transfer derives its two from its transfer id) and the event time.
    pub async fn execute(
        &self,
        command: &Command,
        meta: &EventMeta,
    ) -> Result<Executed, CommandError> {
        let started = Instant::now();
        let mut backoff = Backoff::new(Duration::from_millis(5), Duration::from_millis(250));
        let mut tries = 0u32;
        loop {
            tries += 1;
            let again = match self.attempt(command, meta).await {
                Ok(Attempt::Done(executed)) => return Ok(executed),
                Ok(Attempt::Again(why)) => why,
                // Reading the product fails while a stream or the meta leader is elected.
                Err(e) if e.kind() == CommandErrorKind::Read => e,
                Err(e) => return Err(e),
            };
            let conflict =
                matches!(again.kind(), CommandErrorKind::Append(k) if k.next() == Next::Decide);
            if conflict && started.elapsed() >= self.contended_after {
                return Err(CommandError::with_source(
                    CommandErrorKind::Contended,
                    format!(
                        "the product changed under it {tries} times in {} s; nothing was stored",
                        self.contended_after.as_secs()
                    ),
                ));
            }
            if !conflict && started.elapsed() >= self.unavailable_for {
                return Err(unavailable(again, self.unavailable_for));
            }
            tracing::debug!(tries, error = %again, "trying the command again");
            tokio::time::sleep(if conflict {
                backoff.next_delay()
            } else {
                // Waiting out an election: no point in asking many times a second.
                backoff.next_delay().max(Duration::from_millis(200))
            })
            .await;
        }
    }

    async fn attempt(&self, command: &Command, meta: &EventMeta) -> Result<Attempt, CommandError> {
        let ids = command.msg_ids(&meta.msg_id);
        let (warehouse, sku) = command.aggregate();
        let source = if command.is_checked() {
            aggregate::load(&self.js, &self.envelope, warehouse, sku).await?
        } else {
            Aggregate::default()
        };
        if let Some(seq) = ids.first().and_then(|id| source.stored(id)) {
            return Ok(Attempt::Done(already(seq, ids.len())));
        }
        let events = match decide(command, &source.locations) {
            Ok(events) => events,
            Err(refusal) => return self.refused(command, &ids, refusal).await,
        };
        let mut messages: Vec<Outbound> = events
            .iter()
            .zip(&ids)
            .map(|(event, id)| {
                let meta = EventMeta {
                    msg_id: id.clone(),
                    timestamp_ms: meta.timestamp_ms,
                };
                self.envelope.encode(event, &meta)
            })
            .collect();
        if command.is_checked() {
            for (out, event) in messages.iter_mut().zip(&events) {
                let (w, s) = (event.warehouse(), event.sku());
                let last_seq = if (w, s) == (warehouse, sku) {
                    source.last_seq
                } else {
                    aggregate::load(&self.js, &self.envelope, w, s)
                        .await?
                        .last_seq
                };
                expect_at(out, w, s, last_seq);
            }
        }
        let appended = self.append(messages).await;
        match appended {
            Ok(done) => Ok(Attempt::Done(done)),
            Err(e) if e.kind() == AppendErrorKind::BatchDuplicate => {
                // One of the events is stored already: an earlier attempt, outside
                // JetStream's duplicate window for single publishes.
                match self.find(command, &ids).await? {
                    Some(done) => Ok(Attempt::Done(done)),
                    None => Err(e.into()),
                }
            }
            Err(e) => match e.kind().next() {
                Next::Decide | Next::Retry => Ok(Attempt::Again(e.into())),
                Next::Fail => Err(e.into()),
            },
        }
    }

    /// A rule refused the command: unless an earlier attempt stored it (and so changed
    /// what the rule sees), that is the answer.
    async fn refused(
        &self,
        command: &Command,
        ids: &[String],
        refusal: DomainError,
    ) -> Result<Attempt, CommandError> {
        match self.find(command, ids).await? {
            Some(done) => Ok(Attempt::Done(done)),
            None => Err(rejected(refusal)),
        }
    }

    /// Looks for the command's first msg id in the product's whole history.
    async fn find(
        &self,
        command: &Command,
        ids: &[String],
    ) -> Result<Option<Executed>, CommandError> {
        let Some(first) = ids.first() else {
            return Ok(None);
        };
        let (warehouse, sku) = command.aggregate();
        let all = aggregate::load_all(&self.js, &self.envelope, warehouse, sku).await?;
        Ok(all.stored(first).map(|seq| already(seq, ids.len())))
    }

    /// Appends one event as a plain publish, or several as one atomic batch.
    async fn append(&self, mut messages: Vec<Outbound>) -> Result<Executed, AppendError> {
        if messages.len() == 1 {
            let Some(out) = messages.pop() else {
                return Err(AppendError::new(AppendErrorKind::BadAnswer));
            };
            let ack = batch::publish_acked(&self.js, out).await?;
            let outcome = if ack.duplicate {
                Outcome::AlreadyStored
            } else {
                Outcome::Stored
            };
            return Ok(Executed {
                outcome,
                sequences: vec![ack.sequence],
            });
        }
        let count = messages.len() as u64;
        let ack = batch::publish_atomic(&self.js.client(), messages, self.timeout).await?;
        Ok(Executed {
            outcome: Outcome::Stored,
            sequences: (ack.sequence + 1 - count..=ack.sequence).collect(),
        })
    }
}

/// A command that could not be stored for the whole budget because the stream could not
/// take it: in a cluster, most likely no leader right now.
fn unavailable(last: CommandError, budget: Duration) -> CommandError {
    let leaderless = matches!(
        last.kind(),
        CommandErrorKind::Append(AppendErrorKind::NoResponders)
    );
    let why = if leaderless {
        format!(
            "no leader for {} right now (tried for {} s; nothing was stored)",
            crate::subjects::INVENTORY_STREAM,
            budget.as_secs()
        )
    } else {
        format!("tried for {} s; nothing was stored", budget.as_secs())
    };
    last.context(why)
}

/// The command's events were stored before, from `first` on (a batch is contiguous).
fn already(first: u64, count: usize) -> Executed {
    Executed {
        outcome: Outcome::AlreadyStored,
        sequences: (first..first + count as u64).collect(),
    }
}
