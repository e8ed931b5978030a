//! Part `datapath`: what one packet costs inside the XDP program, by the kernel's own clock
//! (the duration BPF_PROG_TEST_RUN reports), for dsr's paths (Maglev lookup alone, flow-table
//! hit, new flow, pass) and for two reference programs measured the same way: an empty program
//! (`xdp_pass`, the harness's floor) and the cheapest program doing dsr's job (`xdp_macswap`:
//! writes both MACs, XDP_TX; the baseline), and the kernel's floor for a flow table of dsr's
//! key and value shapes (the baseline plus one LRU lookup that hits, or a lookup that misses
//! and an insert into a full table, with common and per-CPU LRU lists): above the floor is
//! dsr's own work, below it nothing a program can do.
//!
//! Two methods, both reported because they answer different questions:
//! - per call: many calls with repeat = 1, each on a fresh copy of a frame (Katran's method);
//!   the median per-call duration. Includes the harness's per-run overhead, hence the "above
//!   empty" column.
//! - repeat: one call with a large repeat; the kernel runs the program that many times on the
//!   same buffer and reports the average (in whole ns). Impossible for a new flow: from the
//!   second iteration on, the flow is in the table.
//!
//! Repeat mode feeds each iteration the previous one's output. dsr rewrites the destination
//! MAC to the backend's, so the second iteration would be "not our MAC, pass". The backends
//! here therefore have the load balancer's own MAC: the rewrite is then idempotent, every
//! iteration takes the full forwarding path, and the work is the same as with real MACs. The
//! counters prove it: after every timed batch the forwarded (or not_vip) count must have grown
//! by exactly the number of runs, and the new-flow count by exactly the runs that were meant
//! to be new flows.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    Ebpf,
    maps::Array,
    programs::{TestRun, TestRunOptions, TestRunResult, Xdp},
};
use dsr::{
    datapath::{self, Datapath, LoadOptions, Sizes},
    plan::{VipOptions, maglev},
    spec::model::{MacAddr, Protocol, VipAddr},
};
use dsr_common::{
    DEFAULT_FLOW_IDLE_SECS, DEFAULT_FLOW_TABLE_SIZE, DEFAULT_HASH_SEED, DEFAULT_TABLE_SIZE,
    FlowKey, REASON_COUNT, Reason, flow_hash,
};
use dsr_lab::{
    ebpf::REFERENCE_OBJECT,
    frames::{self, TCP},
    testrun::{XDP_DROP, XDP_PASS, XDP_TX, verdict_name},
};

use crate::{
    report::{PartReport, Table, Target, ns, ratio},
    sys::{check_interrupted, interquartile_mean, median, median_u32},
};

/// How much to measure.
pub struct Size {
    /// Per-call mode: calls per (scenario, program), spread over the rounds.
    pub calls: usize,
    /// Repeat mode: the repeat of each call (one call per round).
    pub repeat: u32,
    /// Rounds; programs alternate within each round.
    pub rounds: usize,
}

pub const FULL: Size = Size {
    calls: 200_000,
    repeat: 10_000_000,
    rounds: 3,
};
pub const QUICK: Size = Size {
    calls: 20_000,
    repeat: 1_000_000,
    rounds: 2,
};

const LB_MAC: [u8; 6] = [0x02, 0x1b, 0, 0, 0, 0x01];
const CLIENT_MAC: [u8; 6] = [0x02, 0xc1, 0, 0, 0, 0x01];
/// Where the baseline sends everything (its MAC rewrite is idempotent whatever it is).
const BASELINE_DST_MAC: [u8; 6] = [0x02, 0xbe, 0, 0, 0, 0x11];
/// Ingress interface of every run: lo, which has an IFACES entry (as in tests/datapath.rs).
const LO: u32 = 1;
const MAX_VIPS: u32 = 256;
const BACKENDS: u32 = 16;
/// Flows of the "spread" scenarios, over every loaded VIP.
const SPREAD_FLOWS: usize = 4096;
const VIP_PORT: u16 = 80;
/// The reference programs measured beside dsr.
const FLOOR_PROGRAMS: [&str; 8] = [
    "xdp_pass",
    "xdp_macswap",
    "xdp_floor_hit",
    "xdp_floor_vip_hit",
    "xdp_floor_new",
    "xdp_floor_new_pcpu",
    "xdp_floor_hit48",
    "xdp_floor_new48",
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

/// The programs and paths compared, in table order.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Case {
    Empty,
    Baseline,
    /// xdp_floor_hit: the baseline plus one LRU lookup that finds the flow.
    FloorHit,
    /// xdp_floor_vip_hit: a VIPS-shaped hash lookup, then FloorHit's: the floor of a hit
    /// with the VIP lookup dsr keeps.
    FloorVipHit,
    /// xdp_floor_new: the baseline plus a lookup that misses and an insert that evicts.
    FloorNew,
    /// xdp_floor_new_pcpu: FloorNew with BPF_F_NO_COMMON_LRU.
    FloorNewPcpu,
    /// xdp_floor_hit48 / xdp_floor_new48: FloorHit / FloorNew with dsr's 48-byte key of map
    /// layout 9 (the whole 5-tuple): what the smaller key bought.
    FloorHitWide,
    FloorNewWide,
    /// A VIP with conntrack off: hash, VIP lookup, table slot, backend.
    DsrMaglev,
    /// Conntrack on, the flow is in the flow table.
    DsrHit,
    /// DsrHit with `dsr trace` on for another client: the tail call to dsr_trace, which
    /// parses the frame and finds that the filter leaves it out.
    DsrHitTraceFiltered,
    /// DsrHit with `dsr trace` on for every frame: each becomes a record in the ring (a
    /// thread reads them meanwhile, as the daemon does).
    DsrHitTraced,
    /// Conntrack on, a flow never seen: the Maglev lookup plus the flow-table insert.
    DsrNew,
    DsrPass,
}

impl Case {
    const ALL: [Case; 14] = [
        Case::Empty,
        Case::Baseline,
        Case::FloorHit,
        Case::FloorVipHit,
        Case::FloorNew,
        Case::FloorNewPcpu,
        Case::FloorHitWide,
        Case::FloorNewWide,
        Case::DsrMaglev,
        Case::DsrHit,
        Case::DsrHitTraceFiltered,
        Case::DsrHitTraced,
        Case::DsrNew,
        Case::DsrPass,
    ];

    fn label(self) -> &'static str {
        match self {
            Case::Empty => "empty program (xdp_pass)",
            Case::Baseline => "baseline (xdp_macswap, XDP_TX)",
            Case::FloorHit => "floor: baseline + LRU lookup (hit)",
            Case::FloorVipHit => "floor: baseline + VIP lookup + LRU lookup (hit)",
            Case::FloorNew => "floor: baseline + LRU miss + insert (full table)",
            Case::FloorNewPcpu => "floor: same, per-CPU LRU lists",
            Case::FloorHitWide => "floor: hit, 48-byte key (layout 9)",
            Case::FloorNewWide => "floor: new flow, 48-byte key (layout 9)",
            Case::DsrMaglev => "dsr, Maglev lookup (conntrack off)",
            Case::DsrHit => "dsr, flow-table hit",
            Case::DsrHitTraceFiltered => "dsr, flow-table hit, trace on (filtered out)",
            Case::DsrHitTraced => "dsr, flow-table hit, trace on (recorded)",
            Case::DsrNew => "dsr, new flow (Maglev + insert)",
            Case::DsrPass => "dsr, non-VIP packet (passed)",
        }
    }

    fn verdict(self) -> u32 {
        match self {
            Case::Empty | Case::DsrPass => XDP_PASS,
            _ => XDP_TX,
        }
    }

    /// The reason dsr must count for every run of this case (None: not dsr).
    fn reason(self) -> Option<Reason> {
        match self {
            Case::Empty
            | Case::Baseline
            | Case::FloorHit
            | Case::FloorVipHit
            | Case::FloorNew
            | Case::FloorNewPcpu
            | Case::FloorHitWide
            | Case::FloorNewWide => None,
            Case::DsrPass => Some(Reason::NotVip),
            _ => Some(Reason::Forwarded),
        }
    }

    /// The conntrack setting the VIPs need for this case (None: either).
    fn conntrack(self) -> Option<bool> {
        match self {
            Case::DsrMaglev => Some(false),
            Case::DsrHit | Case::DsrHitTraceFiltered | Case::DsrHitTraced | Case::DsrNew => {
                Some(true)
            }
            _ => None,
        }
    }

    /// Repeat mode runs one frame many times: every run after the first is a hit.
    fn repeatable(self) -> bool {
        !self.new_flows()
    }

    /// Every call is a flow never seen.
    fn new_flows(self) -> bool {
        matches!(
            self,
            Case::DsrNew | Case::FloorNew | Case::FloorNewPcpu | Case::FloorNewWide
        )
    }
}

fn vip_addr(family: Family, i: u32) -> IpAddr {
    match family {
        Family::V4 => Ipv4Addr::new(198, 18, 100 + (i >> 8) as u8, i as u8).into(),
        Family::V6 => Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0x100, i as u16).into(),
    }
}

fn client_addr(family: Family, i: usize) -> IpAddr {
    match family {
        Family::V4 => Ipv4Addr::new(198, 18, 7, (i % 251) as u8 + 1).into(),
        Family::V6 => Ipv6Addr::new(0x2001, 0xdb8, 7, 0, 0, 0, 0, i as u16 + 1).into(),
    }
}

/// An address that is no VIP (the load balancer's own).
fn non_vip_addr(family: Family) -> IpAddr {
    match family {
        Family::V4 => Ipv4Addr::new(198, 18, 0, 2).into(),
        Family::V6 => Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2).into(),
    }
}

/// The frames of a scenario: flows to the VIPs (flow i to VIP i mod vips), the same flows to
/// a non-VIP address, and the means to make never-seen flows from them.
/// VIP `vip`'s table: the shared table shape with that VIP's own backend ids.
fn vip_table(table: &[u32], vip: u32) -> Vec<u32> {
    table.iter().map(|id| id + vip * BACKENDS).collect()
}

struct Flows {
    family: Family,
    hit: Vec<Vec<u8>>,
    hit_keys: Vec<FlowKey>,
    pass: Vec<Vec<u8>>,
}

impl Flows {
    fn new(family: Family, vips: u32, n: usize) -> Flows {
        let mut f = Flows {
            family,
            hit: Vec::with_capacity(n),
            hit_keys: Vec::with_capacity(n),
            pass: Vec::with_capacity(n),
        };
        for i in 0..n {
            let src = client_addr(family, i);
            let sport = 1024 + (i as u16).wrapping_mul(7919) % 60000;
            let vip = vip_addr(family, i as u32 % vips);
            f.hit.push(frames::flow_frame(
                LB_MAC, CLIENT_MAC, src, sport, vip, VIP_PORT, TCP,
            ));
            f.hit_keys
                .push(FlowKey::new(src, sport, vip, VIP_PORT, TCP));
            f.pass.push(frames::flow_frame(
                LB_MAC,
                CLIENT_MAC,
                src,
                sport,
                non_vip_addr(family),
                22,
                TCP,
            ));
        }
        f
    }

    /// Writes into `buf` the frame of call `call` of `case`; `unique` numbers never-seen
    /// flows across the whole run.
    fn frame<'a>(
        &'a self,
        case: Case,
        call: usize,
        unique: &mut u32,
        buf: &'a mut Vec<u8>,
    ) -> &'a [u8] {
        match case {
            Case::DsrPass => &self.pass[call % self.pass.len()],
            _ if case.new_flows() => {
                buf.clear();
                buf.extend_from_slice(&self.hit[call % self.hit.len()]);
                self.make_unique(buf, *unique);
                *unique += 1;
                buf
            }
            _ => &self.hit[call % self.hit.len()],
        }
    }

    /// Gives a frame a source (last address word, port) no other call of the run uses. XDP
    /// does not check the IPv4 header checksum this invalidates.
    fn make_unique(&self, frame: &mut [u8], n: u32) {
        let (addr_end, sport_at) = match self.family {
            Family::V4 => (14 + 16, 14 + 20), // IPv4 source ends at 30; TCP after 20 bytes
            Family::V6 => (14 + 24, 14 + 40), // IPv6 source ends at 38; TCP after 40 bytes
        };
        let port = 1024 + (n % 64_000) as u16;
        let high = n / 64_000;
        // 10.x.y.z (v4) / ..:0a xx:yyzz (v6): the address part never repeats for high < 2^24.
        frame[addr_end - 4..addr_end].copy_from_slice(&(0x0a00_0000 | high).to_be_bytes());
        frame[sport_at..sport_at + 2].copy_from_slice(&port.to_be_bytes());
    }
}

/// Counters of dsr that a batch of runs must move by known amounts.
#[derive(Clone, Copy)]
struct Counts {
    reasons: [u64; REASON_COUNT as usize],
    new_flows: u64,
}

/// The loaded programs: the reference object (empty, baseline) and dsr with its maps.
struct Programs {
    reference: Ebpf,
    dp: Datapath,
    /// The trace switch, and the filter set now (None: off).
    trace: dsr::datapath::trace::TraceSwitch,
    tracing: Option<dsr_common::TraceFilter>,
    /// Records the ring's reader has taken.
    traced: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The table every VIP has (16 backends, equal weights).
    table: Vec<u32>,
    /// VIPs installed now, and their conntrack setting.
    vips: Vec<VipAddr>,
    conntrack: bool,
}

impl Programs {
    fn load() -> Result<Programs> {
        // The floor's tables as big as dsr's flow table (one entry in the object).
        let mut reference = aya::EbpfLoader::new()
            .map_max_entries("REF_FLOWS", DEFAULT_FLOW_TABLE_SIZE)
            .map_max_entries("REF_FLOWS_PCPU", DEFAULT_FLOW_TABLE_SIZE)
            .map_max_entries("REF_FLOWS48", DEFAULT_FLOW_TABLE_SIZE)
            .load(REFERENCE_OBJECT)
            .context("loading the reference object")?;
        for name in FLOOR_PROGRAMS {
            let p: &mut Xdp = reference
                .program_mut(name)
                .ok_or_else(|| anyhow!("{name} missing from the reference object"))?
                .try_into()?;
            p.load().with_context(|| format!("loading {name}"))?;
        }
        let mut macs: Array<_, [u8; 8]> = reference
            .map_mut("REF_MACS")
            .ok_or_else(|| anyhow!("REF_MACS missing"))?
            .try_into()?;
        macs.set(0, mac8(BASELINE_DST_MAC), 0)?;
        macs.set(1, mac8(LB_MAC), 0)?;

        let mut dp = Datapath::load(&LoadOptions {
            sizes: Sizes {
                max_vips: MAX_VIPS,
                max_backends: BACKENDS * MAX_VIPS,
                table_budget: Sizes::budget_for(MAX_VIPS, DEFAULT_TABLE_SIZE),
                flow_table_size: DEFAULT_FLOW_TABLE_SIZE,
            },
            hash_seed: DEFAULT_HASH_SEED,
            flow_idle: std::time::Duration::from_secs(DEFAULT_FLOW_IDLE_SECS),
            pin_dir: None,
            datapath_log: dsr::spec::model::DatapathLog::Off,
        })
        .context("loading dsr")?;
        dp.set_iface(LO, MacAddr(LB_MAC))?;
        let entries: Vec<maglev::Entry> = (0..BACKENDS)
            .map(|id| maglev::Entry {
                address: Ipv4Addr::new(10, 0, 0, 1 + id as u8).into(),
                id,
                weight: 1,
            })
            .collect();
        for id in 0..BACKENDS * MAX_VIPS {
            // The load balancer's own MAC: see the module comment (repeat mode). Keeping
            // flows: established flows are honoured (flow-table hits). Each VIP has its own
            // BACKENDS ids (a flow entry is only followed to a backend of its VIP).
            let entry = dsr_common::Backend {
                mac: LB_MAC,
                flags: dsr_common::BACKEND_F_VALID | dsr_common::BACKEND_F_KEEP_FLOWS,
                vip: id / BACKENDS,
                ..Default::default()
            };
            dp.set_backend(id, entry)?;
        }
        let (trace, mut ring) = dp.take_trace().ok_or_else(|| anyhow!("no trace maps"))?;
        let traced = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let count = traced.clone();
        // The daemon's reader, in short: drain the ring while the bench runs.
        std::thread::spawn(move || {
            loop {
                while let Ok(Some(_)) = ring.read() {
                    count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        });
        Ok(Programs {
            reference,
            dp,
            trace,
            tracing: None,
            traced,
            table: maglev::build(&entries, DEFAULT_TABLE_SIZE),
            vips: Vec::new(),
            conntrack: true,
        })
    }

    fn program(&self, case: Case) -> &Xdp {
        let name = match case {
            Case::Empty => "xdp_pass",
            Case::Baseline => "xdp_macswap",
            Case::FloorHit => "xdp_floor_hit",
            Case::FloorVipHit => "xdp_floor_vip_hit",
            Case::FloorNew => "xdp_floor_new",
            Case::FloorNewPcpu => "xdp_floor_new_pcpu",
            Case::FloorHitWide => "xdp_floor_hit48",
            Case::FloorNewWide => "xdp_floor_new48",
            _ => return self.dp.program(),
        };
        self.reference
            .program(name)
            .and_then(|p| p.try_into().ok())
            .expect("loaded above")
    }

    /// Leaves exactly `n` VIPs of `family` installed (ids 0..n, each with its own table).
    fn install_vips(&mut self, family: Family, n: u32) -> Result<()> {
        for key in self.vips.drain(..) {
            self.dp.remove_vip(&key)?;
            self.dp.set_vip_addr(
                dsr_common::VipAddrKey::new(key.address, key.protocol.number()),
                0,
            )?;
        }
        let opts = VipOptions {
            conntrack: self.conntrack,
            ..VipOptions::default()
        };
        for i in 0..n {
            let key = VipAddr {
                address: vip_addr(family, i),
                port: VIP_PORT,
                protocol: Protocol::Tcp,
                vlan: 0,
            };
            self.dp.set_vip(&key, i, &vip_table(&self.table, i), opts)?;
            self.vips.push(key);
        }
        // The per-address filter and index the data path consults first, as the daemon
        // writes them.
        self.dp
            .set_vip_filter(self.vips.iter().map(|a| a.address))?;
        for (key, flags) in datapath::vip_addr_flags(self.vips.iter().map(|a| (a, false))) {
            self.dp.set_vip_addr(key.key(), flags)?;
        }
        // The same VIPs in the VIP-lookup floor's map, every one with id 0 (the id the floors'
        // flow keys carry), addressed as its program reads them: an IPv4 address in the last
        // word alone.
        let mut ref_vips: aya::maps::HashMap<_, dsr_common::VipKey, dsr_common::VipInfo> = self
            .reference
            .map_mut("REF_VIPS")
            .ok_or_else(|| anyhow!("REF_VIPS missing"))?
            .try_into()?;
        let held: Vec<dsr_common::VipKey> = ref_vips.keys().collect::<Result<_, _>>()?;
        for k in held {
            ref_vips.remove(&k)?;
        }
        for a in &self.vips {
            let addr = match a.address {
                IpAddr::V4(v4) => [0, 0, 0, u32::from_ne_bytes(v4.octets())],
                v6 => dsr_common::addr_words(v6),
            };
            let key = dsr_common::VipKey {
                addr,
                port: a.port.to_be(),
                proto: a.protocol.number(),
                ..Default::default()
            };
            ref_vips.insert(key, dsr_common::VipInfo::default(), 0)?;
        }
        Ok(())
    }

    /// Switches `dsr trace` on or off as `case` needs.
    fn set_trace(&mut self, case: Case) -> Result<()> {
        let want = match case {
            Case::DsrHitTraced => Some(dsr_common::TraceFilter::default()),
            Case::DsrHitTraceFiltered => Some(dsr_common::TraceFilter {
                flags: dsr_common::TRACE_FILTER_CLIENT,
                vip: 0,
                client: dsr_common::addr_words(Ipv4Addr::new(203, 0, 113, 77).into()),
            }),
            _ => None,
        };
        if want != self.tracing {
            self.trace.set(want)?;
            self.tracing = want;
        }
        Ok(())
    }

    /// Trace records read, and records the program could not write (ring full).
    fn trace_counts(&self) -> Result<(u64, u64)> {
        let lost = self
            .dp
            .event_totals()?
            .iter()
            .find(|(e, _)| *e == dsr_common::Event::TraceLost)
            .map_or(0, |(_, n)| *n);
        Ok((self.traced.load(std::sync::atomic::Ordering::Relaxed), lost))
    }

    /// Switches every installed VIP's conntrack (a VIPS update each; tables unchanged).
    fn set_conntrack(&mut self, on: bool) -> Result<()> {
        if self.conntrack != on {
            self.conntrack = on;
            for (i, key) in self.vips.iter().enumerate() {
                let opts = VipOptions {
                    conntrack: on,
                    ..VipOptions::default()
                };
                self.dp
                    .set_vip(key, i as u32, &vip_table(&self.table, i as u32), opts)?;
            }
        }
        Ok(())
    }

    fn counts(&self) -> Result<Counts> {
        let mut new_flows = 0;
        for id in 0..BACKENDS * MAX_VIPS {
            new_flows += self.dp.backend_totals(id)?.flows;
        }
        Ok(Counts {
            reasons: self.dp.reason_totals()?.map(|(_, t)| t.packets),
            new_flows,
        })
    }

    /// Runs every flow once (conntrack on): checks that dsr forwards it to the backend
    /// userspace predicts (by the per-backend counter, since all backends share one MAC
    /// here), and leaves the flows in the flow table for the hit case.
    fn check_predictions(&mut self, flows: &Flows) -> Result<Vec<String>> {
        self.set_conntrack(true)?;
        for (i, (frame, key)) in flows.hit.iter().zip(&flows.hit_keys).enumerate() {
            let slot = flow_hash(key, DEFAULT_HASH_SEED) % self.table.len() as u32;
            // Flow i goes to VIP i % vips (see Flows::new), whose ids are offset.
            let vip = i as u32 % self.vips.len() as u32;
            let want = self.table[slot as usize] + vip * BACKENDS;
            let before = self.dp.backend_totals(want)?.packets;
            let r = run_once(self.dp.program(), frame, 1)?;
            let after = self.dp.backend_totals(want)?.packets;
            if r.return_value != XDP_TX || after != before + 1 {
                return Ok(vec![format!(
                    "dsr: a flow to a VIP got {} and backend {want} counted {} packets \
                     (want TX, 1)",
                    verdict_name(r.return_value),
                    after - before
                )]);
            }
        }
        Ok(Vec::new())
    }

    /// Fills the flow table with never-seen flows (one eighth more than it holds), so that
    /// every "new flow" measured later also evicts the least recently used one, as in a
    /// steady state, whatever ran before it.
    fn fill_flow_table(&mut self, unique: &mut u32) -> Result<()> {
        self.install_vips(Family::V4, 1)?;
        self.set_conntrack(true)?;
        let flows = Flows::new(Family::V4, 1, 1);
        let before = self.counts()?.new_flows;
        let n = DEFAULT_FLOW_TABLE_SIZE as usize * 9 / 8;
        let mut buf = Vec::new();
        for i in 0..n {
            let frame = flows.frame(Case::DsrNew, i, unique, &mut buf);
            run_once(self.dp.program(), frame, 1)?;
            if i % 65536 == 0 {
                check_interrupted()?;
            }
        }
        let placed = self.counts()?.new_flows - before;
        if placed != n as u64 {
            bail!("filling the flow table: {placed} new flows counted for {n} sent");
        }
        for case in [Case::FloorNew, Case::FloorNewPcpu, Case::FloorNewWide] {
            let program = self.program(case);
            for i in 0..n {
                let frame = flows.frame(case, i, unique, &mut buf);
                let r = run_once(program, frame, 1)?;
                if r.return_value != XDP_TX {
                    bail!(
                        "filling {}'s table: verdict {} (want TX: inserted)",
                        case.label(),
                        verdict_name(r.return_value)
                    );
                }
                if i % 65536 == 0 {
                    check_interrupted()?;
                }
            }
        }
        Ok(())
    }

    /// The programs' sizes as the kernel holds them: translated instructions (after the
    /// verifier's rewrites), JIT bytes, and instructions the verifier processed.
    fn program_sizes(&self) -> Result<String> {
        let mut parts = Vec::new();
        for (name, program) in [
            ("dsr", self.dp.program()),
            ("xdp_macswap", self.program(Case::Baseline)),
            ("xdp_floor_new", self.program(Case::FloorNew)),
        ] {
            let info = program.info()?;
            parts.push(format!(
                "{name} {} instructions, {} JIT bytes, {} verified",
                info.size_translated().map_or(0, |b| b / 8),
                info.size_jitted(),
                info.verified_instruction_count().unwrap_or(0)
            ));
        }
        Ok(format!(
            "program sizes (bpf_prog_info: translated instructions, JIT-compiled bytes, \
             instructions the verifier processed): {}",
            parts.join("; ")
        ))
    }

    /// Puts the scenario's flows into the table of a floor's hit case, with its new-flow
    /// program (TX: inserted, DROP: there already).
    fn warm_floor(&self, flows: &Flows, insert: Case) -> Result<()> {
        for frame in &flows.hit {
            let r = run_once(self.program(insert), frame, 1)?;
            if r.return_value != XDP_TX && r.return_value != XDP_DROP {
                bail!(
                    "warming the floor's table: verdict {}",
                    verdict_name(r.return_value)
                );
            }
        }
        Ok(())
    }

    /// Makes sure the scenario's flows are in the flow table (new flows inserted since may
    /// have pushed some out of the LRU).
    fn warm_flows(&self, flows: &Flows) -> Result<()> {
        for frame in &flows.hit {
            run_once(self.dp.program(), frame, 1)?;
        }
        Ok(())
    }
}

fn mac8(m: [u8; 6]) -> [u8; 8] {
    [m[0], m[1], m[2], m[3], m[4], m[5], 0, 0]
}

/// struct xdp_md with ingress_ifindex = lo (see dsr_lab::testrun).
fn xdp_ctx(frame_len: usize) -> [u8; 24] {
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(frame_len as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&LO.to_ne_bytes());
    ctx
}

fn run_once(program: &Xdp, frame: &[u8], repeat: u32) -> Result<TestRunResult> {
    let ctx = xdp_ctx(frame.len());
    program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            repeat,
            ..Default::default()
        })
        .context("BPF_PROG_TEST_RUN")
}

/// What is loaded and what traffic the programs see.
struct Scenario {
    family: Family,
    vips: u32,
    /// One flow (per-call and repeat mode measure the same frame, caches warm: Katran's
    /// setting), or SPREAD_FLOWS flows over every VIP (per call only), which adds the cost of
    /// cache and TLB misses on the tables.
    flows: usize,
}

impl Scenario {
    fn label(&self) -> String {
        let fam = match self.family {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        };
        let s = if self.vips == 1 { "" } else { "s" };
        if self.flows == 1 {
            format!("{fam}, {} VIP{s}", self.vips)
        } else {
            format!("{fam}, {} VIP{s}, {} flows", self.vips, self.flows)
        }
    }

    fn all() -> Vec<Scenario> {
        let mut v = Vec::new();
        for family in [Family::V4, Family::V6] {
            for (vips, flows) in [(1, 1), (MAX_VIPS, 1), (MAX_VIPS, SPREAD_FLOWS)] {
                v.push(Scenario {
                    family,
                    vips,
                    flows,
                });
            }
        }
        v
    }
}

/// Raw measurements of one (scenario, case).
#[derive(Default)]
struct Samples {
    per_call: Vec<u32>,
    repeat: Vec<f64>,
}

/// Measured figures of one (scenario, case); NaN where not measured.
struct Figures {
    /// Median per-call duration.
    per_call: f64,
    /// Interquartile mean of the per-call durations (finer than the clock's 10 ns steps).
    per_call_iqm: f64,
    /// Median over the rounds of the kernel's per-packet average.
    repeat: f64,
}

pub fn run(size: &Size, cpu: usize) -> Result<PartReport> {
    let mut report = PartReport::new("datapath", "Per-packet cost in the XDP program");
    let mut progs = Programs::load()?;
    let scenarios = Scenario::all();
    let mut unique = 0u32;
    progs.fill_flow_table(&mut unique)?;
    let mut results: Vec<(&Scenario, Vec<Figures>)> = Vec::new();
    for sc in &scenarios {
        progs.install_vips(sc.family, sc.vips)?;
        let flows = Flows::new(sc.family, sc.vips, sc.flows);
        report.failures.extend(progs.check_predictions(&flows)?);
        let mut m = Measure {
            progs: &mut progs,
            flows: &flows,
            unique: &mut unique,
            failures: &mut report.failures,
        };
        let repeat = (sc.flows == 1).then_some(size.repeat);
        let figures = m.run(size.calls, repeat, size.rounds)?;
        results.push((sc, figures));
    }

    report.method = vec![
        format!(
            "BPF_PROG_TEST_RUN durations (the kernel's clock), benchmark thread pinned to CPU \
             {cpu}; ingress ifindex 1 (lo); dsr loaded with max_vips {MAX_VIPS}, {BACKENDS} \
             backends, {DEFAULT_TABLE_SIZE}-slot Maglev tables (one per VIP), a \
             {DEFAULT_FLOW_TABLE_SIZE}-flow LRU flow table; TCP frames."
        ),
        format!(
            "per call: {} calls with repeat = 1 per (scenario, program), each on a fresh copy of \
             the frame (one flow, or {SPREAD_FLOWS} flows over every VIP where the scenario says \
             so; for \"new flow\" every call a flow never seen, into a flow table filled \
             beforehand, so each insert also evicts, as in a steady state); median per-call \
             duration (Katran's method). It includes the harness's own cost (the empty \
             program's figure). \
             The kernel's clock advances in ~10 ns steps here, so per-call medians are multiples \
             of ~10 ns; IQM = interquartile mean.",
            size.calls
        ),
        format!(
            "repeat: one call with repeat = {} on the same frame per (scenario, program) and \
             round; the kernel's average (whole ns); median over the rounds. Not for new flows \
             (after the first run the flow is known) nor the {SPREAD_FLOWS}-flow scenarios (one \
             frame by construction).",
            size.repeat
        ),
        format!(
            "{} rounds, the programs alternating within each round (start rotated per round); \
             medians. x base = ratio to the baseline by the same method; above empty = minus \
             the empty program by the same method. Every dsr batch is checked against dsr's own \
             counters (verdict, reason, new flows).",
            size.rounds
        ),
    ];

    let mut table = Table::new(
        "per-packet cost (ns/packet)",
        &[
            "scenario",
            "program",
            "per call",
            "IQM",
            "x base",
            "above empty",
            "repeat",
            "x base",
            "above empty",
        ],
    )
    .labels(2);
    // Worst per-call ratio to the baseline over the one-flow scenarios, per case.
    let mut worst: Vec<(f64, String)> = Case::ALL.iter().map(|_| (0.0, String::new())).collect();
    for (sc, figs) in &results {
        let [empty, base, ..] = &figs[..] else {
            unreachable!("one Figures per Case")
        };
        for (i, (case, f)) in Case::ALL.iter().zip(figs).enumerate() {
            let per_call_ratio = f.per_call / base.per_call;
            table.row(vec![
                sc.label(),
                case.label().to_owned(),
                ns(f.per_call),
                ns(f.per_call_iqm),
                ratio(per_call_ratio),
                ns(f.per_call - empty.per_call),
                ns(f.repeat),
                ratio(f.repeat / base.repeat),
                ns(f.repeat - empty.repeat),
            ]);
            if sc.flows == 1 && per_call_ratio > worst[i].0 {
                worst[i] = (per_call_ratio, sc.label());
            }
        }
    }
    report.tables.push(table);
    progs.set_trace(Case::DsrHit)?;
    let (traced, lost) = progs.trace_counts()?;
    let pos = |case: Case| Case::ALL.iter().position(|c| *c == case).expect("case");
    let trace_costs: Vec<String> = results
        .iter()
        .filter(|(sc, _)| sc.flows == 1)
        .map(|(sc, figs)| {
            let hit = figs[pos(Case::DsrHit)].per_call;
            format!(
                "{}: filtered out {} / recorded {} of the hit with trace off",
                sc.label(),
                ratio(figs[pos(Case::DsrHitTraceFiltered)].per_call / hit),
                ratio(figs[pos(Case::DsrHitTraced)].per_call / hit)
            )
        })
        .collect();
    // What is left above the kernel's floor: dsr's own work on the path.
    let floors: Vec<String> = results
        .iter()
        .filter(|(sc, _)| sc.flows == 1)
        .map(|(sc, figs)| {
            let f = |case: Case| figs[pos(case)].per_call;
            let base = f(Case::Baseline);
            format!(
                "{}: hit {} above the floor's {} ({} the baseline) and {} above the floor \
                 with dsr's VIP lookup too, {} ({} the baseline); new flow {} above the \
                 floor's {} ({} the baseline); per-CPU LRU lists make the floor's insert {} of \
                 the common lists'; dsr's 28-byte key makes the floor's hit {} and its insert \
                 {} of the former 48-byte key's (hit {}, insert {})",
                sc.label(),
                ns(f(Case::DsrHit) - f(Case::FloorHit)),
                ns(f(Case::FloorHit)),
                ratio(f(Case::FloorHit) / base),
                ns(f(Case::DsrHit) - f(Case::FloorVipHit)),
                ns(f(Case::FloorVipHit)),
                ratio(f(Case::FloorVipHit) / base),
                ns(f(Case::DsrNew) - f(Case::FloorNew)),
                ns(f(Case::FloorNew)),
                ratio(f(Case::FloorNew) / base),
                ratio(f(Case::FloorNewPcpu) / f(Case::FloorNew)),
                ratio(f(Case::FloorHit) / f(Case::FloorHitWide)),
                ratio(f(Case::FloorNew) / f(Case::FloorNewWide)),
                ns(f(Case::FloorHit) - f(Case::FloorHitWide)),
                ns(f(Case::FloorNew) - f(Case::FloorNewWide)),
            )
        })
        .collect();
    report.notes = vec![
        format!(
            "the kernel's floor (the baseline plus the flow-table work alone, same key and value \
             sizes, same table size, same full table), per call: {}",
            floors.join("; ")
        ),
        progs.program_sizes()?,
        format!(
            "hit path with trace on, per call: {}",
            trace_costs.join("; ")
        ),
        format!(
            "trace: {traced} records read by a thread while the bench ran, {lost} lost \
             (trace_lost: the ring was full)"
        ),
        "Katran, by the per-call method (its numbers, its machine): 4.1x the baseline for a \
         flow-table hit, 8x for a new flow, 2.0x for a pass."
            .into(),
        format!(
            "Targets and Katran comparisons use the one-flow scenarios (warm caches, like \
             Katran's fixed test packets), worst of IPv4/IPv6 and 1/{MAX_VIPS} VIPs; the \
             {SPREAD_FLOWS}-flow rows show what cache and TLB misses on {MAX_VIPS} tables of \
             256 KiB add."
        ),
    ];
    // The floor's ratio in the same scenario, beside the hit and new-flow figures.
    let floor_of = |case: Case| match case {
        // The VIP lookup stays (the flow key needs the VIP's id): its floor has it too.
        Case::DsrHit => Some(Case::FloorVipHit),
        Case::DsrNew => Some(Case::FloorNew),
        _ => None,
    };
    let at = |case: Case| {
        let (r, label) = &worst[pos(case)];
        let floor = floor_of(case).and_then(|floor| {
            let (_, figs) = results
                .iter()
                .find(|(sc, _)| sc.flows == 1 && sc.label() == *label)?;
            Some(format!(
                "; the kernel's floor there: {}",
                ratio(figs[pos(floor)].per_call / figs[pos(Case::Baseline)].per_call)
            ))
        });
        (
            *r,
            format!(
                "{} (worst: {label}{})",
                ratio(*r),
                floor.unwrap_or_default()
            ),
        )
    };
    for (case, what, wanted, limit) in [
        (
            Case::DsrMaglev,
            "per-call miss placed by the Maglev table, conntrack off / baseline",
            "<= 3x",
            3.0,
        ),
        (
            Case::DsrPass,
            "per-call pass / baseline",
            "<= 1.3x (Katran 2.0x)",
            1.3,
        ),
        (
            Case::DsrHit,
            "per-call flow-table hit / baseline",
            "<= 2x (Katran 4.1x)",
            2.0,
        ),
        (
            Case::DsrNew,
            "per-call miss placed by the Maglev table and remembered (new flow, full flow table) / baseline",
            "<= 3x (Katran 8x)",
            3.0,
        ),
    ] {
        let (r, measured) = at(case);
        report
            .targets
            .push(Target::new(what, wanted, measured, r <= limit));
    }
    Ok(report)
}

/// The measurement loop of one scenario.
struct Measure<'a> {
    progs: &'a mut Programs,
    flows: &'a Flows,
    unique: &'a mut u32,
    failures: &'a mut Vec<String>,
}

impl Measure<'_> {
    /// Alternates the cases over the rounds, per call (and repeat mode if `repeat` is given).
    fn run(&mut self, calls: usize, repeat: Option<u32>, rounds: usize) -> Result<Vec<Figures>> {
        let mut samples: Vec<Samples> = Case::ALL.iter().map(|_| Samples::default()).collect();
        let chunk = calls.div_ceil(rounds);
        let n = Case::ALL.len();
        for round in 0..rounds {
            for k in 0..n {
                let i = (k + round) % n;
                self.per_call(Case::ALL[i], round * chunk, chunk, &mut samples[i].per_call)?;
            }
            let Some(repeat) = repeat else { continue };
            for k in 0..n {
                let i = (k + round) % n;
                if Case::ALL[i].repeatable() {
                    samples[i].repeat.push(self.repeated(Case::ALL[i], repeat)?);
                }
            }
        }
        Ok(samples
            .iter_mut()
            .map(|s| Figures {
                per_call: median_u32(&mut s.per_call),
                per_call_iqm: interquartile_mean(&mut s.per_call),
                repeat: median(&s.repeat),
            })
            .collect())
    }

    fn prepare(&mut self, case: Case) -> Result<Counts> {
        if let Some(on) = case.conntrack() {
            self.progs.set_conntrack(on)?;
        }
        if matches!(
            case,
            Case::DsrHit | Case::DsrHitTraceFiltered | Case::DsrHitTraced
        ) {
            self.progs.warm_flows(self.flows)?;
        }
        match case {
            Case::FloorHit | Case::FloorVipHit => {
                self.progs.warm_floor(self.flows, Case::FloorNew)?
            }
            Case::FloorHitWide => self.progs.warm_floor(self.flows, Case::FloorNewWide)?,
            _ => {}
        }
        self.progs.set_trace(case)?;
        self.progs.counts()
    }

    /// `calls` runs with repeat = 1; their durations are appended to `out`.
    fn per_call(
        &mut self,
        case: Case,
        first: usize,
        calls: usize,
        out: &mut Vec<u32>,
    ) -> Result<()> {
        let before = self.prepare(case)?;
        let program = self.progs.program(case);
        let mut buf = Vec::new();
        for c in first..first + calls {
            let frame = self.flows.frame(case, c, self.unique, &mut buf);
            let r = run_once(program, frame, 1)?;
            if r.return_value != case.verdict() {
                bail!(
                    "{}: verdict {} (want {})",
                    case.label(),
                    verdict_name(r.return_value),
                    verdict_name(case.verdict())
                );
            }
            out.push(r.duration.as_nanos() as u32);
        }
        self.check_counted(case, &before, calls as u64)?;
        check_interrupted()
    }

    /// One call with `repeat` runs; the kernel's per-run average in ns.
    fn repeated(&mut self, case: Case, repeat: u32) -> Result<f64> {
        let before = self.prepare(case)?;
        let mut buf = Vec::new();
        let frame = self.flows.frame(case, 0, self.unique, &mut buf);
        let r = run_once(self.progs.program(case), frame, repeat)?;
        if r.return_value != case.verdict() {
            bail!(
                "{} (repeat {repeat}): last verdict {} (want {})",
                case.label(),
                verdict_name(r.return_value),
                verdict_name(case.verdict())
            );
        }
        self.check_counted(case, &before, repeat as u64)?;
        check_interrupted()?;
        Ok(r.duration.as_nanos() as f64)
    }

    /// For dsr's cases: every run counted under the case's reason and nothing else, and new
    /// flows exactly where meant (proves each run took the intended path, also in repeat mode).
    fn check_counted(&mut self, case: Case, before: &Counts, runs: u64) -> Result<()> {
        let Some(want) = case.reason() else {
            return Ok(());
        };
        let after = self.progs.counts()?;
        for r in Reason::ALL {
            let delta = after.reasons[r as usize] - before.reasons[r as usize];
            let expected = if r == want { runs } else { 0 };
            if delta != expected {
                self.failures.push(format!(
                    "{}: counted {delta} x {} over {runs} runs (want {expected})",
                    case.label(),
                    r.name()
                ));
            }
        }
        let new_flows = after.new_flows - before.new_flows;
        let expected = if case == Case::DsrNew { runs } else { 0 };
        if new_flows != expected {
            self.failures.push(format!(
                "{}: {new_flows} new flows over {runs} runs (want {expected})",
                case.label()
            ));
        }
        Ok(())
    }
}
