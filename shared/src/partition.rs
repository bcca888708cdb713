//! Which share of the products a partitioned projector owns: FNV-1a (32 bits) of a
//! product's warehouse and SKU written one after the other, modulo the number of
//! partitions. This is what nats-server's subject transform `{{partition(N,1,2)}}`
//! computes over the warehouse and SKU tokens of an event's subject, so a stream that
//! partitions by transform and the projectors agree on every product.

use crate::subjects;

const FNV_OFFSET: u32 = 0x811c_9dc5;
const FNV_PRIME: u32 = 0x0100_0193;

fn fnv1a32(parts: &[&str]) -> u32 {
    parts
        .iter()
        .flat_map(|part| part.bytes())
        .fold(FNV_OFFSET, |hash, byte| {
            (hash ^ u32::from(byte)).wrapping_mul(FNV_PRIME)
        })
}

/// The partition (of `partitions`, at least 1) of the product `sku` in `warehouse`.
pub fn of(warehouse: &str, sku: &str, partitions: u32) -> u32 {
    fnv1a32(&[warehouse, sku]) % partitions.max(1)
}

/// The partition of the event stored on `subject`, read from the subject alone (no
/// payload decoded); `None` for a subject that is not an event's.
pub fn of_subject(subject: &str, partitions: u32) -> Option<u32> {
    subjects::split_event(subject).map(|(warehouse, sku, _)| of(warehouse, sku, partitions))
}

/// The partition of a view's key `{warehouse}.{sku}`; `None` for a system key (`_...`)
/// or one of another shape.
pub fn of_key(key: &str, partitions: u32) -> Option<u32> {
    if key.starts_with('_') {
        return None;
    }
    let (warehouse, sku) = key.split_once('.')?;
    Some(of(warehouse, sku, partitions))
}

/// Most partitions a view may be split into.
pub const MAX_PARTITIONS: u32 = 1024;

/// One share of a view's products: partition `index` of `count`. One partition of one is
/// the whole view, kept under the plain `_checkpoint` key as before partitions existed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Partition {
    index: u32,
    count: u32,
}

impl Default for Partition {
    fn default() -> Self {
        Self::WHOLE
    }
}

impl std::fmt::Display for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "partition {} of {}", self.index, self.count)
    }
}

impl Partition {
    /// The whole view, unpartitioned.
    pub const WHOLE: Partition = Partition { index: 0, count: 1 };

    /// Partition `index` of `count`; says what is wrong with them otherwise.
    pub fn new(index: u32, count: u32) -> Result<Self, String> {
        if count == 0 || count > MAX_PARTITIONS {
            return Err(format!(
                "--partitions must be 1 to {MAX_PARTITIONS}, not {count}"
            ));
        }
        if index >= count {
            return Err(format!(
                "--partition must be below --partitions ({count}), not {index}: partitions are numbered from 0"
            ));
        }
        Ok(Self { index, count })
    }

    pub fn index(&self) -> u32 {
        self.index
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    /// Whether the event stored on `subject` is this partition's. A subject that is not
    /// an event's belongs to partition 0, so that exactly one instance dead-letters it.
    pub fn owns_subject(&self, subject: &str) -> bool {
        self.count == 1 || of_subject(subject, self.count).unwrap_or(0) == self.index
    }

    /// Whether the view's key is this partition's (system keys are no partition's).
    pub fn owns_key(&self, key: &str) -> bool {
        if self.count == 1 {
            return !key.starts_with('_');
        }
        of_key(key, self.count) == Some(self.index)
    }

    /// The key of this partition's checkpoint: `_checkpoint`, or `_checkpoint.p{index}`
    /// when the view is split.
    pub fn checkpoint_key(&self) -> String {
        checkpoint_key(self.index, self.count)
    }

    /// The name of the work this partition's instances share (and compete for with a
    /// lease): the owning service's name, with `.p{index}` when the view is split.
    pub fn job(&self, owner: &str) -> String {
        if self.count == 1 {
            owner.to_string()
        } else {
            format!("{owner}.p{}", self.index)
        }
    }
}

/// The checkpoint key of partition `index` of `count`.
pub fn checkpoint_key(index: u32, count: u32) -> String {
    if count <= 1 {
        subjects::CHECKPOINT_KEY.to_string()
    } else {
        format!("{}.p{index}", subjects::CHECKPOINT_KEY)
    }
}

/// The partition index a checkpoint key names (`_checkpoint`: 0); `None` for another key.
pub fn index_of_checkpoint_key(key: &str) -> Option<u32> {
    let rest = key.strip_prefix(subjects::CHECKPOINT_KEY)?;
    if rest.is_empty() {
        return Some(0);
    }
    rest.strip_prefix(".p")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a32_of_the_reference_vectors() {
        // From the FNV reference (draft-eastlake-fnv): "", "a", "foobar".
        assert_eq!(fnv1a32(&[""]), 0x811c_9dc5);
        assert_eq!(fnv1a32(&["a"]), 0xe40c_292c);
        assert_eq!(fnv1a32(&["foobar"]), 0xbf9c_f968);
        // The tokens are hashed as one string, with nothing between them.
        assert_eq!(fnv1a32(&["foo", "bar"]), fnv1a32(&["foobar"]));
    }

    #[test]
    fn a_product_has_one_partition_and_one_partition_means_all() {
        assert_eq!(
            of_subject("warehouse.ams1.product.apple.sold", 4),
            Some(of("ams1", "apple", 4))
        );
        assert_eq!(of_subject("alerts.low_stock.ams1.apple", 4), None);
        assert_eq!(of_key("ams1.apple", 4), Some(of("ams1", "apple", 4)));
        assert_eq!(of_key("_checkpoint.p1", 4), None);
        for sku in ["apple", "pear", "p17"] {
            assert!(of("ams1", sku, 4) < 4);
            assert_eq!(of("ams1", sku, 1), 0);
            assert_eq!(of("ams1", sku, 0), 0);
        }
    }

    #[test]
    fn partitions_are_checked_and_named() {
        assert!(Partition::new(0, 0).unwrap_err().contains("--partitions"));
        assert!(Partition::new(3, 3)
            .unwrap_err()
            .contains("numbered from 0"));
        let whole = Partition::WHOLE;
        assert_eq!(whole.checkpoint_key(), "_checkpoint");
        assert_eq!(whole.job("stock-projector"), "stock-projector");
        assert!(whole.owns_subject("not.an.event"));
        let p2 = Partition::new(2, 4).unwrap();
        assert_eq!(p2.checkpoint_key(), "_checkpoint.p2");
        assert_eq!(p2.job("stock-projector"), "stock-projector.p2");
        assert_eq!(index_of_checkpoint_key("_checkpoint.p2"), Some(2));
        assert_eq!(index_of_checkpoint_key("_checkpoint"), Some(0));
        assert_eq!(index_of_checkpoint_key("ams1.apple"), None);
        // A subject that is not an event's is partition 0's alone.
        assert!(!p2.owns_subject("warehouse.ams1.oops"));
        assert!(Partition::new(0, 4)
            .unwrap()
            .owns_subject("warehouse.ams1.oops"));
        let owners = (0..4)
            .filter(|i| Partition::new(*i, 4).unwrap().owns_key("ams1.apple"))
            .count();
        assert_eq!(owners, 1);
    }
}
