//! Hostile frames in bulk: a seeded generator (`dsr_lab::hostile`) pushes a million random and
//! mutated frames through the loaded XDP program with BPF_PROG_TEST_RUN, against a config of
//! several VIPs with backends of their own, and checks every frame against the design and
//! against the host model of the decision (`dsr_lab::model`, the data path's own parser):
//!
//! - the verdict is one the design allows (PASS, DROP or TX here: no backend sits behind
//!   another interface, so no REDIRECT; never ABORTED) and the model's;
//! - a frame is transmitted only if it was addressed to our MAC and to a configured VIP with
//!   a usable backend;
//! - a transmitted frame differs from the input only in the two MACs (destination = the
//!   backend's, source = ours); any other frame leaves untouched;
//! - the backend is the one the model predicts (shared hash, the tables the writer built), and
//!   so one of the matched VIP's;
//! - per batch, the program's per-reason and per-VIP counters moved exactly as the model's
//!   reasons and VIPs say (a mismatch is replayed frame by frame to name the frame).
//!
//! `DSR_HOSTILE_SEED` replays a seed (printed at the start and in every failure),
//! `DSR_HOSTILE_FRAMES` changes the count (default 1,000,000). Needs root, as CI has.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use dsr::{
    datapath::{Datapath, LoadOptions, Sizes, writer::Writer},
    plan::{Desired, DesiredBackend, DesiredVip, VipOptions, maglev},
    spec::model::{MacAddr, Protocol, VipAddr},
};
use dsr_common::{
    DEFAULT_HASH_SEED, DEFAULT_TABLE_SIZE, HASH_ALL, HASH_PORTS, HASH_SRC_ADDR, Reason,
};
use dsr_lab::{
    hostile::{Generator, Targets, hex},
    model::{Decision, Model, ModelVip},
    testrun::{XDP_DROP, XDP_PASS, XDP_TX, run, verdict_name},
};

const LB_MAC: [u8; 6] = [0x02, 0x1b, 0, 0, 0, 0x01];
const LO: u32 = 1;

const VIP4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
const VIP4_EMPTY: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 101);
const VIP4_ALL: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 102);
const VIP4_VLAN: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 103);
const VIP4_AFFINITY: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 104);
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100);
const VIP6_ALL: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x101);

fn vip(address: impl Into<IpAddr>, port: u16, protocol: Protocol, vlan: u16) -> VipAddr {
    VipAddr {
        address: address.into(),
        port,
        protocol,
        vlan,
    }
}

/// The VIPs, by id, and their options. Connection tracking stays on for most (the tables do
/// not change during the run, so a remembered flow keeps the backend its table gives: the
/// decisions do not depend on history, see `dsr_lab::model`), off for some, to run both paths.
fn vips() -> Vec<(VipAddr, VipOptions)> {
    let plain = VipOptions::default();
    let untracked = VipOptions {
        conntrack: false,
        ..plain
    };
    let fragments = VipOptions {
        fragments: true,
        hash_fields: HASH_ALL & !HASH_PORTS,
        ..plain
    };
    let affinity = VipOptions {
        hash_fields: HASH_SRC_ADDR,
        ..plain
    };
    vec![
        (vip(VIP4, 80, Protocol::Tcp, 0), plain),
        (vip(VIP4, 53, Protocol::Udp, 0), fragments),
        (vip(VIP4, 443, Protocol::Udp, 0), untracked),
        (vip(VIP6, 80, Protocol::Tcp, 0), untracked),
        (vip(VIP6, 53, Protocol::Udp, 0), fragments),
        // No usable backend: drops.
        (vip(VIP4_EMPTY, 80, Protocol::Tcp, 0), plain),
        (vip(VIP4_ALL, 0, Protocol::Tcp, 0), untracked),
        // One address, a VLAN-specific VIP and the any-VLAN one.
        (vip(VIP4_VLAN, 80, Protocol::Tcp, 100), plain),
        (vip(VIP4_VLAN, 80, Protocol::Tcp, 0), plain),
        (vip(VIP4_AFFINITY, 80, Protocol::Tcp, 0), affinity),
        // All ports, fragments too (it needs no alias: its key is port 0 already).
        (
            vip(VIP6_ALL, 0, Protocol::Udp, 0),
            VipOptions {
                conntrack: false,
                ..fragments
            },
        ),
    ]
}

struct Setup {
    dp: Datapath,
    model: Model,
}

fn setup() -> Setup {
    let mut dp = Datapath::load(&LoadOptions {
        sizes: Sizes {
            max_vips: 16,
            max_backends: 64,
            table_size: DEFAULT_TABLE_SIZE,
            flow_table_size: 4096,
        },
        hash_seed: DEFAULT_HASH_SEED,
        flow_idle: Duration::from_secs(300),
        pin_dir: None,
    })
    .expect("load (are you root?)");
    dp.set_iface(LO, MacAddr(LB_MAC)).unwrap();
    let mut writer = Writer::read(&dp).unwrap();
    let mut desired = Desired::default();
    let mut backends = Vec::new();
    for (v, (addr, options)) in vips().into_iter().enumerate() {
        let v = v as u32;
        let mine: Vec<(u32, MacAddr)> = (0..3)
            .map(|i| {
                (
                    v * 3 + i,
                    MacAddr([0x02, 0xbe, 0, v as u8, 0, 0x11 + i as u8]),
                )
            })
            .collect();
        for &(id, mac) in &mine {
            desired.backends.insert(
                id,
                DesiredBackend {
                    vip_id: v,
                    mac: Some(mac),
                    keep_flows: true,
                    egress: None,
                },
            );
        }
        let entries = if addr.address == IpAddr::from(VIP4_EMPTY) {
            Vec::new()
        } else {
            mine.iter()
                .zip([1, 2, 1])
                .map(|(&(id, _), weight)| maglev::Entry {
                    address: IpAddr::V4(Ipv4Addr::new(198, 18, v as u8, 11 + (id % 3) as u8)),
                    id,
                    weight,
                })
                .collect()
        };
        desired.vips.insert(
            addr,
            DesiredVip {
                id: v,
                entries,
                options,
            },
        );
        backends.push((addr, options, mine));
    }
    writer
        .apply_all(&mut dp, &desired)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let vips = backends
        .into_iter()
        .enumerate()
        .map(|(v, (addr, options, backends))| {
            let table = dp.table(&addr).unwrap();
            let entries = &desired.vips[&addr].entries;
            let built = if entries.is_empty() {
                Vec::new()
            } else {
                maglev::build(entries, DEFAULT_TABLE_SIZE)
            };
            assert_eq!(table, built, "VIP {addr}: the table the kernel holds");
            ModelVip {
                addr,
                id: v as u32,
                options,
                table,
                backends,
            }
        })
        .collect();
    let model = Model::new(LB_MAC, DEFAULT_HASH_SEED, vips);
    Setup { dp, model }
}

fn targets(model: &Model) -> Targets {
    let mut t = Targets {
        our_mac: LB_MAC,
        ..Targets::default()
    };
    for v in &model.vips {
        match v.addr.address {
            IpAddr::V4(a) => t.v4.push(a.octets()),
            IpAddr::V6(a) => t.v6.push(a.octets()),
        }
        t.ports.push(v.addr.port);
        if v.addr.vlan != 0 {
            t.vlans.push(v.addr.vlan);
        }
    }
    t.ports.push(5353);
    t
}

/// Checks one frame's outcome against the design and the model.
fn check(
    model: &Model,
    frame: &[u8],
    want: &Decision,
    verdict: u32,
    out: &[u8],
) -> Result<(), String> {
    if ![XDP_PASS, XDP_DROP, XDP_TX].contains(&verdict) {
        return Err(format!(
            "verdict {} is not one the design allows here",
            verdict_name(verdict)
        ));
    }
    if verdict != want.verdict {
        return Err(format!(
            "verdict {}, the model says {}",
            verdict_name(verdict),
            verdict_name(want.verdict)
        ));
    }
    if verdict != XDP_TX {
        if out != frame {
            return Err("a frame that was not transmitted was modified".into());
        }
        return Ok(());
    }
    if frame[..6] != LB_MAC {
        return Err("transmitted a frame not addressed to our MAC".into());
    }
    let (Some(vip), Some(backend)) = (want.vip, want.backend) else {
        return Err("transmitted a frame for no VIP with a usable backend".into());
    };
    if out.len() != frame.len() || out[12..] != frame[12..] {
        return Err("the output differs from the input beyond the two MACs".into());
    }
    if out[6..12] != LB_MAC {
        return Err(format!("source MAC {} is not ours", hex(&out[6..12])));
    }
    match model.backend_by_mac(&out[..6]) {
        Some((v, b)) if v == vip && b == backend => Ok(()),
        Some((v, b)) => Err(format!(
            "sent to backend {b} (of VIP {v}), the model says backend {backend} of VIP {vip}"
        )),
        None => Err(format!("sent to {}, no backend's MAC", hex(&out[..6]))),
    }
}

fn reason_packets(dp: &Datapath) -> Vec<u64> {
    dp.reason_totals()
        .unwrap()
        .iter()
        .map(|(_, t)| t.packets)
        .collect()
}

fn vip_packets(dp: &Datapath, n: usize) -> Vec<u64> {
    (0..n as u32)
        .map(|id| dp.vip_totals(id).unwrap().packets)
        .collect()
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v}: not a number")),
    )
}

#[test]
fn a_million_hostile_frames_match_the_model() {
    let seed = env_u64("DSR_HOSTILE_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    let total = env_u64("DSR_HOSTILE_FRAMES").unwrap_or(1_000_000) as usize;
    eprintln!("hostile frames: seed {seed} (DSR_HOSTILE_SEED={seed} replays it), {total} frames");
    let Setup { dp, model } = setup();
    let program = dp.program();
    let mut generator = Generator::new(seed, targets(&model));
    let nvips = model.vips.len();
    const BATCH: usize = 20_000;
    let mut batch: Vec<(Vec<u8>, Decision)> = Vec::with_capacity(BATCH);
    let mut reasons_before = reason_packets(&dp);
    let mut vips_before = vip_packets(&dp, nvips);
    let mut seen = vec![0u64; Reason::ALL.len()];
    let start = Instant::now();
    for n in 0..total {
        let frame = generator.next_frame();
        let want = model.decide(&frame);
        let (verdict, out) = run(program, &frame, LO);
        if let Err(what) = check(&model, &frame, &want, verdict, &out) {
            panic!(
                "seed {seed}, frame #{n}: {what}\n  frame  {}\n  model  {want:?}\n  kernel {} -> {}",
                hex(&frame),
                verdict_name(verdict),
                hex(&out)
            );
        }
        seen[want.reason as usize] += 1;
        batch.push((frame, want));
        if batch.len() == BATCH || n + 1 == total {
            let reasons = reason_packets(&dp);
            let vips = vip_packets(&dp, nvips);
            let mut want_reasons = vec![0u64; reasons.len()];
            let mut want_vips = vec![0u64; nvips];
            for (_, d) in &batch {
                want_reasons[d.reason as usize] += 1;
                if let Some(v) = d.vip {
                    want_vips[v as usize] += 1;
                }
            }
            let moved = |after: &[u64], before: &[u64]| -> Vec<u64> {
                after.iter().zip(before).map(|(a, b)| a - b).collect()
            };
            if moved(&reasons, &reasons_before) != want_reasons
                || moved(&vips, &vips_before) != want_vips
            {
                localize(&dp, &model, seed, n + 1 - batch.len(), &batch);
            }
            reasons_before = reasons;
            vips_before = vips;
            batch.clear();
        }
    }
    let elapsed = start.elapsed();
    eprintln!(
        "hostile frames: {total} in {:.1} s ({:.2} us/frame); by reason (model):",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / total as f64
    );
    for r in Reason::ALL {
        eprintln!("  {:<22} {}", r.name(), seen[r as usize]);
    }
    if total >= 100_000 {
        // The generator must keep reaching every exit the config can produce.
        for r in Reason::ALL {
            if !matches!(r, Reason::NotConfigured | Reason::NoTxPort) {
                assert!(seen[r as usize] > 0, "no frame ended as {}", r.name());
            }
        }
    }
}

/// A batch's counters disagreed with the model: replays it frame by frame (the decisions do
/// not depend on history) and names the first frame whose reason or VIP differs.
fn localize(
    dp: &Datapath,
    model: &Model,
    seed: u64,
    first: usize,
    batch: &[(Vec<u8>, Decision)],
) -> ! {
    let program = dp.program();
    let n = model.vips.len();
    for (i, (frame, want)) in batch.iter().enumerate() {
        let (r0, v0) = (reason_packets(dp), vip_packets(dp, n));
        let (verdict, out) = run(program, frame, LO);
        let (r1, v1) = (reason_packets(dp), vip_packets(dp, n));
        let reason = Reason::ALL
            .into_iter()
            .find(|r| r1[*r as usize] != r0[*r as usize]);
        let vip = (0..n).find(|&v| v1[v] != v0[v]).map(|v| v as u32);
        if reason != Some(want.reason) || vip != want.vip {
            panic!(
                "seed {seed}, frame #{}: the program counted reason {reason:?}, VIP {vip:?}\n  frame  {}\n  model  {want:?}\n  kernel {} -> {}",
                first + i,
                hex(frame),
                verdict_name(verdict),
                hex(&out)
            );
        }
    }
    panic!(
        "seed {seed}: frames #{first}..: a batch's counters disagreed, no single frame does on replay"
    );
}
