//! The differential setup shared by the hostile-frames test (`tests/hostile.rs`) and the fuzz
//! target (`fuzz/`): the real program loaded with several VIPs that have backends of their own
//! (written by the real map writer), the host model of the same config, and the check of one
//! frame's outcome against the design and the model.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use dsr::{
    datapath::{Datapath, LoadOptions, Sizes, writer::Writer},
    plan::{Desired, DesiredBackend, DesiredVip, VipOptions, maglev},
    spec::model::{MacAddr, Protocol, VipAddr},
};
use dsr_common::{DEFAULT_HASH_SEED, DEFAULT_TABLE_SIZE, HASH_ALL, HASH_PORTS, HASH_SRC_ADDR};

use crate::{
    hostile::{Targets, hex},
    model::{Decision, Model, ModelVip},
    testrun::{XDP_DROP, XDP_PASS, XDP_TX, run, verdict_name},
};

pub const LB_MAC: [u8; 6] = [0x02, 0x1b, 0, 0, 0, 0x01];
/// VRRP virtual MACs of the receiving interface: master of VRID 51, backup of VRID 52.
pub const VMACS: [([u8; 6], bool); 2] = [
    ([0x00, 0x00, 0x5e, 0x00, 0x01, 51], true),
    ([0x00, 0x00, 0x5e, 0x00, 0x01, 52], false),
];
pub const LO: u32 = 1;

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

pub struct Setup {
    pub dp: Datapath,
    pub model: Model,
}

/// Loads the program and installs the VIPs (needs root).
pub fn setup() -> Setup {
    let mut dp = Datapath::load(&LoadOptions {
        sizes: Sizes {
            max_vips: 16,
            max_backends: 64,
            table_budget: Sizes::budget_for(16, DEFAULT_TABLE_SIZE),
            flow_table_size: 4096,
        },
        hash_seed: DEFAULT_HASH_SEED,
        flow_idle: Duration::from_secs(300),
        pin_dir: None,
        datapath_log: dsr::spec::model::DatapathLog::Off,
    })
    .expect("load (are you root?)");
    dp.set_iface(LO, MacAddr(LB_MAC)).unwrap();
    dp.set_vmacs(LO, &VMACS.map(|(m, master)| (MacAddr(m), master)))
        .unwrap();
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
                table_size: DEFAULT_TABLE_SIZE,
                entries,
                standby: Vec::new(),
                configured_entries: None,
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
    let mut model = Model::new(LB_MAC, DEFAULT_HASH_SEED, vips);
    model.vmacs = VMACS.to_vec();
    Setup { dp, model }
}

/// What the generator should aim at for this config.
pub fn targets(model: &Model) -> Targets {
    let mut t = Targets {
        our_mac: LB_MAC,
        vmacs: model.vmacs.iter().map(|(m, _)| *m).collect(),
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
pub fn check(
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
    let master_vmac = VMACS.iter().any(|(m, master)| *master && frame[..6] == *m);
    if frame[..6] != LB_MAC && !master_vmac {
        return Err(
            "transmitted a frame not addressed to our MAC or a vmac we are master of".into(),
        );
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

/// REASON_STATS packets, by reason, summed over the CPUs.
pub fn reason_packets(dp: &Datapath) -> Vec<u64> {
    dp.reason_totals()
        .unwrap()
        .iter()
        .map(|(_, t)| t.packets)
        .collect()
}

/// VIP_STATS packets of VIPs 0..n.
pub fn vip_packets(dp: &Datapath, n: usize) -> Vec<u64> {
    (0..n as u32)
        .map(|id| dp.vip_totals(id).unwrap().packets)
        .collect()
}

impl Setup {
    /// Runs one frame through the program (a frame shorter than an Ethernet header cannot be
    /// run: BPF_PROG_TEST_RUN refuses it) and checks it against the design and the model.
    /// Returns the model's decision, or what was wrong.
    pub fn differ(&self, frame: &[u8]) -> Result<Decision, String> {
        let want = self.model.decide(frame);
        let (verdict, out) = run(self.dp.program(), frame, LO);
        check(&self.model, frame, &want, verdict, &out).map_err(|what| {
            format!(
                "{what}\n  frame  {}\n  model  {want:?}\n  kernel {} -> {}",
                hex(frame),
                verdict_name(verdict),
                hex(&out)
            )
        })?;
        Ok(want)
    }
}
