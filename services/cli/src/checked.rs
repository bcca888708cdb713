//! Checked commands: decide against the aggregate, and let JetStream refuse a stale decision.
//!
//! Each attempt loads the aggregate from its own events, decides with the pure
//! `stockwire::domain::decide`, and publishes expecting the aggregate's last sequence.
//! A concurrent writer makes the publish fail; then the aggregate is loaded again and the
//! command decided again, with jittered backoff, until it is decided or 10 s have passed.
//! One msg id serves every attempt: if the reloaded aggregate already holds it (the
//! PubAck of an earlier attempt was lost), the command has succeeded.

use std::future::Future;
use std::time::{Duration, Instant};

use async_nats::jetstream::context::PublishErrorKind;
use stockwire::aggregate::{self, expect_at};
use stockwire::domain::{decide, Command, DomainError};
use stockwire::envelope::EventMeta;
use stockwire::retry::Backoff;

use crate::failure::{Failure, Kind};
use crate::publish::explain_publish;
use crate::Ctx;

/// How long a command keeps trying against concurrent writers.
const CONTENDED_AFTER: Duration = Duration::from_secs(10);

/// What one attempt came to.
pub(crate) enum Attempt<T> {
    Done(T),
    /// Another writer got in between: load again and decide again.
    Conflict,
}

/// Where the command's event is stored, and whether an earlier attempt had stored it.
pub(crate) struct Stored {
    pub(crate) seq: u64,
    pub(crate) earlier: bool,
}

pub(crate) fn refused(e: DomainError) -> Failure {
    Failure {
        kind: Kind::Rejected,
        error: anyhow::anyhow!("{e}; nothing was stored"),
    }
}

/// Runs `attempt` until it is done, a rule refuses it, or 10 s of conflicts have passed.
pub(crate) async fn until_decided<T, F, Fut>(what: &str, mut attempt: F) -> Result<T, Failure>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Attempt<T>, Failure>>,
{
    let deadline = Instant::now() + CONTENDED_AFTER;
    let mut backoff = Backoff::new(Duration::from_millis(5), Duration::from_millis(250));
    let mut tries = 0;
    loop {
        tries += 1;
        match attempt().await? {
            Attempt::Done(t) => return Ok(t),
            Attempt::Conflict if Instant::now() >= deadline => {
                return Err(Failure {
                    kind: Kind::Rejected,
                    error: anyhow::anyhow!(
                        "{what}: contended: the product changed under it {tries} times in {} s; nothing was stored",
                        CONTENDED_AFTER.as_secs()
                    ),
                })
            }
            Attempt::Conflict => tokio::time::sleep(backoff.next_delay()).await,
        }
    }
}

/// Publishes the single event of a checked sell, destroy or move.
pub(crate) async fn publish(
    ctx: &Ctx,
    js: &async_nats::jetstream::Context,
    command: &Command,
    meta: &EventMeta,
) -> Result<Stored, Failure> {
    let (warehouse, sku) = command.aggregate();
    until_decided("publish", || async {
        let current = aggregate::load(js, &ctx.envelope, warehouse, sku)
            .await
            .map_err(anyhow::Error::new)?;
        if let Some(seq) = current.stored(&meta.msg_id) {
            return Ok(Attempt::Done(Stored { seq, earlier: true }));
        }
        let events = decide(command, &current.locations).map_err(refused)?;
        let Some(event) = events.first() else {
            return Err(anyhow::anyhow!("the command decided no event").into());
        };
        let mut out = ctx.envelope.encode(event, meta);
        expect_at(&mut out, warehouse, sku, current.last_seq);
        let result = async {
            js.publish_with_headers(
                out.subject.clone(),
                out.headers.clone(),
                out.payload.clone(),
            )
            .await?
            .await
        }
        .await;
        match result {
            Ok(ack) => Ok(Attempt::Done(Stored {
                seq: ack.sequence,
                earlier: ack.duplicate,
            })),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(Attempt::Conflict),
            Err(e) => Err(explain_publish(e, &out.subject)),
        }
    })
    .await
}
