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
        for sku in ["apple", "pear", "p17"] {
            assert!(of("ams1", sku, 4) < 4);
            assert_eq!(of("ams1", sku, 1), 0);
            assert_eq!(of("ams1", sku, 0), 0);
        }
    }
}
