//! Part `forwarding`: packets per second through a load balancer in network namespaces, for
//! three load balancers in the same run: the baseline (`xdp_macswap`, everything to one
//! backend), the real `dsr` binary, and the nftables DSR peer (netdev ingress: jhash ->
//! backend MAC, fwd). Two rigs (see rig.rs): the project's lab (bridge, real backends) and a
//! bare veth pair, where the load balancer's own cost is a larger share of the path.
//!
//! Traffic stays inside namespaces this part creates, every load loop is bounded in time, and
//! everything is removed when the part returns, also on error or Ctrl-C.

use std::process::Command;

use anyhow::{Result, bail};

use crate::{
    dsr_process,
    report::{PartReport, Table, Target, percent, pps, ratio},
    rig::{BACKENDS, BATCH, Balancer, FLOWS, Rig, Sample, Topology},
    sys::median,
};

pub struct Size {
    pub rounds: usize,
    /// Length of one measurement, seconds.
    pub seconds: f64,
    /// Untimed traffic before each measurement (caches, page pools), seconds.
    pub warmup: f64,
}

pub const FULL: Size = Size {
    rounds: 5,
    seconds: 2.0,
    warmup: 0.2,
};
pub const QUICK: Size = Size {
    rounds: 1,
    seconds: 0.5,
    warmup: 0.1,
};

const TOPOLOGIES: [Topology; 2] = [Topology::Lab, Topology::Wire];

pub fn run(size: &Size, cpu: usize) -> Result<PartReport> {
    let mut report = PartReport::new("forwarding", "Forwarding rate in network namespaces");
    dsr_process::ensure_binary()?;
    for tool in ["nft", "bridge", "nsenter"] {
        if Command::new(tool).arg("--version").output().is_err() {
            bail!("`{tool}` is missing: `cargo xtask bench` installs what the lab needs");
        }
    }

    // samples[topology][balancer]
    let mut samples: Vec<Vec<Vec<Sample>>> = Vec::new();
    for topology in TOPOLOGIES {
        let rig = Rig::build(topology)?;
        let mut per_balancer: Vec<Vec<Sample>> = Balancer::ALL.iter().map(|_| Vec::new()).collect();
        for round in 0..size.rounds {
            for k in 0..Balancer::ALL.len() {
                let i = (k + round) % Balancer::ALL.len();
                let balancer = Balancer::ALL[i];
                let sample = rig.measure_with(balancer, size.warmup, size.seconds)?;
                report.failures.extend(check(topology, balancer, &sample));
                per_balancer[i].push(sample);
            }
        }
        drop(rig);
        samples.push(per_balancer);
    }

    report.method = vec![
        format!(
            "lab (bridge): the project's namespace lab: client, load balancer and {BACKENDS} \
             backends (equal weights) on one Linux bridge (veth pairs; static fdb entries; \
             bridge-nf-call-* off in the switch namespace); frames counted on the backends."
        ),
        "wire (veth pair): client <-> load balancer on one veth pair, nothing else; the load \
         balancer sends the frames back to the client's eth0, where they are counted per \
         backend MAC. Shows the load balancer's cost with little else in the path."
            .into(),
        format!(
            "traffic: BPF_PROG_TEST_RUN live-frame mode (batch {BATCH}) in the client's \
             namespace runs bench_gen: 60-byte IPv4 UDP frames to the VIP, a new source port \
             per frame ({FLOWS} flows), XDP_TX out of the client's eth0. Thread pinned to CPU \
             {cpu}; the softirq work of the whole path runs on the CPU that sent the frame (veth \
             has no RSS), so one CPU carries generator, load balancer and sinks."
        ),
        format!(
            "counted: bench_sink (XDP: count per destination MAC, drop) where the frames end. \
             rate = frames delivered / time; offered = frames generated / time; loss = 1 - \
             delivered / generated (frames dropped because the generator outran the path, \
             e.g. full veth rings: the path was saturated). {} round(s) of {:.1} s per load \
             balancer after {:.1} s of warm-up, the load balancers alternating (start rotated \
             per round); medians.",
            size.rounds, size.seconds, size.warmup
        ),
        "load balancers, on the LB's eth0: baseline = xdp_macswap (native XDP; both MACs \
         rewritten to backend 1's and the LB's, XDP_TX); dsr = `dsr run` (target/release/dsr, \
         native XDP; the lab's config, or static backend MACs on the wire); nftables = netdev \
         ingress chain `ip daddr VIP udp dport 53 ether daddr set jhash ip saddr . udp sport \
         mod 4 seed .. map { 0 : MAC1, .. } ether saddr set LB-MAC fwd to \"eth0\"` (on the \
         wire with an xdp_pass on the LB's eth0, which a veth needs to take XDP_TX frames)."
            .into(),
    ];

    let mut t = Table::new(
        "forwarding rate (frames delivered per second)",
        &[
            "rig",
            "load balancer",
            "rate",
            "x baseline",
            "x nftables",
            "rounds min..max",
            "offered",
            "loss",
        ],
    )
    .labels(2);
    for (topology, per_balancer) in TOPOLOGIES.iter().zip(&samples) {
        let med = |i: usize, f: fn(&Sample) -> f64| {
            median(&per_balancer[i].iter().map(f).collect::<Vec<_>>())
        };
        let rates: Vec<f64> = (0..Balancer::ALL.len())
            .map(|i| med(i, Sample::rate))
            .collect();
        let (base, dsr, nft) = (rates[0], rates[1], rates[2]);
        for (i, balancer) in Balancer::ALL.iter().enumerate() {
            let all: Vec<f64> = per_balancer[i].iter().map(Sample::rate).collect();
            t.row(vec![
                topology.label().into(),
                balancer.label().into(),
                pps(rates[i]),
                ratio(rates[i] / base),
                ratio(rates[i] / nft),
                format!(
                    "{}..{}",
                    pps(all.iter().copied().fold(f64::INFINITY, f64::min)),
                    pps(all.iter().copied().fold(0.0, f64::max))
                ),
                pps(med(i, Sample::offered)),
                percent(100.0 * med(i, Sample::loss).max(0.0)),
            ]);
        }
        let (packets, flows) = per_balancer[1]
            .iter()
            .filter_map(|s| s.dsr_flows)
            .fold((0, 0), |(p, f), (sp, sf)| (p + sp, f + sf));
        report.notes.push(format!(
            "{}: during the timed runs dsr placed {} of its {packets} packets by the Maglev \
             table as new flows; the rest were flow-table hits (the warm-up sends every flow \
             once).",
            topology.label(),
            percent(100.0 * flows as f64 / packets.max(1) as f64)
        ));
        report.targets.push(Target::new(
            format!("dsr rate / baseline, {}", topology.label()),
            ">= 0.9x",
            ratio(dsr / base),
            dsr / base >= 0.9,
        ));
        report.targets.push(Target::new(
            format!("dsr rate / nftables, {}", topology.label()),
            ">= 3x",
            ratio(dsr / nft),
            dsr / nft >= 3.0,
        ));
    }
    report.tables.push(t);
    report.notes.push(
        "The generator and the rest of the path (veths, bridge, sinks) share the one CPU with \
         the load balancer, so each ratio compares whole paths; in the lab the shared part \
         dominates. The datapath part measures the programs alone."
            .into(),
    );
    report.notes.push(
        "In the lab the baseline sends everything to one backend (one bridge port, full \
         batches), while dsr and nftables spread over all of them; on the wire every frame \
         takes the same way back whatever its backend."
            .into(),
    );
    Ok(report)
}

/// Functional checks of one measurement: the traffic arrived, where it should.
fn check(topology: Topology, balancer: Balancer, s: &Sample) -> Vec<String> {
    let what = format!("{}, {}", topology.label(), balancer.label());
    let total = s.total();
    if s.sent == 0 || total == 0 {
        return vec![format!("{what}: generated {}, delivered {total}", s.sent)];
    }
    let mut failures = Vec::new();
    if total > s.sent {
        failures.push(format!(
            "{what}: delivered {total} > generated {} (frames from elsewhere?)",
            s.sent
        ));
    }
    match balancer {
        Balancer::Baseline => {
            if s.delivered[1..].iter().any(|&n| n > 0) {
                failures.push(format!(
                    "{what}: frames reached other backends than the first: {:?}",
                    s.delivered
                ));
            }
        }
        Balancer::Dsr | Balancer::Nftables => {
            // Equal weights and tens of thousands of flows: each backend gets about 1/N.
            let fair = total as f64 / BACKENDS as f64;
            if s.delivered.iter().any(|&n| (n as f64) < 0.5 * fair) {
                failures.push(format!(
                    "{what}: uneven spread over the backends: {:?}",
                    s.delivered
                ));
            }
        }
    }
    failures
}
