//! Part `distribution`: how evenly the tables dsr builds spread flows, and how much moves when
//! one backend goes or comes. Computed, not timed: from real tables (`dsr::plan::maglev::build`, the
//! function whose output dsr writes into the TABLES map) and real flow hashes
//! (`dsr_common::flow_hash`, what the XDP program computes), beside the paper's plain Maglev
//! and naive `hash % N`.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::Result;
use dsr::plan::maglev;
use dsr_common::{DEFAULT_HASH_SEED, DEFAULT_TABLE_SIZE, FlowKey, flow_hash};

use crate::{
    maglev_ref,
    report::{PartReport, Table, Target, percent, ratio},
};

pub struct Size {
    /// Random 5-tuples hashed to measure flow movement.
    pub flows: usize,
    /// Removals (and additions) averaged per row, of backends spread over the set.
    pub changes: usize,
}

pub const FULL: Size = Size {
    flows: 1_000_000,
    changes: 5,
};
pub const QUICK: Size = Size {
    flows: 100_000,
    changes: 2,
};

const M: u32 = DEFAULT_TABLE_SIZE;
const COUNTS: [u32; 3] = [10, 100, 1000];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Weights {
    Equal,
    /// 1, 2, 3, 4, 1, 2, ...
    Cycling,
}

impl Weights {
    fn of(self, i: u32) -> u32 {
        match self {
            Weights::Equal => 1,
            Weights::Cycling => i % 4 + 1,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Weights::Equal => "equal",
            Weights::Cycling => "1..=4",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Algo {
    Dsr,
    PlainMaglev,
    Modulo,
}

impl Algo {
    fn label(self) -> &'static str {
        match self {
            Algo::Dsr => "dsr (weighted Maglev)",
            Algo::PlainMaglev => "plain Maglev (paper)",
            Algo::Modulo => "hash % N",
        }
    }
}

/// A backend: identity (address) and id; id = its index in the full list.
#[derive(Clone, Copy)]
struct Backend {
    address: IpAddr,
    id: u32,
    weight: u32,
}

fn backend(i: u32, weights: Weights) -> Backend {
    Backend {
        address: Ipv4Addr::new(10, 1 + (i >> 16) as u8, (i >> 8) as u8, i as u8).into(),
        id: i,
        weight: weights.of(i),
    }
}

/// Backend id of every table slot (for `hash % N`: slot s -> the (s mod N)-th backend).
fn table(algo: Algo, backends: &[Backend]) -> Vec<u32> {
    match algo {
        Algo::Dsr => {
            let entries: Vec<maglev::Entry> = backends
                .iter()
                .map(|b| maglev::Entry {
                    address: b.address,
                    id: b.id,
                    weight: b.weight,
                })
                .collect();
            maglev::build(&entries, M)
        }
        Algo::PlainMaglev => {
            let list: Vec<(IpAddr, u32)> = backends.iter().map(|b| (b.address, b.id)).collect();
            maglev_ref::build(&list, M)
        }
        Algo::Modulo => (0..M)
            .map(|s| backends[(s % backends.len() as u32) as usize].id)
            .collect(),
    }
}

/// Flow hashes of `n` random 5-tuples to one VIP (deterministic: splitmix64 from a fixed seed).
fn flow_hashes(n: usize) -> Vec<u32> {
    let mut state = 0x6473_725f_6265_6e63u64; // "dsr_benc"
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let vip: IpAddr = Ipv4Addr::new(192, 0, 2, 10).into();
    (0..n)
        .map(|_| {
            let r = next();
            let src = Ipv4Addr::from((r >> 32) as u32).into();
            let key = FlowKey::new(src, (r >> 16) as u16, vip, 80, 6);
            flow_hash(&key, DEFAULT_HASH_SEED)
        })
        .collect()
}

/// Where a flow of hash `h` goes. The table algorithms index their table as the XDP program
/// does (`h % M`); `hash % N` uses the hash directly, as a modulo balancer would.
fn flow_backend(algo: Algo, table: &[u32], backends: &[Backend], h: u32) -> u32 {
    match algo {
        Algo::Modulo => backends[(h % backends.len() as u32) as usize].id,
        _ => table[(h % M) as usize],
    }
}

/// Largest backend share over its fair share (weight / total weight of the table).
fn max_over_fair(table: &[u32], backends: &[Backend], weighted: bool) -> f64 {
    let mut counts = vec![0u64; backends.len()];
    for &id in table {
        counts[id as usize] += 1;
    }
    let total_weight: u64 = backends
        .iter()
        .map(|b| if weighted { b.weight as u64 } else { 1 })
        .sum();
    backends
        .iter()
        .map(|b| {
            let w = if weighted { b.weight as u64 } else { 1 };
            counts[b.id as usize] as f64 / (table.len() as f64 * w as f64 / total_weight as f64)
        })
        .fold(0.0, f64::max)
}

/// Moved fractions averaged over several changes, and the ideal (the changed backend's fair
/// share) averaged the same way.
#[derive(Default, Clone, Copy)]
struct Movement {
    slots: f64,
    flows: f64,
    ideal: f64,
}

fn moved(
    algo: Algo,
    before: (&[u32], &[Backend]),
    after: (&[u32], &[Backend]),
    hashes: &[u32],
) -> (f64, f64) {
    let slots = before.0.iter().zip(after.0).filter(|(a, b)| a != b).count();
    let flows = hashes
        .iter()
        .filter(|&&h| {
            flow_backend(algo, before.0, before.1, h) != flow_backend(algo, after.0, after.1, h)
        })
        .count();
    (
        slots as f64 / before.0.len() as f64,
        flows as f64 / hashes.len() as f64,
    )
}

struct Row {
    n: u32,
    weights: Weights,
    algo: Algo,
    balance: f64,
    remove: Movement,
    add: Movement,
}

fn evaluate(n: u32, weights: Weights, algo: Algo, changes: usize, hashes: &[u32]) -> Row {
    // The unweighted algorithms are judged by what they can do: equal shares.
    let weighted = algo == Algo::Dsr;
    let all: Vec<Backend> = (0..n).map(|i| backend(i, weights)).collect();
    let base = table(algo, &all);
    let total_weight = |bs: &[Backend]| -> f64 {
        bs.iter()
            .map(|b| if weighted { b.weight as f64 } else { 1.0 })
            .sum()
    };
    let weight = |b: &Backend| if weighted { b.weight as f64 } else { 1.0 };
    let mut remove = Movement::default();
    let mut add = Movement::default();
    for c in 0..changes {
        // Remove a backend spread over the list (so that both ends and the middle count).
        let r = (c as u32 * n / changes as u32) as usize;
        let rest: Vec<Backend> = all.iter().copied().filter(|b| b.id != all[r].id).collect();
        let t = table(algo, &rest);
        let (s, f) = moved(algo, (&base, &all), (&t, &rest), hashes);
        remove.slots += s;
        remove.flows += f;
        remove.ideal += weight(&all[r]) / total_weight(&all);

        // Add one new backend (a fresh address, the next weight of the cycle).
        let mut more = all.clone();
        let new = backend(n + c as u32, weights);
        more.push(new);
        let t = table(algo, &more);
        let (s, f) = moved(algo, (&base, &all), (&t, &more), hashes);
        add.slots += s;
        add.flows += f;
        add.ideal += weight(&new) / total_weight(&more);
    }
    for m in [&mut remove, &mut add] {
        m.slots /= changes as f64;
        m.flows /= changes as f64;
        m.ideal /= changes as f64;
    }
    Row {
        n,
        weights,
        algo,
        balance: max_over_fair(&base, &all, weighted),
        remove,
        add,
    }
}

pub fn run(size: &Size) -> Result<PartReport> {
    let mut report = PartReport::new("distribution", "Distribution and disruption of the tables");
    report.method = vec![
        format!(
            "{M}-slot tables from dsr::plan::maglev::build (what dsr writes into TABLES), the paper's \
             plain Maglev (unweighted reference in the bench, own permutation hashes) and \
             hash % N; backends 10.1.x.y."
        ),
        "balance: largest backend share of the table over its fair share (weight / total \
         weight; the unweighted algorithms only in the equal-weight rows)."
            .into(),
        format!(
            "moved: fraction of table slots, and of {} random 5-tuples hashed with \
             dsr_common::flow_hash (slot = hash % {M}, as the XDP program does; hash % N for the \
             modulo row), whose backend changes when one backend is removed / one is added; \
             mean of {} removals spread over the list and {} additions. x ideal = moved over \
             the ideal, the changed backend's fair share (1/N for equal weights).",
            size.flows, size.changes, size.changes
        ),
    ];
    let hashes = flow_hashes(size.flows);
    let mut rows = Vec::new();
    for &n in &COUNTS {
        for weights in [Weights::Equal, Weights::Cycling] {
            for algo in [Algo::Dsr, Algo::PlainMaglev, Algo::Modulo] {
                if algo != Algo::Dsr && weights != Weights::Equal {
                    continue;
                }
                rows.push(evaluate(n, weights, algo, size.changes, &hashes));
            }
        }
    }

    let mut table = Table::new(
        "balance and disruption (moved = % of slots / % of flows; x ideal)",
        &[
            "N",
            "weights",
            "algorithm",
            "max/fair",
            "remove 1: slots",
            "x ideal",
            "flows",
            "x ideal",
            "add 1: slots",
            "x ideal",
            "flows",
            "x ideal",
        ],
    )
    .labels(3);
    for r in &rows {
        table.row(vec![
            r.n.to_string(),
            r.weights.label().into(),
            r.algo.label().into(),
            format!("{:.3}", r.balance),
            percent(100.0 * r.remove.slots),
            ratio(r.remove.slots / r.remove.ideal),
            percent(100.0 * r.remove.flows),
            ratio(r.remove.flows / r.remove.ideal),
            percent(100.0 * r.add.slots),
            ratio(r.add.slots / r.add.ideal),
            percent(100.0 * r.add.flows),
            ratio(r.add.flows / r.add.ideal),
        ]);
    }
    report.tables.push(table);

    let dsr_rows = || rows.iter().filter(|r| r.algo == Algo::Dsr);
    for &n in &COUNTS {
        let worst = dsr_rows()
            .filter(|r| r.n == n)
            .map(|r| r.balance)
            .fold(0.0, f64::max);
        report.targets.push(Target::new(
            format!("dsr max share / fair, N={n} (both weightings)"),
            "<= 1.02",
            format!("{worst:.3}"),
            worst <= 1.02,
        ));
    }
    // Slots and flows, removal and addition: the worst of all for N <= 100.
    let worst = dsr_rows()
        .filter(|r| r.n <= 100)
        .flat_map(|r| {
            [
                r.remove.slots / r.remove.ideal,
                r.remove.flows / r.remove.ideal,
                r.add.slots / r.add.ideal,
                r.add.flows / r.add.ideal,
            ]
        })
        .fold(0.0, f64::max);
    report.targets.push(Target::new(
        "dsr moved / ideal, N <= 100 (slots and flows, remove and add)",
        "<= 1.1x",
        ratio(worst),
        worst <= 1.1,
    ));

    let at = |algo: Algo, n: u32| {
        rows.iter()
            .find(|r| r.algo == algo && r.n == n && r.weights == Weights::Equal)
            .map(|r| (r.remove.flows / r.remove.ideal, r.add.flows / r.add.ideal))
            .unwrap_or((f64::NAN, f64::NAN))
    };
    let (dsr_rm, dsr_add) = at(Algo::Dsr, 1000);
    let (ref_rm, ref_add) = at(Algo::PlainMaglev, 1000);
    let same = ((dsr_rm + dsr_add) / (ref_rm + ref_add) - 1.0).abs() < 0.2;
    report.notes = vec![
        format!(
            "N=1000 (equal weights, {:.0} slots per backend): dsr moves {} (remove) / {} (add) \
             of the ideal, plain Maglev {} / {}: {}. Maglev's population reshuffles far more \
             than the changed backend's share when a table has this few slots per backend; \
             making that smaller (e.g. a larger table for large N) is future work.",
            M as f64 / 1000.0,
            ratio(dsr_rm),
            ratio(dsr_add),
            ratio(ref_rm),
            ratio(ref_add),
            if same {
                "the same algorithm, about the same disruption"
            } else {
                "they differ"
            }
        ),
        "What moves here are the flows the table places: new flows. With conntrack on (the \
         default), an established flow keeps its backend while that backend keeps flows \
         (healthy, draining), so adding a backend moves no established flow; removing one moves \
         only its own."
            .into(),
        "hash % N moves (N-1)/N of the flows on any change: the reason to use Maglev.".into(),
    ];
    Ok(report)
}
