//! Commands that are checked against what a product holds: the pure
//! `decide(&Command, &Locations) -> Result<Vec<Event>, DomainError>`.
//!
//! A clerk asks; the aggregate's current state (its locations, folded from its own events
//! with `evolve`) answers. Receiving and counting are always allowed; selling, destroying,
//! moving and transferring out cannot take more than the location holds; a fact recorded
//! as given (`--force`, an import) is not checked.

use super::event::{Event, EventKind};
use super::ids::{Location, Quantity, Reason, Sku, TransferId, WarehouseId};
use super::stock::Locations;

/// Something a person or a script asks to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Receive {
        warehouse: WarehouseId,
        sku: Sku,
        location: Location,
        quantity: Quantity,
    },
    /// A count: the location holds exactly `quantity` units.
    Correct {
        warehouse: WarehouseId,
        sku: Sku,
        location: Location,
        quantity: u32,
    },
    Sell {
        warehouse: WarehouseId,
        sku: Sku,
        location: Location,
        quantity: Quantity,
    },
    Destroy {
        warehouse: WarehouseId,
        sku: Sku,
        location: Location,
        quantity: Quantity,
        reason: Reason,
    },
    Move {
        warehouse: WarehouseId,
        sku: Sku,
        from: Location,
        to: Location,
        quantity: Quantity,
    },
    /// Units leave `from_warehouse`/`from` for `to_warehouse`/`to` (decided on the source).
    Transfer {
        sku: Sku,
        from_warehouse: WarehouseId,
        from: Location,
        to_warehouse: WarehouseId,
        to: Location,
        quantity: Quantity,
        transfer_id: TransferId,
    },
    /// The out leg of a transfer to a warehouse recorded at another home (an edge site,
    /// or the hub from a site): units leave `from_warehouse`/`from`, checked against its
    /// stock; the destination records their arrival at its own home when they come
    /// (`stockwire transit receive`).
    Ship {
        sku: Sku,
        from_warehouse: WarehouseId,
        from: Location,
        to_warehouse: WarehouseId,
        quantity: Quantity,
        transfer_id: TransferId,
    },
    /// A fact recorded as given, without looking at the stock (`--force`).
    Record(Event),
}

/// Why a command is refused by a rule (not a technical failure, not a conflict).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("cannot {action} {quantity} {sku} at {warehouse}/{location}: only {on_hand} on hand")]
    InsufficientStock {
        action: &'static str,
        quantity: u32,
        sku: Sku,
        warehouse: WarehouseId,
        location: Location,
        on_hand: i64,
    },
    #[error("cannot move {sku} from {location} to {location}: it is the same location")]
    SameLocation { sku: Sku, location: Location },
    #[error(
        "cannot transfer {sku} from {warehouse} to {warehouse}: use a move inside a warehouse"
    )]
    SameWarehouse { sku: Sku, warehouse: WarehouseId },
}

impl Command {
    /// The warehouses whose events the command records (both ends of a transfer).
    pub fn warehouses(&self) -> Vec<&WarehouseId> {
        match self {
            Command::Transfer {
                from_warehouse,
                to_warehouse,
                ..
            } => vec![from_warehouse, to_warehouse],
            _ => vec![self.aggregate().0],
        }
    }

    /// The aggregate the command is decided on (the source, for a transfer).
    pub fn aggregate(&self) -> (&WarehouseId, &Sku) {
        match self {
            Command::Receive { warehouse, sku, .. }
            | Command::Correct { warehouse, sku, .. }
            | Command::Sell { warehouse, sku, .. }
            | Command::Destroy { warehouse, sku, .. }
            | Command::Move { warehouse, sku, .. } => (warehouse, sku),
            Command::Transfer {
                from_warehouse,
                sku,
                ..
            }
            | Command::Ship {
                from_warehouse,
                sku,
                ..
            } => (from_warehouse, sku),
            Command::Record(event) => (event.warehouse(), event.sku()),
        }
    }

    /// The kind of the (first) event the command records.
    pub fn kind(&self) -> EventKind {
        match self {
            Command::Receive { .. } => EventKind::Received,
            Command::Correct { .. } => EventKind::Corrected,
            Command::Sell { .. } => EventKind::Sold,
            Command::Destroy { .. } => EventKind::Destroyed,
            Command::Move { .. } => EventKind::Moved,
            Command::Transfer { .. } | Command::Ship { .. } => EventKind::TransferredOut,
            Command::Record(event) => event.kind(),
        }
    }

    /// Whether the decision depends on what the product holds (and so must be made
    /// against its latest event, and refused if another event came first).
    pub fn is_checked(&self) -> bool {
        matches!(
            self,
            Command::Sell { .. }
                | Command::Destroy { .. }
                | Command::Move { .. }
                | Command::Transfer { .. }
                | Command::Ship { .. }
        )
    }

    /// The same sale, breakage or move recorded as a fact, without looking at the stock
    /// (`--force`: it happened, whatever the books say). `None` for the other commands,
    /// which are recorded as given anyway (or, for a transfer, never unchecked).
    pub fn forced(self) -> Option<Command> {
        match self {
            Command::Sell { .. } | Command::Destroy { .. } | Command::Move { .. } => {
                self.into_events().pop().map(Command::Record)
            }
            _ => None,
        }
    }

    /// The events that record the command as asked, nothing checked.
    fn into_events(self) -> Vec<Event> {
        match self {
            Command::Receive {
                warehouse,
                sku,
                location,
                quantity,
            } => vec![Event::Received {
                warehouse,
                sku,
                location,
                quantity,
            }],
            Command::Correct {
                warehouse,
                sku,
                location,
                quantity,
            } => vec![Event::Corrected {
                warehouse,
                sku,
                location,
                quantity,
            }],
            Command::Sell {
                warehouse,
                sku,
                location,
                quantity,
            } => vec![Event::Sold {
                warehouse,
                sku,
                location,
                quantity,
            }],
            Command::Destroy {
                warehouse,
                sku,
                location,
                quantity,
                reason,
            } => vec![Event::Destroyed {
                warehouse,
                sku,
                location,
                quantity,
                reason,
            }],
            Command::Move {
                warehouse,
                sku,
                from,
                to,
                quantity,
            } => vec![Event::Moved {
                warehouse,
                sku,
                from,
                to,
                quantity,
            }],
            Command::Transfer {
                sku,
                from_warehouse,
                from,
                to_warehouse,
                to,
                quantity,
                transfer_id,
            } => vec![
                Event::TransferredOut {
                    warehouse: from_warehouse.clone(),
                    sku: sku.clone(),
                    location: from,
                    quantity,
                    to_warehouse: to_warehouse.clone(),
                    transfer_id: transfer_id.clone(),
                },
                Event::TransferredIn {
                    warehouse: to_warehouse,
                    sku,
                    location: to,
                    quantity,
                    from_warehouse,
                    transfer_id,
                },
            ],
            Command::Ship {
                sku,
                from_warehouse,
                from,
                to_warehouse,
                quantity,
                transfer_id,
            } => vec![Event::TransferredOut {
                warehouse: from_warehouse,
                sku,
                location: from,
                quantity,
                to_warehouse,
                transfer_id,
            }],
            Command::Record(event) => vec![event],
        }
    }

    /// The msg ids of the events the command records, given the one asked for: a
    /// transfer's are `{transfer_id}-out` and `{transfer_id}-in`, others keep `msg_id`.
    pub fn msg_ids(&self, msg_id: &str) -> Vec<String> {
        match self {
            Command::Transfer { transfer_id, .. } => {
                vec![format!("{transfer_id}-out"), format!("{transfer_id}-in")]
            }
            Command::Ship { transfer_id, .. } => vec![format!("{transfer_id}-out")],
            _ => vec![msg_id.to_string()],
        }
    }
}

fn take(
    action: &'static str,
    state: &Locations,
    warehouse: &WarehouseId,
    sku: &Sku,
    location: &Location,
    quantity: Quantity,
) -> Result<(), DomainError> {
    let on_hand = state.at(location);
    if i64::from(quantity.get()) > on_hand {
        return Err(DomainError::InsufficientStock {
            action,
            quantity: quantity.get(),
            sku: sku.clone(),
            warehouse: warehouse.clone(),
            location: location.clone(),
            on_hand,
        });
    }
    Ok(())
}

/// The events that record `command`, if the aggregate's `state` allows it.
pub fn decide(command: &Command, state: &Locations) -> Result<Vec<Event>, DomainError> {
    match command {
        Command::Sell {
            warehouse,
            sku,
            location,
            quantity,
        } => take("sell", state, warehouse, sku, location, *quantity)?,
        Command::Destroy {
            warehouse,
            sku,
            location,
            quantity,
            ..
        } => take("destroy", state, warehouse, sku, location, *quantity)?,
        Command::Move {
            warehouse,
            sku,
            from,
            to,
            quantity,
        } => {
            if from == to {
                return Err(DomainError::SameLocation {
                    sku: sku.clone(),
                    location: from.clone(),
                });
            }
            take("move", state, warehouse, sku, from, *quantity)?
        }
        Command::Transfer {
            sku,
            from_warehouse,
            from,
            to_warehouse,
            quantity,
            ..
        }
        | Command::Ship {
            sku,
            from_warehouse,
            from,
            to_warehouse,
            quantity,
            ..
        } => {
            if from_warehouse == to_warehouse {
                return Err(DomainError::SameWarehouse {
                    sku: sku.clone(),
                    warehouse: from_warehouse.clone(),
                });
            }
            take("transfer", state, from_warehouse, sku, from, *quantity)?
        }
        Command::Receive { .. } | Command::Correct { .. } | Command::Record(_) => {}
    }
    Ok(command.clone().into_events())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::evolve;

    fn w(s: &str) -> WarehouseId {
        WarehouseId::parse(s).unwrap()
    }
    fn apple() -> Sku {
        Sku::parse("apple").unwrap()
    }
    fn loc(s: &str) -> Location {
        Location::parse(s).unwrap()
    }
    fn q(n: u64) -> Quantity {
        Quantity::new(n).unwrap()
    }

    /// Given these events happened, the state they leave.
    fn given(events: &[Event]) -> Locations {
        events.iter().fold(Locations::default(), evolve)
    }

    fn received(n: u64) -> Event {
        Event::Received {
            warehouse: w("ams1"),
            sku: apple(),
            location: loc("A43"),
            quantity: q(n),
        }
    }

    fn sell(n: u64) -> Command {
        Command::Sell {
            warehouse: w("ams1"),
            sku: apple(),
            location: loc("A43"),
            quantity: q(n),
        }
    }

    #[test]
    fn selling_what_is_there_records_the_sale() {
        let state = given(&[received(5)]);
        let events = decide(&sell(5), &state).unwrap();
        assert_eq!(
            events,
            vec![Event::Sold {
                warehouse: w("ams1"),
                sku: apple(),
                location: loc("A43"),
                quantity: q(5)
            }]
        );
    }

    #[test]
    fn selling_more_than_is_there_is_refused_with_what_was_asked_and_what_is_there() {
        let state = given(&[received(2)]);
        let err = decide(&sell(5), &state).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot sell 5 apple at ams1/A43: only 2 on hand"
        );
        // Stock elsewhere in the warehouse does not count.
        let elsewhere = given(&[Event::Received {
            warehouse: w("ams1"),
            sku: apple(),
            location: loc("B1"),
            quantity: q(9),
        }]);
        assert!(decide(&sell(1), &elsewhere).is_err());
    }

    #[test]
    fn destroying_and_moving_are_bounded_too() {
        let state = given(&[received(3)]);
        let destroy = Command::Destroy {
            warehouse: w("ams1"),
            sku: apple(),
            location: loc("A43"),
            quantity: q(4),
            reason: Reason::parse("rotten").unwrap(),
        };
        assert_eq!(
            decide(&destroy, &state).unwrap_err().to_string(),
            "cannot destroy 4 apple at ams1/A43: only 3 on hand"
        );
        let mv = |to: &str, n| Command::Move {
            warehouse: w("ams1"),
            sku: apple(),
            from: loc("A43"),
            to: loc(to),
            quantity: q(n),
        };
        assert!(decide(&mv("G15", 3), &state).is_ok());
        assert!(decide(&mv("G15", 4), &state).is_err());
        assert!(matches!(
            decide(&mv("A43", 1), &state),
            Err(DomainError::SameLocation { .. })
        ));
    }

    #[test]
    fn receiving_counting_and_recorded_facts_are_never_refused() {
        let empty = Locations::default();
        let receive = Command::Receive {
            warehouse: w("ams1"),
            sku: apple(),
            location: loc("A43"),
            quantity: q(3),
        };
        assert_eq!(decide(&receive, &empty).unwrap(), vec![received(3)]);
        assert!(!receive.is_checked());
        let count = Command::Correct {
            warehouse: w("ams1"),
            sku: apple(),
            location: loc("A43"),
            quantity: 0,
        };
        assert_eq!(
            given(&decide(&count, &given(&[received(4)])).unwrap()).on_hand(),
            0
        );
        let forced = sell(9).forced().unwrap();
        assert!(receive.clone().forced().is_none());
        assert!(!forced.is_checked());
        assert_eq!(given(&decide(&forced, &empty).unwrap()).on_hand(), -9);
        assert!(sell(1).is_checked());
        assert_eq!(sell(1).msg_ids("m1"), vec!["m1".to_string()]);
    }

    #[test]
    fn a_transfer_is_two_events_decided_on_the_source() {
        let state = given(&[received(10)]);
        let transfer = |n| Command::Transfer {
            sku: apple(),
            from_warehouse: w("ams1"),
            from: loc("A43"),
            to_warehouse: w("rtm1"),
            to: loc("B2"),
            quantity: q(n),
            transfer_id: TransferId::parse("t1").unwrap(),
        };
        let events = decide(&transfer(4), &state).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].warehouse().as_str(), "ams1");
        assert_eq!(events[1].warehouse().as_str(), "rtm1");
        assert_eq!(given(&events[..1]).at(&loc("A43")), -4);
        assert_eq!(given(&events[1..]).at(&loc("B2")), 4);
        assert!(decide(&transfer(11), &state).is_err());
        assert_eq!(transfer(1).msg_ids("ignored"), vec!["t1-out", "t1-in"]);
    }

    #[test]
    fn a_shipment_to_another_home_is_the_out_leg_alone_decided_on_the_source() {
        let state = given(&[received(10)]);
        let ship = |n| Command::Ship {
            sku: apple(),
            from_warehouse: w("ams1"),
            from: loc("A43"),
            to_warehouse: w("rtm1"),
            quantity: q(n),
            transfer_id: TransferId::parse("t1").unwrap(),
        };
        let events = decide(&ship(4), &state).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind(), EventKind::TransferredOut);
        assert_eq!(given(&events).at(&loc("A43")), -4);
        assert!(decide(&ship(11), &state).is_err());
        assert_eq!(ship(1).msg_ids("ignored"), vec!["t1-out"]);
        assert_eq!(
            ship(1).warehouses().len(),
            1,
            "recorded at the source's home only"
        );
    }
}
