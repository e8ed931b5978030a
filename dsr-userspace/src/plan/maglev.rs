//! Maglev lookup-table population (Eisenbud et al., NSDI 2016, section 3.4), with weights.
//!
//! Pure and deterministic: the table depends only on the set of backends (their identity and
//! weight) and the table size, never on their order in the config or on the node, so every
//! load balancer of a deployment builds byte-identical tables and agrees on every flow.
//!
//! Weights: in each round every backend with the largest weight claims its next preferred
//! slot; a backend of weight w claims one only in rounds where it has not yet had its share
//! (`round * w >= claims * max_weight`), so it ends up with `w / sum(w)` of the slots. Integer
//! arithmetic only: floating point could round differently on another node.
//!
//! Backends that take no new flows for a while (down, drained, their agent said so) but stay
//! configured do not rebuild the table without them: [`build_around`] builds it *with* them
//! and lends only their slots to the others, slot by slot, in proportion to weight. Plain
//! Maglev moves some other slots too when its backend set changes (about 1.5x the ideal at
//! N = 100 and 3-6x at N = 1000 at the sizes dsr uses); lending moves exactly the failed
//! backend's share, in both directions, at any N.

use std::net::IpAddr;

use dsr_common::{addr_words, jhash2};

/// Slot value for "no backend" (only seen in tables of VIPs without backends, which are
/// never written: such a VIP gets table size 0).
pub const EMPTY: u32 = u32::MAX;

const OFFSET_SEED: u32 = 0x6d61_6731; // "mag1"
const SKIP_SEED: u32 = 0x6d61_6732; // "mag2"

/// One backend as the table builder sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    /// What identifies the backend across nodes: its address.
    pub address: IpAddr,
    /// What the table slots hold (the data path's backend id).
    pub id: u32,
    /// Relative share; 0 = not in the table.
    pub weight: u32,
}

/// Builds a table of `size` slots (a prime) holding backend ids. Backends of weight 0 get no
/// slots. Returns an empty vector when no backend has a weight.
pub fn build(entries: &[Entry], size: u32) -> Vec<u32> {
    assert!(size >= 2, "table size must be a prime >= 2");
    let mut backends: Vec<&Entry> = entries.iter().filter(|e| e.weight > 0).collect();
    if backends.is_empty() {
        return Vec::new();
    }
    // Deterministic order whatever the config order: by address (unique within a VIP).
    backends.sort_by_key(|e| e.address);
    let m = size as u64;
    let max_weight = backends.iter().map(|e| e.weight).max().unwrap_or(1) as u64;

    struct Walk {
        pos: u64,
        skip: u64,
        weight: u64,
        claimed: u64,
        id: u32,
    }
    let mut walks: Vec<Walk> = backends
        .iter()
        .map(|e| {
            let words = addr_words(e.address);
            let offset = jhash2(&words, OFFSET_SEED) as u64 % m;
            let skip = jhash2(&words, SKIP_SEED) as u64 % (m - 1) + 1;
            Walk {
                pos: offset,
                skip,
                weight: e.weight as u64,
                claimed: 0,
                id: e.id,
            }
        })
        .collect();

    let mut table = vec![EMPTY; size as usize];
    // Occupancy as a bitset (8 KiB for 65537 slots, so it stays in L1): most of the build is
    // probing taken slots near the end (about M ln M probes), and those probes then miss
    // neither L1 nor the 256 KiB table.
    let mut taken = vec![0u64; (size as usize).div_ceil(64)];
    let is_taken = |taken: &[u64], pos: u64| taken[(pos >> 6) as usize] & (1 << (pos & 63)) != 0;
    let mut filled = 0u64;
    let mut round = 0u64;
    'fill: loop {
        for w in walks.iter_mut() {
            if round * w.weight < w.claimed * max_weight {
                continue;
            }
            // Walk this backend's permutation (offset + j * skip mod M) to its next free slot.
            // M is prime, so the walk visits every slot and always finds one.
            // (pos < m and skip < m, so one conditional subtraction replaces a division.)
            while is_taken(&taken, w.pos) {
                w.pos += w.skip;
                if w.pos >= m {
                    w.pos -= m;
                }
            }
            table[w.pos as usize] = w.id;
            taken[(w.pos >> 6) as usize] |= 1 << (w.pos & 63);
            w.pos += w.skip;
            if w.pos >= m {
                w.pos -= m;
            }
            w.claimed += 1;
            filled += 1;
            if filled == m {
                break 'fill;
            }
        }
        round += 1;
    }
    table
}

const LEND_SEED: [u32; 2] = [0x6c65_6e31, 0x6c65_6e32]; // "len1", "len2"
/// Draws per lent slot among every configured backend before the slot goes to the taking
/// backend of the highest hash with it (rendezvous: again a choice that only changes when
/// that backend comes or goes). Only when most of the weight stands by: the chance of getting
/// there is (standby share)^64; there weights no longer count.
const LEND_DRAWS: u32 = 64;

/// The table of `taking` (the backends that take new flows now) built around `standby`
/// (backends configured beside them that take none now: down, drained, not resolved): the
/// table of both by [`build`], with each slot of a standby backend lent to a taking one. A
/// lent slot draws from all of them by weight, with a sequence of its own (a hash of the slot
/// and the draw), until it draws a taking backend: so the borrowers are spread by weight, a
/// slot's borrower depends only on which backends take flows and never on the order of
/// events, and a backend that comes back gets exactly its own slots back. Same inputs, same
/// table, on every node. Empty when no taking backend has a weight.
pub fn build_around(taking: &[Entry], standby: &[Entry], size: u32) -> Vec<u32> {
    let lenders: Vec<&Entry> = standby.iter().filter(|e| e.weight > 0).collect();
    if lenders.is_empty() || taking.iter().all(|e| e.weight == 0) {
        return build(taking, size);
    }
    let mut all: Vec<Entry> = taking
        .iter()
        .chain(lenders.iter().copied())
        .copied()
        .collect();
    let mut table = build(&all, size);
    // The draw: every backend of weight > 0 by address, as ranges of a cumulative sum of
    // the weights over their greatest common divisor (like build, the table then depends on
    // weight ratios only: weights x load step 8/8 give the configured weights' table).
    all.retain(|e| e.weight > 0);
    all.sort_by_key(|e| e.address);
    let gcd = all.iter().fold(0, |g, e| gcd(g, e.weight));
    for e in &mut all {
        e.weight /= gcd;
    }
    let lent = Lent::new(lenders.iter().map(|e| e.id));
    let draws = Draws::new(&all, &lent);
    let takers: Vec<(u32, [u32; 4])> = all
        .iter()
        .filter(|e| !lent.contains(e.id))
        .map(|e| (e.id, addr_words(e.address)))
        .collect();
    if takers.is_empty() {
        // Only when an id is given as both taking and standing by (the plan never does).
        return build(taking, size);
    }
    let lend = |slot: u32| -> u32 {
        if let Some(id) = (0..LEND_DRAWS).find_map(|n| draws.taker(slot, n)) {
            return id;
        }
        let score = |a: &[u32; 4]| jhash2(&[slot, a[0], a[1], a[2], a[3]], LEND_SEED[0]);
        // Ties (never seen) go to the lower address: `takers` is sorted by address.
        let mut best = takers[0];
        let mut best_score = score(&best.1);
        for t in &takers[1..] {
            let s = score(&t.1);
            if s > best_score {
                (best, best_score) = (*t, s);
            }
        }
        best.0
    };
    // Slots are lent independently: when most backends stand by (a rack down, when the new
    // table matters most) each lent slot may take all 64 draws, so the work is split over
    // the CPUs. The table is the same however it is split.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = table.len().div_ceil(threads).max(1 << 16);
    std::thread::scope(|s| {
        for (i, part) in table.chunks_mut(chunk).enumerate() {
            let lend = &lend;
            let lent = &lent;
            s.spawn(move || {
                for (j, id) in part.iter_mut().enumerate() {
                    if lent.contains(*id) {
                        *id = lend((i * chunk + j) as u32);
                    }
                }
            });
        }
    });
    table
}

/// The ids standing by, for a test per slot and per draw that costs no hashing (ids are the
/// data path's backend ids, below `max_backends`; others are looked up).
enum Lent {
    Dense(Vec<bool>),
    Sparse(std::collections::HashSet<u32>),
}

impl Lent {
    fn new(ids: impl Iterator<Item = u32> + Clone) -> Lent {
        match ids.clone().max() {
            Some(max) if max >= 1 << 22 => Lent::Sparse(ids.collect()),
            max => {
                let mut v = vec![false; max.map_or(0, |m| m as usize + 1)];
                for id in ids {
                    v[id as usize] = true;
                }
                Lent::Dense(v)
            }
        }
    }

    fn contains(&self, id: u32) -> bool {
        match self {
            Lent::Dense(v) => v.get(id as usize).copied().unwrap_or(false),
            Lent::Sparse(s) => s.contains(&id),
        }
    }
}

/// A lent slot's draws among every backend by weight (`all`: by address, weights over
/// their common divisor).
struct Draws {
    /// The cumulative weights, and for each unit of weight the index of its backend (when
    /// the whole is small enough to list; else a binary search of `ends`).
    ends: Vec<u64>,
    owner: Option<Vec<u32>>,
    total: u64,
    /// Per backend: its id, when it takes new flows.
    taker: Vec<Option<u32>>,
}

impl Draws {
    fn new(all: &[Entry], lent: &Lent) -> Draws {
        let mut ends = Vec::with_capacity(all.len());
        let mut total = 0u64;
        for e in all {
            total += e.weight as u64;
            ends.push(total);
        }
        let owner = (total <= 1 << 20).then(|| {
            let mut v = Vec::with_capacity(total as usize);
            for (i, e) in all.iter().enumerate() {
                v.extend(std::iter::repeat_n(i as u32, e.weight as usize));
            }
            v
        });
        let taker = all
            .iter()
            .map(|e| (!lent.contains(e.id)).then_some(e.id))
            .collect();
        Draws {
            ends,
            owner,
            total,
            taker,
        }
    }

    /// Draw `n` of `slot`: the backend it falls on, if that one takes new flows.
    fn taker(&self, slot: u32, n: u32) -> Option<u32> {
        let words = [slot, n];
        let h = ((jhash2(&words, LEND_SEED[0]) as u64) << 32) | jhash2(&words, LEND_SEED[1]) as u64;
        let at = h % self.total;
        let i = match &self.owner {
            Some(o) => o[at as usize] as usize,
            None => self.ends.partition_point(|&end| end <= at),
        };
        self.taker[i]
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// What two load balancers must agree on for a VIP: the seed, the table size and each slot's
/// backend *address* (ids are node-local). FNV-1a, 64 bits: a fingerprint to compare nodes,
/// not a defence against forgery.
pub fn digest(seed: u32, table: &[u32], entries: &[Entry]) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(PRIME);
        }
    };
    feed(&seed.to_le_bytes());
    feed(&(table.len() as u32).to_le_bytes());
    let address = |id: u32| {
        entries
            .iter()
            .find(|e| e.id == id)
            .map(|e| match e.address {
                IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
                IpAddr::V6(a) => a.octets(),
            })
    };
    // Slots repeat few ids: look each up once.
    let mut last = (u32::MAX, None);
    for &id in table {
        if last.0 != id {
            last = (id, address(id));
        }
        feed(&last.1.unwrap_or([0; 16]));
    }
    h
}

/// The share of new flows whose backend (by address) differs between two tables, each with
/// the entries it was built from; an empty table sends nowhere. Tables of one size compare
/// slot by slot. Tables of different sizes put a flow in unrelated slots (slot = hash mod
/// size): a fixed sample of hash values is compared instead, and nearly all flows move.
pub fn moved_share(old: (&[u32], &[Entry]), new: (&[u32], &[Entry])) -> f64 {
    let by_id = |entries: &[Entry]| -> std::collections::HashMap<u32, IpAddr> {
        entries.iter().map(|e| (e.id, e.address)).collect()
    };
    let (oa, na) = (by_id(old.1), by_id(new.1));
    let at = |t: &[u32], a: &std::collections::HashMap<u32, IpAddr>, h: u64| {
        (!t.is_empty())
            .then(|| a.get(&t[(h % t.len() as u64) as usize]).copied())
            .flatten()
    };
    if old.0.len() == new.0.len() {
        if old.0.is_empty() {
            return 0.0;
        }
        let moved = (0..old.0.len() as u64)
            .filter(|&s| at(old.0, &oa, s) != at(new.0, &na, s))
            .count();
        return moved as f64 / old.0.len() as f64;
    }
    const SAMPLES: u64 = 1 << 16;
    // Flow hashes are 32-bit: spread the sample over that range (splitmix64's increment).
    let moved = (0..SAMPLES)
        .map(|i| (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) & 0xffff_ffff)
        .filter(|&h| at(old.0, &oa, h) != at(new.0, &na, h))
        .count();
    moved as f64 / SAMPLES as f64
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    #[test]
    fn a_size_change_moves_nearly_every_flow_and_one_backend_few() {
        let all = entries(10, |_| 1);
        let t = build(&all, 65537);
        let fewer = build(&all[1..], 65537);
        let share = moved_share((&t, &all), (&fewer, &all[1..]));
        assert!((0.09..0.13).contains(&share), "{share}");
        let resized = build(&all, 130003);
        let share = moved_share((&t, &all), (&resized, &all));
        assert!(share > 0.8, "{share}");
        assert_eq!(moved_share((&t, &all), (&t, &all)), 0.0);
    }

    use super::*;

    #[test]
    fn digests_see_addresses_not_ids() {
        let entries = |base: u32| -> Vec<Entry> {
            (0..5u8)
                .map(|i| Entry {
                    address: IpAddr::from([198, 18, 0, 11 + i]),
                    id: base + i as u32,
                    weight: 1 + i as u32 % 2,
                })
                .collect()
        };
        let (a, b) = (entries(0), entries(100));
        let (ta, tb) = (build(&a, 65537), build(&b, 65537));
        assert_ne!(ta, tb, "the ids differ");
        assert_eq!(
            digest(7, &ta, &a),
            digest(7, &tb, &b),
            "the same table of addresses"
        );
        assert_ne!(digest(7, &ta, &a), digest(8, &ta, &a), "another seed");
        let mut heavier = a.clone();
        heavier[0].weight = 3;
        assert_ne!(
            digest(7, &build(&heavier, 65537), &heavier),
            digest(7, &ta, &a)
        );
    }

    fn entries(n: u32, weight: impl Fn(u32) -> u32) -> Vec<Entry> {
        (0..n)
            .map(|i| Entry {
                address: IpAddr::from([198, 18, (i >> 8) as u8, i as u8]),
                id: i,
                weight: weight(i),
            })
            .collect()
    }

    fn shares(table: &[u32]) -> HashMap<u32, usize> {
        let mut s = HashMap::new();
        for &id in table {
            *s.entry(id).or_default() += 1;
        }
        s
    }

    #[test]
    fn fills_every_slot_and_is_independent_of_order() {
        let mut e = entries(10, |_| 1);
        let a = build(&e, 65537);
        assert!(a.iter().all(|&id| id < 10));
        e.reverse();
        assert_eq!(a, build(&e, 65537), "order of backends changed the table");
        e.rotate_left(3);
        assert_eq!(a, build(&e, 65537));
    }

    #[test]
    fn equal_weights_balance_within_two_percent() {
        for n in [3u32, 10, 100] {
            let t = build(&entries(n, |_| 1), 65537);
            let fair = 65537.0 / n as f64;
            for (id, count) in shares(&t) {
                let ratio = count as f64 / fair;
                assert!(
                    (0.98..=1.02).contains(&ratio),
                    "n={n} backend {id}: {ratio}"
                );
            }
        }
    }

    #[test]
    fn weights_are_honoured() {
        // weights 1, 2, 3, 4 => shares 10%, 20%, 30%, 40%
        let t = build(&entries(4, |i| i + 1), 65537);
        let s = shares(&t);
        for i in 0..4u32 {
            let want = 65537.0 * (i + 1) as f64 / 10.0;
            let ratio = s[&i] as f64 / want;
            assert!((0.99..=1.01).contains(&ratio), "backend {i}: {ratio}");
        }
        // Weight 0 gets nothing; all weights 0 gives an empty table.
        let t = build(&entries(3, |i| if i == 1 { 0 } else { 5 }), 65537);
        assert!(!t.contains(&1));
        assert!(build(&entries(3, |_| 0), 65537).is_empty());
    }

    #[test]
    fn a_standby_backend_lends_exactly_its_slots_by_weight() {
        for (n, weight) in [(10u32, 1u32), (100, 1), (10, 0)] {
            // weight 0 below: weights 1..=4.
            let all = entries(n, |i| if weight == 0 { 1 + i % 4 } else { weight });
            let full = build(&all, 65537);
            assert_eq!(
                build_around(&all, &[], 65537),
                full,
                "no standby: plain Maglev"
            );
            let (down, up) = (&all[..1], &all[1..]);
            let lent = build_around(up, down, 65537);
            let mut moved = 0;
            for (before, after) in full.iter().zip(&lent) {
                if *before == 0 {
                    assert_ne!(*after, 0, "n={n}: a standby slot kept its backend");
                    moved += 1;
                } else {
                    assert_eq!(before, after, "n={n}: a taking backend's slot moved");
                }
            }
            assert_eq!(moved, shares(&full)[&0], "n={n}");
            // The borrowers by weight: each taking backend's share of the whole table
            // within 2% of its weight's share of the taking backends.
            let total: u32 = up.iter().map(|e| e.weight).sum();
            let s = shares(&lent);
            for e in up {
                let fair = 65537.0 * e.weight as f64 / total as f64;
                let ratio = s[&e.id] as f64 / fair;
                assert!(
                    (0.98..=1.02).contains(&ratio),
                    "n={n} backend {}: {ratio}",
                    e.id
                );
            }
            // Weight ratios only: every weight x 8 (load steps all 8/8) gives the same table.
            let times = |v: &[Entry]| -> Vec<Entry> {
                v.iter()
                    .map(|e| Entry {
                        weight: e.weight * 8,
                        ..*e
                    })
                    .collect()
            };
            assert_eq!(build_around(&times(up), &times(down), 65537), lent);
            // Order of the inputs does not matter.
            let mut shuffled = up.to_vec();
            shuffled.reverse();
            assert_eq!(build_around(&shuffled, down, 65537), lent);
        }
    }

    #[test]
    fn lent_slots_stay_with_their_borrower_while_others_come_and_go() {
        let all = entries(20, |_| 1);
        let full = build(&all, 65537);
        // Backends 0 and 1 stand by; then 1 comes back: it gets its own slots back and some
        // of 0's lent ones (its share of them, as any borrower); no other slot moves.
        let two = build_around(&all[2..], &all[..2], 65537);
        let one = build_around(&all[1..], &all[..1], 65537);
        for ((f, a), b) in full.iter().zip(&two).zip(&one) {
            match f {
                0 => assert!(a == b || *b == 1, "a slot of backend 0 moved to {b}, not 1"),
                1 => assert_eq!(*b, 1, "backend 1's slot not given back"),
                _ => assert!(a == f && b == f, "a taking backend's slot moved"),
            }
        }
        // All but one standing by: the one takes every slot; none taking: an empty table.
        let last = build_around(&all[19..], &all[..19], 65537);
        assert!(last.iter().all(|&id| id == 19));
        assert!(build_around(&[], &all, 65537).is_empty());
    }

    /// Most of the weight standing by: many slots find no taking backend in their draws and
    /// go by rendezvous instead, which also changes only when a taking backend comes or goes.
    #[test]
    fn lent_slots_stay_put_when_most_of_the_weight_stands_by() {
        let all = entries(30, |i| if i == 0 { 100 } else { 1 });
        let full = build(&all, 65537);
        let (down, up) = (&all[..27], &all[27..]);
        let before = build_around(up, down, 65537);
        // Backend 29 fails too: only its slots, and nothing between 27 and 28, move.
        let after = build_around(
            &all[27..29],
            &all[..27]
                .iter()
                .chain(&all[29..])
                .copied()
                .collect::<Vec<_>>(),
            65537,
        );
        for ((f, b), a) in full.iter().zip(&before).zip(&after) {
            assert!(*b >= 27 && *a >= 27 && *a != 29);
            if *b != 29 {
                assert_eq!(a, b, "slot of backend {f} moved from {b} to {a}");
            }
        }
    }

    #[test]
    fn removing_a_backend_moves_few_other_slots() {
        for n in [10u32, 100] {
            let all = entries(n, |_| 1);
            let before = build(&all, 65537);
            let after = build(&all[1..], 65537);
            let moved_others = before
                .iter()
                .zip(&after)
                .filter(|(b, a)| **b != 0 && b != a)
                .count();
            // Only backend 0's slots must move; Maglev moves a few others too. Bound it at
            // 1% of the table for n=10 and 2% for n=100 (measured: ~0.2% and ~0.9%).
            let bound = if n == 10 { 0.01 } else { 0.02 };
            assert!(
                (moved_others as f64) < bound * 65537.0,
                "n={n}: {moved_others} slots of other backends moved"
            );
        }
    }

    /// Peers and upgrades agree only if the same inputs give the same table in every version:
    /// these fingerprints were taken with the lending loop as it was before it was made faster
    /// (dense lookups, split over threads), and pin its output, with most and with few
    /// backends standing by.
    #[test]
    fn lent_tables_do_not_change_between_versions() {
        let es = |n: u32| -> Vec<Entry> {
            (0..n)
                .map(|i| Entry {
                    address: IpAddr::from([10, 1, (i >> 8) as u8, i as u8]),
                    id: i * 3 + 1,
                    weight: 1 + i % 4,
                })
                .collect()
        };
        for (n, down, size, want) in [
            (20u32, 19usize, 10007u32, 0x1519_0371_b752_f87a_u64),
            (20, 5, 10007, 0x64dc_4cf8_2d10_17a4),
            (300, 290, 65537, 0x0a83_ccba_6c6c_0b6c),
            // Split over the CPUs (where there are two or more) at 65536 slots a part.
            (300, 290, 131071, 0xca0e_51d1_6254_4a8f),
            (300, 200, 262139, 0x387e_2d8c_cdf3_4515),
        ] {
            let all = es(n);
            let (standby, taking) = all.split_at(down);
            let table = build_around(taking, standby, size);
            let h = table
                .iter()
                .fold(0u64, |h, &x| h.wrapping_mul(31).wrapping_add(x as u64));
            assert_eq!(h, want, "{n} backends, {down} standing by, {size} slots");
        }
    }
}
