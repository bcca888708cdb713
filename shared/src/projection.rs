//! What a view is made of (a [`Projection`]: which events, which key, how an event
//! changes a value) and how its projector is set ([`Config`]). The loop that runs it is
//! `projector`; rebuilding it on request is `rebuild`.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::domain::Event;
use crate::envelope::{Envelope, Recorded};
use crate::partition::Partition;

/// What a view is made of: which events, which key, and how an event changes a value.
pub trait Projection: Send + Sync + 'static {
    type View: Serialize + DeserializeOwned + Clone + PartialEq + Send + Sync + std::fmt::Debug;

    /// The view's bucket, e.g. `stock`.
    fn bucket(&self) -> &'static str;
    /// The `INVENTORY` subjects it reads.
    fn filter(&self) -> String;
    /// The key of the view that `event` changes.
    fn key(&self, event: &Event) -> String;
    /// Applies the event stored at `seq` to the key's value (`None`: the key has none yet),
    /// unless the value already holds it. Returns whether it changed the value.
    fn apply(&self, view: &mut Option<Self::View>, recorded: &Recorded, seq: u64) -> bool;

    /// How long a value is kept once written (`None`: until changed). The bucket must allow
    /// per-message TTLs ([`ViewSpec::expires`](crate::views::ViewSpec)).
    fn expires(_view: &Self::View) -> Option<Duration>
    where
        Self: Sized,
    {
        None
    }

    /// How often values are re-evaluated as time passes (windows that slide); `None`: never.
    fn tick_every(&self) -> Option<Duration> {
        None
    }

    /// Re-evaluates a value as time passes. Returns whether it changed (then it is written).
    fn tick(&self, _view: &mut Self::View) -> bool {
        false
    }
}

/// Events a projector folds into one commit while it catches up, at most: its keys go
/// 999 to an atomic batch, a few batches in flight, and each commit ends with one more
/// round trip for the checkpoint, so larger commits catch up faster (20,000 rather than
/// 5,000: a tenth faster over 100,000 products).
pub const DEFAULT_MAX_BATCH: usize = 20_000;

/// Values a projector keeps in memory unless told otherwise (`--cache-keys`). A stock
/// value takes about half a kilobyte in memory (see the README's capacity model), so this
/// is about half a gigabyte at most; a partition with fewer keys is read whole at start
/// and never read again, as if there were no limit.
pub const DEFAULT_CACHE_KEYS: u64 = 1_000_000;

/// How a projector's work is split and how much of its view it keeps in memory: the
/// settings both projectors share.
#[derive(Debug, Clone, clap::Args)]
pub struct ScaleArgs {
    /// This instance's partition of the view's products, from 0 to --partitions - 1.
    #[arg(long, env = "STOCKWIRE_PARTITION", default_value_t = 0)]
    pub partition: u32,
    /// Into how many partitions the view's products are split (by warehouse and SKU);
    /// every partition needs an instance of its own.
    #[arg(long, env = "STOCKWIRE_PARTITIONS", default_value_t = 1)]
    pub partitions: u32,
    /// Values kept in memory, at most; keys beyond are read from the bucket as events
    /// need them, up to 1,024 to a request. 0: no limit.
    #[arg(long, env = "STOCKWIRE_CACHE_KEYS", default_value_t = DEFAULT_CACHE_KEYS)]
    pub cache_keys: u64,
}

impl Default for ScaleArgs {
    fn default() -> Self {
        Self {
            partition: 0,
            partitions: 1,
            cache_keys: DEFAULT_CACHE_KEYS,
        }
    }
}

impl ScaleArgs {
    /// The partition, or what is wrong with the two numbers.
    pub fn partition(&self) -> Result<Partition, String> {
        Partition::new(self.partition, self.partitions)
    }

    /// The most values kept in memory (`None`: no limit).
    pub fn cache_keys(&self) -> Option<usize> {
        (self.cache_keys > 0).then_some(self.cache_keys as usize)
    }
}

/// Settings of a projector.
#[derive(Debug, Clone)]
pub struct Config {
    pub envelope: Envelope,
    /// Events folded into one commit, at most (its keys are written 999 to an atomic batch).
    pub max_batch: usize,
    /// Time allowed for a commit's PubAck.
    pub commit_timeout: Duration,
    /// How long a live batch waits for more events before it commits (zero: commits what
    /// it has at once). A view that nobody waits on can trade freshness for fewer,
    /// larger commits: each small commit costs the server one fsync per key.
    pub live_linger: Duration,
    /// The share of the products this instance projects (default: all of them).
    pub partition: Partition,
    /// Values kept in memory, at most (`None`: every value of the partition).
    pub cache_keys: Option<usize>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            envelope: Envelope::default(),
            max_batch: DEFAULT_MAX_BATCH,
            commit_timeout: Duration::from_secs(10),
            live_linger: Duration::ZERO,
            partition: Partition::WHOLE,
            cache_keys: None,
        }
    }
}
