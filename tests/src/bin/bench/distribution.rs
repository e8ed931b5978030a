//! Part `distribution`: how evenly the tables dsr builds spread flows, and how much moves when
//! one backend goes or comes. Computed, not timed: from real tables
//! (`dsr::plan::maglev::build_around`, the function whose output dsr writes into the TABLES
//! map) and real flow hashes (`dsr_common::flow_hash`, what the XDP program computes), beside
//! dsr's weighted Maglev rebuilt without the failed backend (what dsr did before lending), the
//! paper's plain Maglev and naive `hash % N`.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::Result;
use dsr::plan::{maglev, sizing};
use dsr_common::{
    DEFAULT_HASH_SEED, DEFAULT_MAX_TABLE_SLOTS, DEFAULT_TABLE_SIZE, FlowKey,
    TABLE_SLOTS_PER_BACKEND, flow_hash,
};

use crate::{
    maglev_ref,
    report::{PartReport, Table, Target, percent, ratio},
};

pub struct Size {
    /// Random 5-tuples hashed to measure flow movement.
    pub flows: usize,
    /// Removals (and additions) averaged per row, of backends spread over the set.
    pub changes: usize,
    /// Also the row that shows what 1.5x at N = 1000 costs (BIG slots: seconds of builds).
    pub big: bool,
}

pub const FULL: Size = Size {
    flows: 1_000_000,
    changes: 5,
    big: true,
};
pub const QUICK: Size = Size {
    flows: 100_000,
    changes: 2,
    big: false,
};

/// The fixed size the references (and dsr before per-VIP sizes) use.
const M: u32 = DEFAULT_TABLE_SIZE;
const COUNTS: [u32; 3] = [10, 100, 1000];
/// What 1.5x at N = 1000 costs with Maglev (about 13,000 slots per backend; full run only).
const BIG: u32 = 13_000_027;

/// How big a row's tables are.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Slots {
    /// dsr's default for the configured backends (`plan::sizing::default_size`).
    Default,
    Fixed(u32),
}

impl Slots {
    /// Slots of a VIP's table with `configured` backends.
    fn of(self, configured: usize) -> u32 {
        match self {
            Slots::Default => {
                sizing::default_size(configured, TABLE_SLOTS_PER_BACKEND, DEFAULT_MAX_TABLE_SLOTS)
            }
            Slots::Fixed(m) => m,
        }
    }
}

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
    /// What dsr builds: weighted Maglev of every configured backend, the slots of those that
    /// take no new flows lent to the others.
    Dsr,
    /// Weighted Maglev of the backends taking new flows only (dsr before lending).
    DsrRebuild,
    PlainMaglev,
    Modulo,
}

impl Algo {
    fn label(self) -> &'static str {
        match self {
            Algo::Dsr => "dsr (weighted Maglev, lending)",
            Algo::DsrRebuild => "weighted Maglev, rebuilt",
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

fn entries(backends: &[Backend]) -> Vec<maglev::Entry> {
    backends
        .iter()
        .map(|b| maglev::Entry {
            address: b.address,
            id: b.id,
            weight: b.weight,
        })
        .collect()
}

/// Backend id of every one of `m` table slots, for the backends taking new flows and those
/// configured but standing by (for `hash % N`: slot s -> the (s mod N)-th backend). Only dsr's
/// lending looks at those standing by; the others rebuild without them.
fn table(algo: Algo, backends: &[Backend], standby: &[Backend], m: u32) -> Vec<u32> {
    match algo {
        Algo::Dsr => maglev::build_around(&entries(backends), &entries(standby), m),
        Algo::DsrRebuild => maglev::build(&entries(backends), m),
        Algo::PlainMaglev => {
            let list: Vec<(IpAddr, u32)> = backends.iter().map(|b| (b.address, b.id)).collect();
            maglev_ref::build(&list, m)
        }
        Algo::Modulo => (0..m)
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
        _ => table[(h % table.len() as u32) as usize],
    }
}

/// Largest backend share over its fair share (weight / total weight of the table).
fn max_over_fair(table: &[u32], backends: &[Backend], weighted: bool) -> f64 {
    let ids = backends
        .iter()
        .map(|b| b.id as usize + 1)
        .max()
        .unwrap_or(0);
    let mut counts = vec![0u64; ids];
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
    slots: Slots,
    /// Slots of the N-backend table.
    m: u32,
    balance: f64,
    /// The same while the first removed backend is down.
    balance_failed: f64,
    remove: Movement,
    add: Movement,
    /// How long building the N-backend table took, all up and with one down.
    build: std::time::Duration,
    build_failed: std::time::Duration,
}

/// A backend removed from a VIP of N configured backends fails (the size stays that of N);
/// one added is one of N + 1 configured that comes up (the size is that of N + 1 throughout).
fn evaluate(
    n: u32,
    weights: Weights,
    algo: Algo,
    slots: Slots,
    changes: usize,
    hashes: &[u32],
) -> Row {
    // The unweighted algorithms are judged by what they can do: equal shares.
    let weighted = matches!(algo, Algo::Dsr | Algo::DsrRebuild);
    let all: Vec<Backend> = (0..n).map(|i| backend(i, weights)).collect();
    let (m, m_more) = (slots.of(n as usize), slots.of(n as usize + 1));
    let started = std::time::Instant::now();
    let base = table(algo, &all, &[], m);
    let build = started.elapsed();
    let (mut balance_failed, mut build_failed) = (0.0, std::time::Duration::ZERO);
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
        let started = std::time::Instant::now();
        let t = table(algo, &rest, &all[r..=r], m);
        if c == 0 {
            build_failed = started.elapsed();
            balance_failed = max_over_fair(&t, &rest, weighted);
        }
        let (s, f) = moved(algo, (&base, &all), (&t, &rest), hashes);
        remove.slots += s;
        remove.flows += f;
        remove.ideal += weight(&all[r]) / total_weight(&all);

        // Add one new backend (a fresh address, the next weight of the cycle).
        let mut more = all.clone();
        let new = backend(n + c as u32, weights);
        more.push(new);
        let t = table(algo, &more, &[], m_more);
        // Before: configured, not up yet (dsr's table is built around it).
        let before = table(algo, &all, &[new], m_more);
        let (s, f) = moved(algo, (&before, &all), (&t, &more), hashes);
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
        slots,
        m,
        balance: max_over_fair(&base, &all, weighted),
        balance_failed,
        remove,
        add,
        build,
        build_failed,
    }
}

pub fn run(size: &Size) -> Result<PartReport> {
    let mut report = PartReport::new("distribution", "Distribution and disruption of the tables");
    report.method = vec![
        format!(
            "tables from dsr::plan::maglev::build (what dsr writes into TABLES) of the size dsr \
             gives a VIP by default (plan::sizing: the smallest prime >= {TABLE_SLOTS_PER_BACKEND} \
             x its configured backends, at most max_table_slots {DEFAULT_MAX_TABLE_SLOTS}), and \
             of {M} slots (every VIP's size before per-VIP sizes) beside the paper's plain \
             Maglev (unweighted reference in the bench, own permutation hashes) and hash % N; \
             backends 10.1.x.y."
        ),
        "balance: largest backend share of the table over its fair share (weight / total \
         weight; the unweighted algorithms only in the equal-weight rows)."
            .into(),
        format!(
            "moved: fraction of table slots, and of {} random 5-tuples hashed with \
             dsr_common::flow_hash (slot = hash % size, as the XDP program does; hash % N for \
             the modulo row), whose backend changes when one of N configured backends fails \
             (the size stays N's) / one of N + 1 configured comes up (the size is N + 1's); \
             mean of {} removals spread over the list and {} additions. x ideal = moved over \
             the ideal, the changed backend's fair share (1/N for equal weights; with weights \
             1..=4 the removed backends have weight 1, the hardest case).",
            size.flows, size.changes, size.changes
        ),
        "build: wall clock of building the N-backend table, all up / with one down (for dsr \
         maglev::build_around: the Maglev table of all N, then the down backend's slots lent; \
         release build)."
            .into(),
        "dsr lends: a backend that fails (or is drained) stays in its VIP's Maglev table and \
         only its slots are lent to the others, each slot drawing a borrower by weight from a \
         sequence of its own; when it comes back it gets exactly those slots back. The \
         rebuilt rows are the same weighted Maglev built without the failed backend, which is \
         what dsr did before."
            .into(),
    ];
    let hashes = flow_hashes(size.flows);
    let mut rows = Vec::new();
    for &n in &COUNTS {
        for weights in [Weights::Equal, Weights::Cycling] {
            rows.push(evaluate(
                n,
                weights,
                Algo::Dsr,
                Slots::Default,
                size.changes,
                &hashes,
            ));
        }
        for weights in [Weights::Equal, Weights::Cycling] {
            rows.push(evaluate(
                n,
                weights,
                Algo::DsrRebuild,
                Slots::Default,
                size.changes,
                &hashes,
            ));
        }
        for algo in [Algo::Dsr, Algo::DsrRebuild, Algo::PlainMaglev, Algo::Modulo] {
            let fixed = Slots::Fixed(M);
            rows.push(evaluate(
                n,
                Weights::Equal,
                algo,
                fixed,
                size.changes,
                &hashes,
            ));
        }
    }
    if size.big {
        rows.push(evaluate(
            1000,
            Weights::Equal,
            Algo::DsrRebuild,
            Slots::Fixed(BIG),
            2,
            &hashes,
        ));
    }

    let mut table = Table::new(
        "balance and disruption (moved = % of slots / % of flows; x ideal)",
        &[
            "N",
            "weights",
            "algorithm",
            "slots",
            "max/fair",
            "1 down",
            "remove 1: slots",
            "x ideal",
            "flows",
            "x ideal",
            "add 1: slots",
            "x ideal",
            "flows",
            "x ideal",
            "build",
            "1 down",
        ],
    )
    .labels(3);
    for r in &rows {
        table.row(vec![
            r.n.to_string(),
            r.weights.label().into(),
            r.algo.label().into(),
            match r.slots {
                Slots::Default => format!("{} (default)", r.m),
                Slots::Fixed(m) => m.to_string(),
            },
            format!("{:.4}", r.balance),
            format!("{:.4}", r.balance_failed),
            percent(100.0 * r.remove.slots),
            ratio(r.remove.slots / r.remove.ideal),
            percent(100.0 * r.remove.flows),
            ratio(r.remove.flows / r.remove.ideal),
            percent(100.0 * r.add.slots),
            ratio(r.add.slots / r.add.ideal),
            percent(100.0 * r.add.flows),
            ratio(r.add.flows / r.add.ideal),
            format!("{:.1} ms", r.build.as_secs_f64() * 1000.0),
            format!("{:.1} ms", r.build_failed.as_secs_f64() * 1000.0),
        ]);
    }
    report.tables.push(table);

    let defaults = || {
        rows.iter()
            .filter(|r| r.algo == Algo::Dsr && r.slots == Slots::Default)
    };
    for &n in &COUNTS {
        let worst = defaults()
            .filter(|r| r.n == n)
            .map(|r| r.balance)
            .fold(0.0, f64::max);
        report.targets.push(Target::new(
            format!("dsr max share / fair, N={n}, default size (both weightings)"),
            "<= 1.02",
            format!("{worst:.4}"),
            worst <= 1.02,
        ));
    }
    let worst_moved = |r: &Row| {
        [
            r.remove.slots / r.remove.ideal,
            r.remove.flows / r.remove.ideal,
            r.add.slots / r.add.ideal,
            r.add.flows / r.add.ideal,
        ]
        .into_iter()
        .fold(0.0, f64::max)
    };
    for (what, limit, pick) in [
        ("N <= 100", 1.1, (|n| n <= 100) as fn(u32) -> bool),
        ("N = 1000", 1.5, |n| n == 1000),
    ] {
        let worst = defaults()
            .filter(|r| pick(r.n))
            .map(worst_moved)
            .fold(0.0, f64::max);
        report.targets.push(Target::new(
            format!(
                "dsr moved / ideal, {what}, default size (both weightings; slots and flows, \
                 remove and add)"
            ),
            &format!("<= {limit}x"),
            ratio(worst),
            worst <= limit,
        ));
    }
    let build = defaults()
        .filter(|r| r.n == 1000)
        .map(|r| r.build.max(r.build_failed))
        .max()
        .unwrap_or_default();
    report.targets.push(Target::new(
        "table build of the default size for 1000 backends, all up or one down (well under \
         the 1 s check interval)",
        "< 0.5 s",
        format!("{:.0} ms", build.as_secs_f64() * 1000.0),
        build.as_secs_f64() < 0.5,
    ));

    // What a config change of the backend count costs: the size changes with it.
    let entries = |n: u32| -> Vec<maglev::Entry> {
        (0..n)
            .map(|i| {
                let b = backend(i, Weights::Equal);
                maglev::Entry {
                    address: b.address,
                    id: b.id,
                    weight: 1,
                }
            })
            .collect()
    };
    let (e100, e101) = (entries(100), entries(101));
    let resized = maglev::moved_share(
        (&maglev::build(&e100, Slots::Default.of(100)), &e100),
        (&maglev::build(&e101, Slots::Default.of(101)), &e101),
    );
    let at = |algo: Algo, n: u32, slots: Slots| {
        rows.iter()
            .find(|r| r.algo == algo && r.n == n && r.weights == Weights::Equal && r.slots == slots)
    };
    let mut notes = Vec::new();
    if let (Some(d), Some(r), Some(f)) = (
        at(Algo::Dsr, 1000, Slots::Default),
        at(Algo::DsrRebuild, 1000, Slots::Default),
        at(Algo::DsrRebuild, 1000, Slots::Fixed(M)),
    ) {
        notes.push(format!(
            "N=1000, equal weights, the default {} slots ({:.0} MiB, {} per backend, capped by \
             max_table_slots): lending moves {} of the ideal when one fails, where rebuilding \
             moved {} ({} at {M} slots); worst of remove and add, slots and flows.",
            d.m,
            d.m as f64 * 4.0 / (1 << 20) as f64,
            d.m / 1000,
            ratio(worst_moved(d)),
            ratio(worst_moved(r)),
            ratio(worst_moved(f)),
        ));
    }
    if let Some(b) = at(Algo::DsrRebuild, 1000, Slots::Fixed(BIG)) {
        notes.push(format!(
            "Without lending, the 1.5x target at N=1000 cost {BIG} slots: {} moved / ideal, \
             {:.0} MiB per table (twice that during a switch) and {:.0} ms per build. Lending \
             meets it at the default size, within the build-time and memory limits.",
            ratio(worst_moved(b)),
            b.m as f64 * 4.0 / (1 << 20) as f64,
            b.build.as_secs_f64() * 1000.0,
        ));
    }
    // A rack down: most of a VIP's backends stand by, and each lent slot may take all 64
    // draws before it finds a taking backend (the costliest build; the daemon builds it off
    // its loop).
    let all = entries(1000);
    let m = Slots::Default.of(1000);
    let mut down = Vec::new();
    for standing in [500usize, 900, 999] {
        let (standby, taking) = all.split_at(standing);
        let started = std::time::Instant::now();
        let t = maglev::build_around(taking, standby, m);
        down.push(format!(
            "{standing} down {:.0} ms",
            started.elapsed().as_secs_f64() * 1000.0
        ));
        assert!(t.iter().all(|id| taking.iter().any(|e| e.id == *id)));
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    notes.push(format!(
        "Table build for 1000 backends at the default {m} slots with most of them down (their \
         slots lent; {}): {}. The daemon builds tables this costly off its loop; status and \
         checks go on meanwhile.",
        if cpus == 1 {
            "on the 1 CPU the bench runs on".to_string()
        } else {
            format!("split over {cpus} CPUs")
        },
        down.join(", ")
    ));
    notes.push(format!(
        "A config change of the backend count changes the default size: from 100 to 101 \
         configured backends, {} of new flows go to another backend (not 1/101), which `dsr \
         plan` shows before it is applied. Health, drain and weights never change the size.",
        percent(100.0 * resized)
    ));
    notes.push(
        "What moves here are the flows the table places: new flows. With conntrack on (the \
         default), an established flow keeps its backend while that backend keeps flows \
         (healthy, draining), so adding a backend moves no established flow; removing one moves \
         only its own."
            .into(),
    );
    notes.push(
        "hash % N moves (N-1)/N of the flows on any change: the reason to use Maglev.".into(),
    );
    report.notes = notes;
    Ok(report)
}
