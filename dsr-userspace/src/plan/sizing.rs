//! How many slots each VIP's Maglev table has. A VIP's own `table_size`, else the top-level
//! `table_size`, else the smallest prime >= TABLE_SLOTS_PER_BACKEND x its configured backends
//! (backups and sorry included), capped by `max_table_slots`. All tables must fit in
//! `table_budget` with room to build the largest twice more beside them (a switch writes the
//! new table before it gives up the old one; the rest is slack against fragmentation). When
//! the default sizes do not fit, the slots per backend are lowered for all VIPs with default
//! sizes alike, so the sizes stay a function of the VIPs and these settings: every node with
//! the same builds the same tables.
//!
//! The size depends on the configured backends only: health, drain and weights never change
//! it. A size change re-maps nearly every new flow, which `dsr plan` says.

use dsr_common::{
    DEFAULT_MAX_TABLE_SLOTS, DEFAULT_TABLE_BUDGET, TABLE_CHUNK, TABLE_SLOTS_PER_BACKEND,
};
use serde::{Deserialize, Serialize};

use crate::spec::model::VipSpec;

/// Smallest table: Maglev needs a prime, and a few slots per backend at the least.
pub const MIN_TABLE_SIZE: u32 = 7;
/// Largest `max_table_slots` (512 MiB for one table).
pub const MAX_TABLE_SLOTS: u32 = 134_217_689;
/// Largest `table_budget` (1 GiB of tables).
pub const MAX_TABLE_BUDGET: u32 = 1 << 28;

/// The settings that size the tables (the config's `table_size`, `max_table_slots` and
/// `table_budget`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSizing {
    /// Every VIP's size unless it has its own (`None`: from its backends).
    pub default: Option<u32>,
    pub max_slots: u32,
    /// Slots of TABLES, shared by all VIPs.
    pub budget: u32,
}

impl TableSizing {
    /// What a config without these keys gets.
    pub const DEFAULT: TableSizing = TableSizing {
        default: None,
        max_slots: DEFAULT_MAX_TABLE_SLOTS,
        budget: DEFAULT_TABLE_BUDGET,
    };
}

impl Default for TableSizing {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Each VIP's size, and the slots per backend the default sizes were given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sized {
    pub sizes: Vec<u32>,
    pub per_backend: u32,
}

/// Why the VIPs' tables cannot be sized: which VIP (if one) and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsizable {
    pub vip: Option<usize>,
    pub message: String,
}

pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    (3..)
        .step_by(2)
        .take_while(|d: &u32| d.saturating_mul(*d) <= n)
        .all(|d| !n.is_multiple_of(d))
}

/// The smallest prime >= `n`.
pub fn prime_at_least(n: u32) -> u32 {
    (n..)
        .find(|&p| is_prime(p))
        .expect("a prime below u32::MAX")
}

/// The largest prime <= `n` (`n` >= 2).
pub fn prime_at_most(n: u32) -> u32 {
    (2..=n).rev().find(|&p| is_prime(p)).unwrap_or(2)
}

/// The default size for `backends` configured backends at `per_backend` slots each.
pub fn default_size(backends: usize, per_backend: u32, max_slots: u32) -> u32 {
    let want = (backends.max(1) as u64 * per_backend as u64)
        .max(backends as u64 + 1)
        .max(MIN_TABLE_SIZE as u64);
    let cap = prime_at_most(max_slots);
    if want >= cap as u64 {
        cap
    } else {
        prime_at_least(want as u32).min(cap)
    }
}

impl TableSizing {
    /// Checks the settings themselves.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if !(MIN_TABLE_SIZE..=MAX_TABLE_SLOTS).contains(&self.max_slots) {
            return Err((
                "max_table_slots",
                format!(
                    "max_table_slots {} must be {MIN_TABLE_SIZE}..={MAX_TABLE_SLOTS}",
                    self.max_slots
                ),
            ));
        }
        if !(TABLE_CHUNK..=MAX_TABLE_BUDGET).contains(&self.budget)
            || !self.budget.is_multiple_of(TABLE_CHUNK)
        {
            return Err((
                "table_budget",
                format!(
                    "table_budget {} must be a multiple of {TABLE_CHUNK} up to {MAX_TABLE_BUDGET} \
                     (slots of 4 bytes all VIPs' tables share)",
                    self.budget
                ),
            ));
        }
        if let Some(size) = self.default {
            table_size(size, self.max_slots).map_err(|m| ("table_size", m))?;
        }
        Ok(())
    }

    /// Every VIP's table size, in the order given.
    pub fn sizes(&self, vips: &[VipSpec]) -> Result<Sized, Unsizable> {
        let mut fixed = Vec::with_capacity(vips.len());
        for (i, v) in vips.iter().enumerate() {
            let size = v.table_size.or(self.default);
            if let Some(s) = size {
                let fail = |message| Unsizable {
                    vip: Some(i),
                    message,
                };
                table_size(s, self.max_slots).map_err(fail)?;
                if v.backends.len() >= s as usize {
                    return Err(fail(format!(
                        "VIP {} has {} backends; its table_size {s} must be larger",
                        v.name,
                        v.backends.len()
                    )));
                }
            }
            fixed.push(size);
        }
        let at = |k: u32| -> Vec<u32> {
            vips.iter()
                .zip(&fixed)
                .map(|(v, f)| {
                    f.unwrap_or_else(|| default_size(v.backends.len(), k, self.max_slots))
                })
                .collect()
        };
        let fits = |sizes: &[u32]| need(sizes) <= (self.budget / TABLE_CHUNK) as u64;
        let best = at(TABLE_SLOTS_PER_BACKEND);
        if fits(&best) {
            return Ok(Sized {
                sizes: best,
                per_backend: TABLE_SLOTS_PER_BACKEND,
            });
        }
        // The largest slots-per-backend that fits (fewer slots never need more room).
        let (mut lo, mut hi) = (1u32, TABLE_SLOTS_PER_BACKEND);
        if !fits(&at(lo)) {
            let least = at(lo);
            return Err(Unsizable {
                vip: None,
                message: format!(
                    "the VIPs' tables need {} slots (with room to rebuild the largest twice) but \
                     table_budget is {}: raise table_budget (fixed when the data path is \
                     created) or give VIPs smaller table_size",
                    need(&least) * TABLE_CHUNK as u64,
                    self.budget
                ),
            });
        }
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if fits(&at(mid)) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        Ok(Sized {
            sizes: at(lo),
            per_backend: lo,
        })
    }
}

/// TABLES elements all tables take, plus the largest twice more: once for the table a switch
/// writes beside the old one, once as slack so that freed runs still cooling and holes left
/// by earlier switches rarely stand in the way (see datapath::tables).
fn need(sizes: &[u32]) -> u64 {
    let chunks = sizes.iter().map(|&s| s.div_ceil(TABLE_CHUNK) as u64);
    chunks.clone().sum::<u64>() + 2 * chunks.max().unwrap_or(0)
}

/// A configured table size is usable.
pub fn table_size(size: u32, max_slots: u32) -> Result<(), String> {
    if !(MIN_TABLE_SIZE..=max_slots).contains(&size) || !is_prime(size) {
        return Err(format!(
            "table_size {size} must be a prime between {MIN_TABLE_SIZE} and max_table_slots \
             {max_slots} (Maglev needs a prime)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::model::{BackendSpec, VipSpec};

    fn vip(backends: usize, table_size: Option<u32>) -> VipSpec {
        let backend =
            |i: usize| BackendSpec::plain([198, 18, (i / 250) as u8, (i % 250 + 1) as u8].into());
        VipSpec {
            table_size,
            ..VipSpec::plain(
                "web",
                "192.0.2.10:80/tcp".parse().unwrap(),
                (0..backends).map(backend).collect(),
            )
        }
    }

    #[test]
    fn primes() {
        assert!(is_prime(65537) && is_prime(7) && is_prime(2) && is_prime(DEFAULT_MAX_TABLE_SLOTS));
        assert!(!is_prime(65536) && !is_prime(1) && !is_prime(9) && !is_prime(25));
        assert_eq!(prime_at_least(65536), 65537);
        assert_eq!(prime_at_most(65536), 65521);
    }

    #[test]
    fn the_default_follows_the_configured_backends() {
        let s = TableSizing::default();
        let sized = s
            .sizes(&[vip(100, None), vip(3, None), vip(0, None)])
            .unwrap();
        assert_eq!(sized.per_backend, TABLE_SLOTS_PER_BACKEND);
        assert_eq!(
            sized.sizes[0],
            prime_at_least(100 * TABLE_SLOTS_PER_BACKEND)
        );
        assert_eq!(sized.sizes[1], prime_at_least(3 * TABLE_SLOTS_PER_BACKEND));
        assert_eq!(sized.sizes[2], prime_at_least(TABLE_SLOTS_PER_BACKEND));
        // 1000 backends would want 32.5M slots: capped.
        let big = s.sizes(&[vip(1000, None)]).unwrap();
        assert_eq!(big.sizes[0], DEFAULT_MAX_TABLE_SLOTS);
    }

    #[test]
    fn own_and_top_level_sizes_win() {
        let s = TableSizing {
            default: Some(65537),
            ..TableSizing::default()
        };
        let sized = s.sizes(&[vip(10, None), vip(10, Some(251))]).unwrap();
        assert_eq!(sized.sizes, vec![65537, 251]);
        let e = s.sizes(&[vip(10, Some(65536))]).unwrap_err();
        assert_eq!(e.vip, Some(0));
        assert!(e.message.contains("prime"), "{}", e.message);
        let e = s.sizes(&[vip(10, Some(7))]).unwrap_err();
        assert!(e.message.contains("must be larger"), "{}", e.message);
    }

    #[test]
    fn a_tight_budget_lowers_every_default_size_alike() {
        let s = TableSizing {
            budget: 1 << 20,
            ..TableSizing::default()
        };
        let vips = [vip(10, None), vip(10, None), vip(4, None)];
        let sized = s.sizes(&vips).unwrap();
        assert!(sized.per_backend < TABLE_SLOTS_PER_BACKEND);
        assert!(need(&sized.sizes) <= (s.budget / TABLE_CHUNK) as u64);
        assert_eq!(sized.sizes[0], sized.sizes[1], "same backends, same size");
        // One more slot per backend would not fit.
        let more: Vec<u32> = vips
            .iter()
            .map(|v| default_size(v.backends.len(), sized.per_backend + 1, s.max_slots))
            .collect();
        assert!(need(&more) > (s.budget / TABLE_CHUNK) as u64);
        // Nothing fits a budget below the smallest tables.
        let tiny = TableSizing {
            budget: 16,
            ..TableSizing::default()
        };
        let e = tiny.sizes(&vips).unwrap_err();
        assert!(e.message.contains("table_budget"), "{}", e.message);
    }
}
