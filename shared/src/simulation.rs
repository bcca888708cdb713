//! What customers try to buy, for `stockwire simulate`: a planned demand that looks like a
//! business, the same for the same seed.
//!
//! - **Warehouses** are spread over time zones ([`SITES`]); each sells on its own local day.
//! - **Popularity**: a few products sell most. A product's share of a warehouse's demand
//!   follows a Zipf law (exponent [`ZIPF_EXPONENT`]) over its popularity rank; the ranks
//!   are shuffled by the seed, so `p0001` is not always the best seller.
//! - **The daily curve**: a warehouse's demand rises from a quiet night to a midday peak
//!   and eases in the evening ([`daily_curve`], local time), its average over a day 1.
//! - **Bursts**: now and then one warehouse's demand triples for a few minutes.
//!
//! Attempts come out in time order from one non-homogeneous Poisson process per
//! warehouse, drawn by thinning: candidates at the highest possible rate, each kept with
//! the probability of the rate at its time over that highest rate. Everything is drawn
//! from one seeded generator, in one order, so the same seed and settings give the same
//! attempts. What is sold of them depends on stock and timing; that is not planned here.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp, Zipf};

use crate::domain::{InvalidField, Quantity, Sku, WarehouseId};

/// Warehouse ids and their UTC offsets in hours, in the order they are taken.
pub const SITES: [(&str, i64); 8] = [
    ("ams1", 1),
    ("nyc1", -5),
    ("sin1", 8),
    ("lon1", 0),
    ("sfo1", -8),
    ("syd1", 10),
    ("fra1", 1),
    ("tyo1", 9),
];

/// The Zipf exponent of product popularity.
pub const ZIPF_EXPONENT: f64 = 1.1;

/// How much a burst multiplies a warehouse's demand.
const BURST_FACTOR: f64 = 3.0;

/// Bursts a warehouse has a day, on average.
const BURSTS_PER_DAY: f64 = 2.0;

/// How long a burst lasts, ms.
const BURST_MS: i64 = 10 * 60 * 1000;

const HOUR_MS: i64 = 60 * 60 * 1000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// Demand at each local hour, relative to a day's average (the 24 values average 1):
/// quiet at night, a peak at midday, a second smaller one after work.
const HOURLY: [f64; 24] = [
    0.15, 0.1, 0.1, 0.1, 0.15, 0.3, 0.6, 0.9, 1.2, 1.4, 1.6, 1.8, // 00-11
    2.0, 1.9, 1.7, 1.5, 1.4, 1.5, 1.6, 1.4, 1.1, 0.8, 0.5, 0.25, // 12-23
];

/// A warehouse of the simulated network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    pub warehouse: WarehouseId,
    /// Its time zone, hours from UTC.
    pub utc_offset_h: i64,
}

/// The first `n` warehouses of the network: the ids of [`SITES`], then the same cities
/// numbered on (`ams2`, `nyc2`, ...).
pub fn sites(n: usize) -> Result<Vec<Site>, InvalidField> {
    (0..n)
        .map(|i| {
            let (name, offset) = SITES[i % SITES.len()];
            let id = format!("{}{}", &name[..3], i / SITES.len() + 1);
            Ok(Site {
                warehouse: WarehouseId::parse(&id)?,
                utc_offset_h: offset,
            })
        })
        .collect()
}

/// The SKUs of the catalogue: `p0001`, `p0002`, ...
pub fn skus(n: usize) -> Result<Vec<Sku>, InvalidField> {
    let width = n.to_string().len().max(4);
    (1..=n)
        .map(|i| Sku::parse(&format!("p{i:0width$}")))
        .collect()
}

/// Demand at `at_ms` (UTC) in a time zone `utc_offset_h` hours from UTC, relative to the
/// day's average. Interpolated between the hours, so it has no steps.
pub fn daily_curve(at_ms: i64, utc_offset_h: i64) -> f64 {
    let local = (at_ms + utc_offset_h * HOUR_MS).rem_euclid(DAY_MS);
    let hour = (local / HOUR_MS) as usize;
    let into = (local % HOUR_MS) as f64 / HOUR_MS as f64;
    HOURLY[hour] * (1.0 - into) + HOURLY[(hour + 1) % 24] * into
}

/// One planned purchase: a customer at `warehouse` wants `quantity` of `sku` at `at_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub at_ms: i64,
    pub warehouse: WarehouseId,
    pub sku: Sku,
    pub quantity: Quantity,
}

/// The planned demand, in time order, for ever (take what a run needs).
pub struct Demand {
    rng: StdRng,
    sites: Vec<Site>,
    skus: Vec<Sku>,
    /// Popularity rank -> index in `skus`.
    ranks: Vec<usize>,
    zipf: Zipf<f64>,
    /// Attempts per ms at a warehouse on an average day.
    per_ms: f64,
    /// The highest rate any warehouse can reach: the thinning bound.
    bound: f64,
    gap: Exp<f64>,
    at_ms: f64,
    /// Per warehouse, when its current burst ends (ms; none yet: `i64::MIN`).
    burst_until: Vec<i64>,
    /// Per warehouse, when its next burst starts.
    next_burst: Vec<i64>,
    burst_gap: Exp<f64>,
}

impl Demand {
    /// Demand over `sites` and `skus`, `attempts_per_s` on average over a day across the
    /// whole network (simulated time), from `start_ms`, drawn from `seed`.
    pub fn new(
        seed: u64,
        sites: Vec<Site>,
        skus: Vec<Sku>,
        attempts_per_s: f64,
        start_ms: i64,
    ) -> Result<Self, String> {
        if sites.is_empty() || skus.is_empty() {
            return Err("a demand needs at least one warehouse and one SKU".into());
        }
        if !(attempts_per_s.is_finite() && attempts_per_s > 0.0) {
            return Err(format!(
                "the rate of demand must be a positive number, not {attempts_per_s}"
            ));
        }
        let mut rng = StdRng::seed_from_u64(seed);
        // A shuffle by the seed: which product is the best seller.
        let mut ranks: Vec<usize> = (0..skus.len()).collect();
        for i in (1..ranks.len()).rev() {
            let j = rng.random_range(0..=i);
            ranks.swap(i, j);
        }
        let zipf = Zipf::new(skus.len() as f64, ZIPF_EXPONENT).map_err(|e| e.to_string())?;
        let per_ms = attempts_per_s / 1000.0 / sites.len() as f64;
        let peak = HOURLY.iter().copied().fold(0.0, f64::max);
        let bound = per_ms * sites.len() as f64 * peak * BURST_FACTOR;
        let gap = Exp::new(bound).map_err(|e| e.to_string())?;
        let burst_gap = Exp::new(BURSTS_PER_DAY / DAY_MS as f64).map_err(|e| e.to_string())?;
        let next_burst = sites
            .iter()
            .map(|_| start_ms + burst_gap.sample(&mut rng) as i64)
            .collect();
        Ok(Self {
            burst_until: vec![i64::MIN; sites.len()],
            next_burst,
            rng,
            sites,
            skus,
            ranks,
            zipf,
            per_ms,
            bound,
            gap,
            at_ms: start_ms as f64,
            burst_gap,
        })
    }

    /// The rate of attempts at warehouse `w` at `at_ms`, per ms; starts and ends its bursts.
    fn rate(&mut self, w: usize, at_ms: i64) -> f64 {
        while at_ms >= self.next_burst[w] {
            self.burst_until[w] = self.next_burst[w] + BURST_MS;
            self.next_burst[w] += (self.burst_gap.sample(&mut self.rng) as i64).max(BURST_MS);
        }
        let burst = if at_ms < self.burst_until[w] {
            BURST_FACTOR
        } else {
            1.0
        };
        self.per_ms * daily_curve(at_ms, self.sites[w].utc_offset_h) * burst
    }
}

impl Iterator for Demand {
    type Item = Attempt;

    fn next(&mut self) -> Option<Attempt> {
        loop {
            self.at_ms += self.gap.sample(&mut self.rng);
            let at_ms = self.at_ms as i64;
            // A candidate at the network's highest rate: one warehouse's share of it,
            // kept in proportion to that warehouse's rate now.
            let w = self.rng.random_range(0..self.sites.len());
            let keep = self.rate(w, at_ms) * self.sites.len() as f64 / self.bound;
            if self.rng.random::<f64>() >= keep {
                continue;
            }
            let rank = (self.zipf.sample(&mut self.rng) as usize).clamp(1, self.skus.len()) - 1;
            let sku = self.skus[self.ranks[rank]].clone();
            // Most customers take one; some a few.
            let units = match self.rng.random_range(0..10) {
                0..=6 => 1,
                7 | 8 => 2,
                _ => self.rng.random_range(3..=6),
            };
            let quantity = Quantity::new(units).ok()?;
            return Some(Attempt {
                at_ms,
                warehouse: self.sites[w].warehouse.clone(),
                sku,
                quantity,
            });
        }
    }
}

/// Something the warehouse staff do besides selling, planned like the demand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chore {
    pub at_ms: i64,
    pub warehouse: WarehouseId,
    pub sku: Sku,
    pub kind: ChoreKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChoreKind {
    /// A cycle count of the product's shelf: it finds what the books say, shifted by
    /// `drift` (mostly 0; now and then a unit or two gone, rarely one found).
    Count { drift: i64 },
    /// Units broken, spoiled or lost, destroyed with a reason.
    Breakage {
        quantity: Quantity,
        reason: &'static str,
    },
    /// The warehouse stops replenishing the product: it sells out and stays out.
    Discontinue,
}

/// Why units are destroyed, as the staff write it.
pub const BREAKAGE_REASONS: [&str; 4] = [
    "damaged in handling",
    "dropped from a shelf",
    "past its best-before date",
    "packaging crushed in transit",
];

/// Cycle counts a product gets a day: each is counted about once a week.
const COUNTS_PER_PRODUCT_DAY: f64 = 1.0 / 7.0;

/// Breakages a warehouse has a day.
const BREAKAGES_PER_DAY: f64 = 3.0;

/// Discontinuations per product a day: a product lasts about 500 days.
const DISCONTINUED_PER_PRODUCT_DAY: f64 = 1.0 / 500.0;

/// The planned chores, in time order, for ever: cycle counts, breakage and
/// discontinuations. Drawn from their own generator, so adding them changed nothing of
/// the planned demand for a seed.
pub struct Chores {
    rng: StdRng,
    sites: Vec<Site>,
    skus: Vec<Sku>,
    /// Chores per ms over the network, and the share of each kind.
    gap: Exp<f64>,
    shares: [f64; 3],
    at_ms: f64,
}

impl Chores {
    pub fn new(seed: u64, sites: Vec<Site>, skus: Vec<Sku>, start_ms: i64) -> Result<Self, String> {
        if sites.is_empty() || skus.is_empty() {
            return Err("chores need at least one warehouse and one SKU".into());
        }
        let products = skus.len() as f64;
        let per_day = [
            products * COUNTS_PER_PRODUCT_DAY,
            BREAKAGES_PER_DAY,
            products * DISCONTINUED_PER_PRODUCT_DAY,
        ];
        let total: f64 = per_day.iter().sum();
        let gap =
            Exp::new(total * sites.len() as f64 / DAY_MS as f64).map_err(|e| e.to_string())?;
        Ok(Self {
            rng: StdRng::seed_from_u64(seed ^ 0x6368_6f72_6573),
            sites,
            skus,
            gap,
            shares: per_day.map(|d| d / total),
            at_ms: start_ms as f64,
        })
    }
}

impl Iterator for Chores {
    type Item = Chore;

    fn next(&mut self) -> Option<Chore> {
        self.at_ms += self.gap.sample(&mut self.rng);
        let warehouse = self.sites[self.rng.random_range(0..self.sites.len())]
            .warehouse
            .clone();
        let sku = self.skus[self.rng.random_range(0..self.skus.len())].clone();
        let pick: f64 = self.rng.random();
        let kind = if pick < self.shares[0] {
            let drift = match self.rng.random_range(0..20) {
                0 => -2,
                1 | 2 => -1,
                3 => 1,
                _ => 0,
            };
            ChoreKind::Count { drift }
        } else if pick < self.shares[0] + self.shares[1] {
            ChoreKind::Breakage {
                quantity: Quantity::new(self.rng.random_range(1..=2)).ok()?,
                reason: BREAKAGE_REASONS[self.rng.random_range(0..BREAKAGE_REASONS.len())],
            }
        } else {
            ChoreKind::Discontinue
        };
        Some(Chore {
            at_ms: self.at_ms as i64,
            warehouse,
            sku,
            kind,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_795_132_800_000; // 2026-11-20T00:00:00Z

    fn demand(seed: u64, warehouses: usize, per_s: f64) -> Demand {
        Demand::new(
            seed,
            sites(warehouses).unwrap(),
            skus(50).unwrap(),
            per_s,
            T0,
        )
        .unwrap()
    }

    #[test]
    fn the_same_seed_plans_the_same_demand_and_another_does_not() {
        let a: Vec<Attempt> = demand(7, 3, 5.0).take(500).collect();
        let b: Vec<Attempt> = demand(7, 3, 5.0).take(500).collect();
        let c: Vec<Attempt> = demand(8, 3, 5.0).take(500).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(
            a.windows(2).all(|w| w[0].at_ms <= w[1].at_ms),
            "in time order"
        );
    }

    #[test]
    fn a_day_holds_the_rate_asked_for() {
        // 2 attempts/s over the network for a day: about 172,800 (bursts add a little).
        let n = demand(1, 3, 2.0)
            .take_while(|a| a.at_ms < T0 + DAY_MS)
            .count() as f64;
        assert!((160_000.0..200_000.0).contains(&n), "{n}");
    }

    #[test]
    fn a_few_products_sell_most() {
        let mut counts = std::collections::HashMap::new();
        for a in demand(3, 1, 5.0).take(20_000) {
            *counts.entry(a.sku).or_insert(0u32) += 1;
        }
        let mut sorted: Vec<u32> = counts.values().copied().collect();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        let top5: u32 = sorted.iter().take(5).sum();
        assert!(
            top5 as f64 > 0.4 * 20_000.0,
            "the 5 best of 50 products take {top5} of 20,000 attempts"
        );
    }

    #[test]
    fn nights_are_quiet_and_middays_busy_in_each_warehouse_s_own_time() {
        // Over a week, attempts per local hour at ams1 (UTC+1) and sfo1 (UTC-8).
        let plan = Demand::new(
            5,
            vec![sites(1).unwrap()[0].clone(), sites(5).unwrap()[4].clone()],
            skus(50).unwrap(),
            4.0,
            T0,
        )
        .unwrap();
        let mut by_hour = [[0u32; 24]; 2];
        for a in plan.take_while(|a| a.at_ms < T0 + 7 * DAY_MS) {
            let (w, offset) = if a.warehouse.as_str() == "ams1" {
                (0, 1)
            } else {
                (1, -8)
            };
            let hour = ((a.at_ms + offset * HOUR_MS).rem_euclid(DAY_MS) / HOUR_MS) as usize;
            by_hour[w][hour] += 1;
        }
        for (w, hours) in by_hour.iter().enumerate() {
            let night: u32 = hours[1..5].iter().sum();
            let midday: u32 = hours[11..15].iter().sum();
            assert!(
                midday > 8 * night,
                "warehouse {w}: night {night}, midday {midday}"
            );
        }
    }

    #[test]
    fn the_curve_averages_one_and_has_no_steps() {
        let average: f64 = (0..24 * 60)
            .map(|m| daily_curve(T0 + m * 60_000, 0))
            .sum::<f64>()
            / (24.0 * 60.0);
        assert!((average - 1.0).abs() < 0.02, "{average}");
        let step = (0..24 * 60)
            .map(|m| {
                (daily_curve(T0 + (m + 1) * 60_000, 3) - daily_curve(T0 + m * 60_000, 3)).abs()
            })
            .fold(0.0, f64::max);
        assert!(step < 0.02, "{step}");
    }

    #[test]
    fn warehouses_and_skus_are_named_for_people() {
        let ids: Vec<String> = sites(10)
            .unwrap()
            .iter()
            .map(|s| s.warehouse.to_string())
            .collect();
        assert_eq!(&ids[..3], ["ams1", "nyc1", "sin1"]);
        assert_eq!(&ids[8..], ["ams2", "nyc2"]);
        assert_eq!(skus(3).unwrap()[2].as_str(), "p0003");
        assert!(Demand::new(1, vec![], skus(1).unwrap(), 1.0, T0).is_err());
        assert!(Demand::new(1, sites(1).unwrap(), skus(1).unwrap(), 0.0, T0).is_err());
    }

    #[test]
    fn chores_are_mostly_counts_that_mostly_agree() {
        let chores: Vec<Chore> = Chores::new(4, sites(3).unwrap(), skus(50).unwrap(), T0)
            .unwrap()
            .take_while(|c| c.at_ms < T0 + 28 * DAY_MS)
            .collect();
        let again: Vec<Chore> = Chores::new(4, sites(3).unwrap(), skus(50).unwrap(), T0)
            .unwrap()
            .take(chores.len())
            .collect();
        assert_eq!(chores, again, "the same seed, the same chores");
        let counts = chores
            .iter()
            .filter(|c| matches!(c.kind, ChoreKind::Count { .. }))
            .count();
        let drifted = chores
            .iter()
            .filter(|c| matches!(c.kind, ChoreKind::Count { drift } if drift != 0))
            .count();
        let broken = chores
            .iter()
            .filter(|c| matches!(c.kind, ChoreKind::Breakage { .. }))
            .count();
        // Four weeks: 150 products counted once a week; 3 warehouses break 3 things a day.
        assert!((520..=680).contains(&counts), "{counts} counts");
        assert!(
            drifted > 0 && drifted * 4 < counts,
            "{drifted} of {counts} drifted"
        );
        assert!((200..=310).contains(&broken), "{broken} breakages");
        assert!(chores.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
    }
}
