//! A transfer's two legs, as the in-transit view holds them: what was sent, what arrived,
//! and what that says (on its way, received, short, or a mismatch).
//!
//! Within one home the two legs are one atomic batch and the transfer is received the
//! moment it is recorded. Between two homes (an edge site and the hub, or two sites) the
//! out leg is recorded at the source's home and the arrival at the destination's, each
//! whenever it happens; the hub, which gets every home's events, pairs them here.

use serde::{Deserialize, Serialize};

use super::{Event, Sku, TransferId, WarehouseId};

/// One transfer, keyed by its id in the `transit` view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransitView {
    pub transfer_id: TransferId,
    pub sku: Sku,
    pub from_warehouse: WarehouseId,
    pub to_warehouse: WarehouseId,
    /// Units of the out leg (`None`: not here yet).
    pub sent: Option<u32>,
    /// When the out leg happened (ms since the epoch).
    pub sent_ms: Option<i64>,
    /// Units that arrived (`None`: no receipt yet).
    pub received: Option<u32>,
    pub received_ms: Option<i64>,
    /// The stream sequence of the last event applied.
    pub last_seq: u64,
}

/// What a transfer's legs say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransitState {
    /// Sent, not received yet.
    InTransit,
    /// Every unit sent arrived.
    Received,
    /// Fewer arrived than were sent: the rest is lost in transit.
    Short,
    /// More arrived than were sent.
    MoreThanSent,
    /// An arrival whose out leg is not here (yet): its home has not sent it.
    OutLegMissing,
}

impl TransitState {
    pub fn as_str(self) -> &'static str {
        match self {
            TransitState::InTransit => "in transit",
            TransitState::Received => "received",
            TransitState::Short => "short: lost in transit",
            TransitState::MoreThanSent => "MISMATCH: more received than sent",
            TransitState::OutLegMissing => "MISMATCH: received, its out leg not here (yet)",
        }
    }
}

impl TransitView {
    /// The view's value after `event` (stored at `seq`), from `view` (`None`: no leg yet).
    /// Returns whether it changed; an event already applied, or not a transfer's, changes
    /// nothing.
    pub fn apply(view: &mut Option<Self>, event: &Event, seq: u64, at_ms: i64) -> bool {
        if view.as_ref().is_some_and(|v| seq <= v.last_seq) {
            return false;
        }
        let (transfer_id, sku, from, to, units, out) = match event {
            Event::TransferredOut {
                warehouse,
                sku,
                to_warehouse,
                transfer_id,
                quantity,
                ..
            } => (
                transfer_id,
                sku,
                warehouse,
                to_warehouse,
                quantity.get(),
                true,
            ),
            Event::TransferredIn {
                warehouse,
                sku,
                from_warehouse,
                transfer_id,
                quantity,
                ..
            } => (
                transfer_id,
                sku,
                from_warehouse,
                warehouse,
                quantity.get(),
                false,
            ),
            _ => return false,
        };
        let value = view.get_or_insert_with(|| TransitView {
            transfer_id: transfer_id.clone(),
            sku: sku.clone(),
            from_warehouse: from.clone(),
            to_warehouse: to.clone(),
            sent: None,
            sent_ms: None,
            received: None,
            received_ms: None,
            last_seq: 0,
        });
        let (count, when) = if out {
            (&mut value.sent, &mut value.sent_ms)
        } else {
            (&mut value.received, &mut value.received_ms)
        };
        *count = Some(count.unwrap_or(0).saturating_add(units));
        *when = Some(at_ms);
        value.last_seq = seq;
        true
    }

    pub fn state(&self) -> TransitState {
        match (self.sent, self.received) {
            (Some(_), None) | (None, None) => TransitState::InTransit,
            (Some(s), Some(r)) if r == s => TransitState::Received,
            (Some(s), Some(r)) if r < s => TransitState::Short,
            (Some(_), Some(_)) => TransitState::MoreThanSent,
            (None, Some(_)) => TransitState::OutLegMissing,
        }
    }

    /// Units sent and never received (a short receipt).
    pub fn lost(&self) -> u32 {
        match (self.sent, self.received) {
            (Some(s), Some(r)) => s.saturating_sub(r),
            _ => 0,
        }
    }

    /// Still to be looked at: on its way, short, or mismatched.
    pub fn open(&self) -> bool {
        self.state() != TransitState::Received
    }

    /// Both legs are here: nothing more is expected of it (whole, short or not).
    pub fn closed(&self) -> bool {
        self.sent.is_some() && self.received.is_some()
    }

    /// Since the out leg (or the arrival, when only that is here), in ms.
    pub fn age_ms(&self, now_ms: i64) -> i64 {
        let since = self.sent_ms.or(self.received_ms).unwrap_or(now_ms);
        (now_ms - since).max(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Location, Quantity};

    fn out(q: u64) -> Event {
        Event::TransferredOut {
            warehouse: "nyc1".parse().unwrap(),
            sku: "pear".parse().unwrap(),
            location: Location::parse("A1").unwrap(),
            quantity: Quantity::new(q).unwrap(),
            to_warehouse: "ams1".parse().unwrap(),
            transfer_id: "t1".parse().unwrap(),
        }
    }

    fn arrived(q: u64) -> Event {
        Event::TransferredIn {
            warehouse: "ams1".parse().unwrap(),
            sku: "pear".parse().unwrap(),
            location: Location::parse("DOCK").unwrap(),
            quantity: Quantity::new(q).unwrap(),
            from_warehouse: "nyc1".parse().unwrap(),
            transfer_id: "t1".parse().unwrap(),
        }
    }

    #[test]
    fn the_legs_pair_in_either_order_and_each_counts_once() {
        let mut view = None;
        assert!(TransitView::apply(&mut view, &out(3), 5, 1_000));
        let v = view.clone().unwrap();
        assert_eq!(v.state(), TransitState::InTransit);
        assert_eq!(
            (v.from_warehouse.as_str(), v.to_warehouse.as_str()),
            ("nyc1", "ams1")
        );
        assert_eq!(v.age_ms(4_000), 3_000);
        assert!(!TransitView::apply(&mut view, &out(3), 5, 1_000), "seen");
        assert!(TransitView::apply(&mut view, &arrived(2), 9, 2_000));
        let v = view.unwrap();
        assert_eq!(v.state(), TransitState::Short);
        assert_eq!(v.lost(), 1);
        assert!(
            v.open() && v.closed(),
            "short: shown, and nothing more to come"
        );

        let mut view = None;
        assert!(TransitView::apply(&mut view, &arrived(3), 4, 2_000));
        assert_eq!(view.as_ref().unwrap().state(), TransitState::OutLegMissing);
        assert!(!view.as_ref().unwrap().closed());
        assert!(TransitView::apply(&mut view, &out(3), 7, 1_000));
        let v = view.unwrap();
        assert_eq!(v.state(), TransitState::Received);
        assert!(!v.open());
        assert_eq!(v.age_ms(5_000), 4_000, "from the out leg");
    }
}
