//! The forwarding benchmark's rigs: where frames are generated, balanced and counted.
//!
//! - `Lab`: the project's namespace lab (`dsr_lab::lab::Lab`): client, load balancer and
//!   backends on one Linux bridge. The realistic path: every frame crosses the bridge twice
//!   and is an skb between XDP hops.
//! - `Wire`: a client and a load balancer joined by one veth pair, nothing else. The load
//!   balancer sends the frames back to the client's interface, where one sink counts them per
//!   backend MAC. Without a bridge and backends the path is short, so the load balancer's own
//!   cost shows in the rate.
//!
//! Traffic: `bench_gen` run in the live-frame mode of BPF_PROG_TEST_RUN in the client's
//! namespace (one template frame, a new UDP source port per frame, XDP_TX out of the client's
//! eth0). Counting: `bench_sink` (counts per destination MAC, drops) where the frames end.
//! Everything is removed when a rig drops (also on error or Ctrl-C unwinding).

use std::{
    fs,
    panic::AssertUnwindSafe,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    Ebpf,
    maps::{Array, PerCpuArray},
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
};
use dsr::control::Request;
use dsr_common::DEFAULT_HASH_SEED;
use dsr_lab::{
    ebpf::{BENCH_OBJECT, REFERENCE_OBJECT},
    frames::{self, ETH_P_IPV4, UDP},
    lab::{
        CLIENT_IP, CLIENT_MAC, LB_MAC, Lab, UDP_PORT, VIP, backend_ip, backend_mac, mac_str, sh,
    },
};

use crate::{
    dsr_process::DsrProcess,
    sys::{Namespaces, TempDir, check_interrupted, in_netns},
};

pub const BACKENDS: usize = 4;
pub const IFACE: &str = "eth0";
/// Frames per BPF_PROG_TEST_RUN call of the generator (a few ms at these rates), and frames
/// the kernel runs per batch before it flushes them to the device.
pub const FRAMES_PER_CALL: u32 = 65_536;
pub const BATCH: u32 = 64;
/// Flows the generator cycles through (source ports 1024..=65535, see bench_gen).
pub const FLOWS: u32 = 65536 - 1024;
/// The nftables table the peer lives in (on the load balancer).
const NFT_TABLE: &str = "dsrbench";

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    Lab,
    Wire,
}

impl Topology {
    pub fn label(self) -> &'static str {
        match self {
            Topology::Lab => "lab (bridge)",
            Topology::Wire => "wire (veth pair)",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Balancer {
    Baseline,
    Dsr,
    Nftables,
}

impl Balancer {
    pub const ALL: [Balancer; 3] = [Balancer::Baseline, Balancer::Dsr, Balancer::Nftables];

    pub fn label(self) -> &'static str {
        match self {
            Balancer::Baseline => "baseline (xdp_macswap)",
            Balancer::Dsr => "dsr (the dsr binary)",
            Balancer::Nftables => "nftables DSR peer",
        }
    }
}

/// What one measurement saw.
pub struct Sample {
    pub sent: u64,
    pub delivered: [u64; BACKENDS],
    pub elapsed: f64,
    /// dsr only: (packets, new flows) its VIP counters saw during the timed run; the rest of
    /// the packets were flow-table hits.
    pub dsr_flows: Option<(u64, u64)>,
}

impl Sample {
    pub fn total(&self) -> u64 {
        self.delivered.iter().sum()
    }

    /// Frames delivered per second.
    pub fn rate(&self) -> f64 {
        self.total() as f64 / self.elapsed
    }

    pub fn offered(&self) -> f64 {
        self.sent as f64 / self.elapsed
    }

    pub fn loss(&self) -> f64 {
        1.0 - self.total() as f64 / self.sent.max(1) as f64
    }
}

/// What keeps the topology alive; dropped last.
enum Topo {
    Lab(Box<Lab>),
    /// The wire's namespaces (deleted on drop), and the dsr instance name used there.
    Wire {
        _namespaces: Namespaces,
        instance: String,
    },
}

/// Field order is drop order: programs and processes first, the namespaces last.
pub struct Rig {
    pub topology: Topology,
    generator: Ebpf,
    sinks: Vec<Ebpf>,
    /// XDP programs the topology needs on veth peers (see PLATFORM.md, veth pitfall #1).
    _peer_xdp: Vec<Ebpf>,
    client_ns: String,
    lb_ns: String,
    client_ifindex: u32,
    backend_macs: [[u8; 6]; BACKENDS],
    template: Vec<u8>,
    dir: TempDir,
    topo: Topo,
}

impl Rig {
    pub fn build(topology: Topology) -> Result<Rig> {
        match topology {
            Topology::Lab => Rig::lab(),
            Topology::Wire => Rig::wire(),
        }
    }

    fn lab() -> Result<Rig> {
        // Lab::new panics (after removing what it built) when the host lacks something.
        let lab = std::panic::catch_unwind(AssertUnwindSafe(|| Lab::new("bench", &[1; BACKENDS])))
            .map_err(|e| {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                anyhow!("building the lab failed: {msg}")
            })?;
        let lab = Box::new(lab);
        // From here on the lab is dropped (namespaces removed) on every error path.
        let sw = lab.switch_ns.clone();
        // A switch does not run the host's firewall: with br_netfilter present (it is here),
        // bridged frames would go through iptables hooks, which cost more than everything
        // the benchmark measures.
        in_netns(&sw, || {
            for table in ["iptables", "ip6tables", "arptables"] {
                let _ = fs::write(format!("/proc/sys/net/bridge/bridge-nf-call-{table}"), "0");
            }
        })?;
        // Static fdb entries: the bridge never floods while it learns.
        let mut ports = vec![
            ("port-client".to_owned(), CLIENT_MAC),
            ("port-lb".to_owned(), LB_MAC),
        ];
        for (i, b) in lab.backends.iter().enumerate() {
            ports.push((format!("port-b{}", i + 1), b.mac));
        }
        for (port, mac) in &ports {
            sh(&[
                "ip",
                "netns",
                "exec",
                &sw,
                "bridge",
                "fdb",
                "replace",
                &mac_str(*mac),
                "dev",
                port,
                "master",
                "static",
            ])?;
        }
        // The lab gives the LB's switch port an XDP program; the generator transmits through
        // the client's veth, whose switch port needs one too.
        let peer = attach(REFERENCE_OBJECT, "xdp_pass", &sw, "port-client")?;
        let mut sinks = Vec::new();
        for b in &lab.backends {
            sinks.push(attach(BENCH_OBJECT, "bench_sink", &b.ns, IFACE)?);
        }
        let backend_macs = std::array::from_fn(|i| lab.backends[i].mac);
        let (client_ns, lb_ns) = (lab.client_ns.clone(), lab.lb_ns.clone());
        let dir = TempDir::create(&format!("{}-bench", lab.tag))?;
        Rig::finish(
            Topology::Lab,
            client_ns,
            lb_ns,
            sinks,
            vec![peer],
            backend_macs,
            dir,
            Topo::Lab(lab),
        )
    }

    fn wire() -> Result<Rig> {
        let tag = format!("dsrbench-{}", std::process::id());
        let (client_ns, lb_ns) = (format!("{tag}-wc"), format!("{tag}-wl"));
        let namespaces = Namespaces::create(&[&client_ns, &lb_ns])?;
        sh(&[
            "ip", "-n", &client_ns, "link", "add", IFACE, "type", "veth", "peer", "name", IFACE,
            "netns", &lb_ns,
        ])?;
        for (ns, mac) in [(&client_ns, CLIENT_MAC), (&lb_ns, LB_MAC)] {
            sh(&[
                "ip",
                "-n",
                ns,
                "link",
                "set",
                IFACE,
                "address",
                &mac_str(mac),
            ])?;
            sh(&["ip", "-n", ns, "link", "set", IFACE, "up"])?;
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        }
        // Everything the load balancer sends comes back to the client's eth0: one sink there
        // counts per backend MAC (and, being an XDP program, lets the veth deliver XDP_TX).
        let sinks = vec![attach(BENCH_OBJECT, "bench_sink", &client_ns, IFACE)?];
        let dir = TempDir::create(&tag)?;
        Rig::finish(
            Topology::Wire,
            client_ns,
            lb_ns,
            sinks,
            Vec::new(),
            std::array::from_fn(backend_mac),
            dir,
            Topo::Wire {
                _namespaces: namespaces,
                instance: format!("{tag}-wire"),
            },
        )
    }

    /// Loads the generator and builds the template frame.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        topology: Topology,
        client_ns: String,
        lb_ns: String,
        sinks: Vec<Ebpf>,
        peer_xdp: Vec<Ebpf>,
        backend_macs: [[u8; 6]; BACKENDS],
        dir: TempDir,
        topo: Topo,
    ) -> Result<Rig> {
        let mut generator = Ebpf::load(BENCH_OBJECT).context("loading bench_gen")?;
        let prog: &mut Xdp = generator
            .program_mut("bench_gen")
            .ok_or_else(|| anyhow!("bench_gen missing"))?
            .try_into()?;
        prog.load().context("loading bench_gen")?;
        set_macs(&mut generator, "GEN_MACS", LB_MAC, CLIENT_MAC)?;
        let client_ifindex = in_netns(&client_ns, || {
            let name = std::ffi::CString::new(IFACE).expect("no NUL");
            // SAFETY: a valid C string.
            unsafe { libc::if_nametoindex(name.as_ptr()) }
        })?;
        if client_ifindex == 0 {
            bail!("no {IFACE} in {client_ns}");
        }
        // 60 bytes: the smallest Ethernet frame (without FCS).
        let seg = frames::udp(1024, UDP_PORT, &[0u8; 18]);
        let template = frames::ethernet(
            LB_MAC,
            CLIENT_MAC,
            ETH_P_IPV4,
            &frames::ipv4(CLIENT_IP, VIP, UDP, &[], &seg),
        );
        Ok(Rig {
            topology,
            generator,
            sinks,
            _peer_xdp: peer_xdp,
            client_ns,
            lb_ns,
            client_ifindex,
            backend_macs,
            template,
            dir,
            topo,
        })
    }

    /// Installs `balancer` on the load balancer, measures for `seconds` after `warmup`, removes
    /// it again.
    pub fn measure_with(&self, balancer: Balancer, warmup: f64, seconds: f64) -> Result<Sample> {
        check_interrupted()?;
        // Whatever ran before must have left nothing behind (dsr's `stop` detaches).
        let link = sh(&["ip", "-n", &self.lb_ns, "link", "show", IFACE])?;
        if link.contains("xdp") {
            bail!("an XDP program is still attached to the load balancer's {IFACE}:\n{link}");
        }
        match balancer {
            Balancer::Baseline => {
                let mut prog = attach(REFERENCE_OBJECT, "xdp_macswap", &self.lb_ns, IFACE)?;
                set_macs(&mut prog, "REF_MACS", self.backend_macs[0], LB_MAC)?;
                self.measure(warmup, seconds, None)
            }
            Balancer::Dsr => {
                let (config, instance, socket) = self.dsr_config()?;
                let log = self.dir.path().join("dsr.log");
                let dsr = DsrProcess::start(&self.lb_ns, &config, &instance, &socket, &log)?;
                let vip_counters = || -> Result<(u64, u64)> {
                    let status = dsr.call(&Request::Status)?.status.context("no status")?;
                    Ok(status.vips.iter().fold((0, 0), |(p, f), v| {
                        (p + v.traffic.packets, f + v.traffic.flows)
                    }))
                };
                let sample = self.measure(warmup, seconds, Some(&vip_counters));
                dsr.stop()?;
                sample
            }
            Balancer::Nftables => {
                // On the wire the frames reach the LB's veth by XDP_TX: it needs an XDP
                // program to take them (an XDP_PASS hands them to the stack, i.e. to nft).
                let _pass = match self.topology {
                    Topology::Wire => {
                        Some(attach(REFERENCE_OBJECT, "xdp_pass", &self.lb_ns, IFACE)?)
                    }
                    Topology::Lab => None,
                };
                let rules = self.dir.path().join("nft-dsr.conf");
                fs::write(&rules, self.nft_rules())?;
                let rules = rules.to_string_lossy().into_owned();
                sh(&["ip", "netns", "exec", &self.lb_ns, "nft", "-f", &rules])?;
                let sample = self.measure(warmup, seconds, None);
                sh(&[
                    "ip",
                    "netns",
                    "exec",
                    &self.lb_ns,
                    "nft",
                    "delete",
                    "table",
                    "netdev",
                    NFT_TABLE,
                ])?;
                sample
            }
        }
    }

    /// dsr's config (written to the rig's directory), its instance and control socket: the
    /// lab's own config (backend MACs resolved by ARP, as in production), or on the wire
    /// backends that exist only as static MACs.
    fn dsr_config(&self) -> Result<(PathBuf, String, PathBuf)> {
        let (text, instance, socket) = match &self.topo {
            Topo::Lab(lab) => (lab.config(), lab.tag.clone(), lab.socket()),
            Topo::Wire { instance, .. } => {
                let instance = instance.clone();
                let socket = self.dir.path().join("dsr.sock");
                let mut c = format!(
                    "instance = \"{instance}\"\ninterface = \"{IFACE}\"\n\
                     control_socket = \"{}\"\nstate_dir = \"{}\"\n\
                     max_vips = 4\nmax_backends = 64\nflow_table_size = 65536\n\n\
                     [[vip]]\nname = \"bench\"\naddress = \"{VIP}\"\nport = {UDP_PORT}\n\
                     protocol = \"udp\"\n",
                    socket.display(),
                    self.dir.path().join("state").display()
                );
                for (i, mac) in self.backend_macs.iter().enumerate() {
                    c += &format!(
                        "  [[vip.backend]]\n  address = \"{}\"\n  weight = 1\n  mac = \"{}\"\n",
                        backend_ip(i),
                        mac_str(*mac)
                    );
                }
                (c, instance, socket)
            }
        };
        let path = self.dir.path().join("dsr.toml");
        fs::write(&path, text)?;
        Ok((path, instance, socket))
    }

    /// The nftables peer: dsr's job (hash the flow, pick a backend MAC, our MAC as source,
    /// back out of the same interface) in the kernel's netdev ingress hook.
    fn nft_rules(&self) -> String {
        let map: Vec<String> = self
            .backend_macs
            .iter()
            .enumerate()
            .map(|(i, mac)| format!("{i} : {}", mac_str(*mac)))
            .collect();
        format!(
            "table netdev {NFT_TABLE} {{\n  chain ingress {{\n    type filter hook ingress \
             device \"{IFACE}\" priority 0; policy accept;\n    ip daddr {VIP} udp dport \
             {UDP_PORT} ether daddr set jhash ip saddr . udp sport mod {BACKENDS} seed \
             {DEFAULT_HASH_SEED:#x} map {{ {} }} ether saddr set {} fwd to \"{IFACE}\"\n  }}\n}}\n",
            map.join(", "),
            mac_str(LB_MAC)
        )
    }

    /// Warm-up (at least one call: every flow once, so that a load balancer with a flow
    /// table knows them all), then the timed run. `dsr_counters` reads dsr's (packets, new
    /// flows) around the timed run.
    fn measure(
        &self,
        warmup: f64,
        seconds: f64,
        dsr_counters: Option<&dyn Fn() -> Result<(u64, u64)>>,
    ) -> Result<Sample> {
        self.generate(warmup)?;
        std::thread::sleep(Duration::from_millis(20));
        let dsr0 = dsr_counters.map(|f| f()).transpose()?;
        let (sent0, got0) = (self.sent()?, self.delivered()?);
        let elapsed = self.generate(seconds)?;
        // The path runs in softirq right after each batch; a short pause covers stragglers.
        std::thread::sleep(Duration::from_millis(50));
        let (sent1, got1) = (self.sent()?, self.delivered()?);
        let dsr1 = dsr_counters.map(|f| f()).transpose()?;
        Ok(Sample {
            sent: sent1 - sent0,
            delivered: std::array::from_fn(|i| got1[i] - got0[i]),
            elapsed,
            dsr_flows: dsr0.zip(dsr1).map(|(a, b)| (b.0 - a.0, b.1 - a.1)),
        })
    }

    /// Sends frames from the client's namespace for `seconds` (whole calls); returns the time
    /// taken. The calling thread's CPU affinity (inherited) decides where it all runs.
    fn generate(&self, seconds: f64) -> Result<f64> {
        let prog: &Xdp = self
            .generator
            .program("bench_gen")
            .and_then(|p| p.try_into().ok())
            .expect("loaded in finish()");
        // struct xdp_md: live frames are "received" on, and XDP_TX sent out of, this ifindex.
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(self.template.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&self.client_ifindex.to_ne_bytes());
        let template = &self.template;
        in_netns(&self.client_ns, || -> Result<f64> {
            let start = Instant::now();
            while start.elapsed().as_secs_f64() < seconds {
                prog.test_run(TestRunOptions {
                    data_in: Some(template),
                    ctx_in: Some(&ctx),
                    repeat: FRAMES_PER_CALL,
                    attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
                    ..Default::default()
                })
                .context("BPF_PROG_TEST_RUN (live frames)")?;
                check_interrupted()?;
            }
            Ok(start.elapsed().as_secs_f64())
        })?
    }

    fn sent(&self) -> Result<u64> {
        per_cpu_sum(&self.generator, "GEN_COUNT", 0)
    }

    /// Frames counted so far for each backend (by its MAC's last byte), over every sink.
    fn delivered(&self) -> Result<[u64; BACKENDS]> {
        let mut out = [0u64; BACKENDS];
        for (o, mac) in out.iter_mut().zip(&self.backend_macs) {
            for sink in &self.sinks {
                *o += per_cpu_sum(sink, "SINK_COUNT", mac[5] as u32)?;
            }
        }
        Ok(out)
    }
}

fn per_cpu_sum(ebpf: &Ebpf, map: &str, index: u32) -> Result<u64> {
    let counts: PerCpuArray<_, u64> = ebpf
        .map(map)
        .ok_or_else(|| anyhow!("{map} missing"))?
        .try_into()?;
    Ok(counts.get(&index, 0)?.iter().sum())
}

/// Writes a [destination, source] MAC pair map (GEN_MACS, REF_MACS).
fn set_macs(ebpf: &mut Ebpf, map: &str, dst: [u8; 6], src: [u8; 6]) -> Result<()> {
    let mut macs: Array<_, [u8; 8]> = ebpf
        .map_mut(map)
        .ok_or_else(|| anyhow!("{map} missing"))?
        .try_into()?;
    let mac8 = |m: [u8; 6]| [m[0], m[1], m[2], m[3], m[4], m[5], 0, 0];
    macs.set(0, mac8(dst), 0)?;
    macs.set(1, mac8(src), 0)?;
    Ok(())
}

/// Loads program `name` of `object` and attaches it (native XDP) to `iface` in namespace `ns`.
/// Detached when the returned Ebpf drops.
fn attach(object: &'static [u8], name: &str, ns: &str, iface: &str) -> Result<Ebpf> {
    in_netns(ns, || -> Result<Ebpf> {
        let mut ebpf = Ebpf::load(object).with_context(|| format!("loading {name}"))?;
        let prog: &mut Xdp = ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("{name} missing"))?
            .try_into()?;
        prog.load().with_context(|| format!("loading {name}"))?;
        prog.attach(iface, XdpMode::Driver)
            .with_context(|| format!("attaching {name} to {iface} in {ns}"))?;
        Ok(ebpf)
    })?
}
