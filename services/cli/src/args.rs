//! The arguments of `stockwire publish`: one event kind with its fields, or `--file`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use stockwire::domain::{
    parse_count_text, parse_time_ms, Command, Event, InvalidField, Location, Quantity, Reason, Sku,
    WarehouseId,
};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct PublishArgs {
    /// Import an NDJSON file of events, one a line ("-" reads standard input).
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// With --file: return once the stock view has applied every event of the file.
    #[arg(long, requires = "file")]
    pub wait: bool,
    /// With --file: how to write the events (auto: time both on the first lines, keep the
    /// faster).
    #[arg(long, value_enum, requires = "file", default_value = "auto")]
    pub write_method: crate::import::WriteMethod,
    #[command(subcommand)]
    pub kind: Option<PublishKind>,
}

/// Where the stock is: warehouse and product.
#[derive(Debug, Clone, Args)]
pub struct Product {
    /// Warehouse id, e.g. ams1.
    #[arg(short = 'w', long, value_parser = WarehouseId::parse)]
    pub warehouse: WarehouseId,
    /// Product SKU, e.g. apple.
    #[arg(short = 's', long, value_parser = Sku::parse)]
    pub sku: Sku,
}

/// Options every published event takes.
#[derive(Debug, Clone, Args)]
pub struct EventOpts {
    /// Id of the event; JetStream stores an id once inside the duplicate window
    /// (default: a new UUID).
    #[arg(long)]
    pub msg_id: Option<String>,
    /// When it happened: RFC 3339 (2026-11-20T12:00:00Z) or ms since the epoch (default: now).
    #[arg(long, value_name = "TIME", value_parser = parse_at)]
    pub at: Option<i64>,
    /// Return once the stock view has applied the event (read your own write).
    #[arg(long)]
    pub wait: bool,
    /// sold, moved, destroyed: record the fact as given, without checking the stock.
    #[arg(long)]
    pub force: bool,
}

fn parse_at(value: &str) -> Result<i64, InvalidField> {
    parse_time_ms("--at", value)
}

fn parse_count(value: &str) -> Result<u32, InvalidField> {
    parse_count_text(value)
}

#[derive(Debug, Subcommand)]
pub enum PublishKind {
    /// Units arrived at a location.
    Received {
        #[command(flatten)]
        product: Product,
        /// Location, e.g. A43.
        #[arg(short = 'l', long, value_parser = Location::parse)]
        location: Location,
        /// Units (a positive whole number).
        #[arg(short = 'q', long, allow_negative_numbers = true, value_parser = Quantity::parse)]
        quantity: Quantity,
        #[command(flatten)]
        opts: EventOpts,
    },
    /// Units left a location with a customer.
    Sold {
        #[command(flatten)]
        product: Product,
        #[arg(short = 'l', long, value_parser = Location::parse)]
        location: Location,
        #[arg(short = 'q', long, allow_negative_numbers = true, value_parser = Quantity::parse)]
        quantity: Quantity,
        #[command(flatten)]
        opts: EventOpts,
    },
    /// Units were thrown away.
    Destroyed {
        #[command(flatten)]
        product: Product,
        #[arg(short = 'l', long, value_parser = Location::parse)]
        location: Location,
        #[arg(short = 'q', long, allow_negative_numbers = true, value_parser = Quantity::parse)]
        quantity: Quantity,
        /// Why (at most 200 characters).
        #[arg(long, value_parser = Reason::parse)]
        reason: Reason,
        #[command(flatten)]
        opts: EventOpts,
    },
    /// Units went from one location to another.
    Moved {
        #[command(flatten)]
        product: Product,
        /// Location the units left.
        #[arg(long, value_parser = Location::parse)]
        from: Location,
        /// Location the units arrived at.
        #[arg(long, value_parser = Location::parse)]
        to: Location,
        #[arg(short = 'q', long, allow_negative_numbers = true, value_parser = Quantity::parse)]
        quantity: Quantity,
        #[command(flatten)]
        opts: EventOpts,
    },
    /// A count: the location holds exactly this many units (0 allowed).
    Corrected {
        #[command(flatten)]
        product: Product,
        #[arg(short = 'l', long, value_parser = Location::parse)]
        location: Location,
        /// Units counted (0 or more).
        #[arg(short = 'q', long, allow_negative_numbers = true, value_parser = parse_count)]
        quantity: u32,
        #[command(flatten)]
        opts: EventOpts,
    },
}

impl PublishKind {
    /// The command these arguments ask for, and its options. `--force` turns a checked
    /// kind into a fact recorded as given; on the others it is an error.
    pub fn into_command(self) -> Result<(Command, EventOpts), InvalidField> {
        let (command, opts) = match self {
            PublishKind::Received {
                product,
                location,
                quantity,
                opts,
            } => (
                Command::Receive {
                    warehouse: product.warehouse,
                    sku: product.sku,
                    location,
                    quantity,
                },
                opts,
            ),
            PublishKind::Corrected {
                product,
                location,
                quantity,
                opts,
            } => (
                Command::Correct {
                    warehouse: product.warehouse,
                    sku: product.sku,
                    location,
                    quantity,
                },
                opts,
            ),
            PublishKind::Sold {
                product,
                location,
                quantity,
                opts,
            } => (
                Command::Sell {
                    warehouse: product.warehouse,
                    sku: product.sku,
                    location,
                    quantity,
                },
                opts,
            ),
            PublishKind::Destroyed {
                product,
                location,
                quantity,
                reason,
                opts,
            } => (
                Command::Destroy {
                    warehouse: product.warehouse,
                    sku: product.sku,
                    location,
                    quantity,
                    reason,
                },
                opts,
            ),
            PublishKind::Moved {
                product,
                from,
                to,
                quantity,
                opts,
            } => {
                // Refused here, as bad input, rather than by the rule after a read.
                Event::moved(
                    product.warehouse.clone(),
                    product.sku.clone(),
                    from.clone(),
                    to.clone(),
                    quantity,
                )?;
                (
                    Command::Move {
                        warehouse: product.warehouse,
                        sku: product.sku,
                        from,
                        to,
                        quantity,
                    },
                    opts,
                )
            }
        };
        if !opts.force {
            return Ok((command, opts));
        }
        match command.forced() {
            Some(forced) => Ok((forced, opts)),
            None => Err(InvalidField::new(
                "--force",
                "only sold, moved and destroyed are checked; the others are always recorded",
            )),
        }
    }
}
