//! The views Stockwire keeps, in one list: each one's bucket, the events of record it is
//! made of, and the service that owns (and alone writes) it. Setup, status, rebuild,
//! verify and the projectors all read it from here.

use crate::domain::EventKind;
use crate::subjects;

/// One view: a KV bucket projected from `INVENTORY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewSpec {
    /// Its bucket, e.g. `stock`.
    pub bucket: &'static str,
    /// The service that projects it and answers its rebuild requests.
    pub owner: &'static str,
    /// What it holds, in a few words (the bucket's description).
    pub description: &'static str,
    /// The kinds of event it reads; none: every event of record.
    pub reads: &'static [EventKind],
    /// Whether its values may carry a time to live (the bucket allows per-message TTLs).
    pub expires: bool,
}

impl ViewSpec {
    /// The `INVENTORY` subjects its projector reads, separated by spaces when there are
    /// several (see `read::ordered_consumer`).
    pub fn filter(&self) -> String {
        if self.reads.is_empty() {
            return subjects::INVENTORY_SUBJECTS.to_string();
        }
        let filters: Vec<String> = self
            .reads
            .iter()
            .map(|kind| subjects::events_of_kind(*kind))
            .collect();
        filters.join(" ")
    }
}

/// Stock per product and location.
pub const STOCK: ViewSpec = ViewSpec {
    bucket: subjects::STOCK_BUCKET,
    owner: "stock-projector",
    description: "Stockwire view: stock per product and location",
    reads: &[],
    expires: false,
};

/// Units sold over the last hour, day and week.
pub const VELOCITY: ViewSpec = ViewSpec {
    bucket: subjects::VELOCITY_BUCKET,
    owner: "velocity-projector",
    description: "Stockwire view: units sold per hour, day, week",
    reads: &[EventKind::Sold],
    expires: false,
};

/// Transfers, one key per open transfer id (and those closed in the last week): what was
/// sent, what arrived. Projected by a loop
/// of its own in every stock-projector process (the lease picks one writer), named
/// `transit-projector` for its lease, rebuilds and the service API.
pub const TRANSIT: ViewSpec = ViewSpec {
    bucket: subjects::TRANSIT_BUCKET,
    owner: "transit-projector",
    description: "Stockwire view: transfers and their two legs",
    reads: &[EventKind::TransferredOut, EventKind::TransferredIn],
    // A transfer whose units all arrived is kept a week, then the server removes it.
    expires: true,
};

/// Every view, in the order they are shown.
pub const ALL: [ViewSpec; 3] = [STOCK, VELOCITY, TRANSIT];

/// The view kept in `bucket`, if it is one.
pub fn by_bucket(bucket: &str) -> Option<ViewSpec> {
    ALL.into_iter().find(|v| v.bucket == bucket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_view_reads_its_events_and_is_found_by_its_bucket() {
        assert_eq!(STOCK.filter(), "warehouse.*.product.*.*");
        assert_eq!(VELOCITY.filter(), "warehouse.*.product.*.sold");
        assert_eq!(
            TRANSIT.filter(),
            "warehouse.*.product.*.transferred_out warehouse.*.product.*.transferred_in"
        );
        assert_eq!(by_bucket("sales_velocity"), Some(VELOCITY));
        assert_eq!(by_bucket("thresholds"), None);
    }
}
