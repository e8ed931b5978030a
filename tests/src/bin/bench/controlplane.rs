//! Part `controlplane`: what a configuration change costs before it takes effect: building a
//! Maglev table, pushing it to the kernel (dsr's mmap writer and VIPS switch, against the naive
//! one-update-per-element), a whole config reload of the running daemon, and the memory dsr's
//! maps pin.

use std::{collections::BTreeSet, fs, net::Ipv4Addr, path::Path, time::Instant};

use anyhow::{Context, Result};
use dsr::{
    control::Request,
    datapath::{Datapath, LoadOptions, Sizes},
    plan::{VipOptions, maglev},
    spec::model::{Protocol, VipAddr},
};
use dsr_common::{
    DEFAULT_FLOW_IDLE_SECS, DEFAULT_FLOW_TABLE_SIZE, DEFAULT_HASH_SEED, DEFAULT_MAX_BACKENDS,
    DEFAULT_MAX_VIPS, DEFAULT_TABLE_SIZE, TABLE_CHUNK, TableChunk,
};
use dsr_lab::lab::sh;

use crate::{
    dsr_process::DsrProcess,
    rawmap::RawArray,
    report::{PartReport, Table, Target, bytes, ms},
    sys::{Namespaces, TempDir, check_interrupted, median, online_cpus},
};

pub struct Size {
    /// Timed table builds per backend count.
    pub builds: usize,
    /// Timed pushes per backend count.
    pub pushes: usize,
    /// Timed one-update-per-element writes.
    pub single: usize,
    /// Timed reloads per backend count.
    pub reloads: usize,
    /// Flows in the flow table for the walk and flow-state exchange costs.
    pub flows: u32,
}

pub const FULL: Size = Size {
    builds: 31,
    pushes: 51,
    single: 3,
    reloads: 21,
    flows: DEFAULT_FLOW_TABLE_SIZE,
};
pub const QUICK: Size = Size {
    builds: 5,
    pushes: 11,
    single: 1,
    reloads: 3,
    flows: 65536,
};

const COUNTS: [u32; 3] = [10, 100, 1000];
const M: u32 = DEFAULT_TABLE_SIZE;

fn backend_addr(vip: usize, i: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, vip as u8 + 1, (i >> 8) as u8, i as u8)
}

fn entries(n: u32) -> Vec<maglev::Entry> {
    (0..n)
        .map(|i| maglev::Entry {
            address: backend_addr(0, i).into(),
            id: i,
            weight: 1,
        })
        .collect()
}

/// What `f` returns, and the milliseconds it took.
fn timed<T>(f: impl FnOnce() -> T) -> (f64, T) {
    let t = Instant::now();
    let out = f();
    (t.elapsed().as_secs_f64() * 1e3, out)
}

pub fn run(size: &Size, cpu: usize) -> Result<PartReport> {
    let mut report = PartReport::new(
        "controlplane",
        "Control plane: tables, pushes, reloads, memory",
    );
    report.method = vec![
        format!(
            "wall clock (Instant) around the call, thread pinned to CPU {cpu}; median of {} \
             builds, {} pushes (after 2 untimed pushes that fault the rows in) and {} reloads \
             per row.",
            size.builds, size.pushes, size.reloads
        ),
        format!(
            "push = Datapath::set_vip of a prebuilt {M}-slot table into a dsr data path loaded \
             with the default sizes ({DEFAULT_MAX_VIPS} VIPs, {DEFAULT_MAX_BACKENDS} backends, \
             {DEFAULT_FLOW_TABLE_SIZE} flows): the table is copied into free chunks of \
             TABLES through its mmap, then one VIPS update switches to it and the old chunks \
             are freed. Tables for N and \
             N-1 backends alternate, so every push changes the table."
        ),
        "reload = the running `dsr` daemon (in its own namespace, on a veth, backends with \
         static MACs) asked to reload over its control socket (what `dsr reload` and SIGHUP \
         do), timed from the request to its answer, which comes after the maps are written. \
         The config holds VIPs of 10, 100 and 1000 backends; each reload changes one backend's \
         weight in the VIP of N backends, so it re-reads and validates the whole file (1110 \
         backends), rebuilds that VIP's table, writes the differences and saves its state."
            .into(),
    ];

    let builds = build_times(size.builds)?;
    let maps_before = bpf_map_fds();
    let sizes = Sizes {
        max_vips: DEFAULT_MAX_VIPS,
        max_backends: DEFAULT_MAX_BACKENDS,
        table_budget: dsr_common::DEFAULT_TABLE_BUDGET,
        flow_table_size: DEFAULT_FLOW_TABLE_SIZE,
    };
    let mut dp = Datapath::load(&LoadOptions {
        sizes,
        hash_seed: DEFAULT_HASH_SEED,
        flow_idle: std::time::Duration::from_secs(DEFAULT_FLOW_IDLE_SECS),
        pin_dir: None,
        datapath_log: dsr::spec::model::DatapathLog::Off,
    })
    .context("loading dsr")?;
    let memory = map_memory(&maps_before)?;
    let pushes = push_times(&mut dp, size.pushes, &mut report.failures)?;
    let sync = sync_costs(&dp, size.flows)?;
    drop(dp);
    let (per_slot, per_chunk) = one_by_one_times(size.single)?;
    crate::dsr_process::ensure_binary()?;
    let reloads = reload_times(size.reloads, &mut report.failures)?;

    let mut t = Table::new(
        "time to build, push and reload one table (median)",
        &[
            "backends",
            "maglev::build",
            "push (set_vip)",
            "config reload to effect",
        ],
    );
    for (i, n) in COUNTS.iter().enumerate() {
        t.row(vec![
            n.to_string(),
            ms(builds[i]),
            ms(pushes[i]),
            ms(reloads[i]),
        ]);
    }
    report.tables.push(t);

    let mut t = Table::new(
        "pushing one table, by method (any N: the bytes are the same)",
        &["method", "syscalls", "time", "x dsr's push"],
    );
    let dsr_push = median(&pushes);
    t.row(vec![
        "dsr: mmap copy + 1 VIPS update (median of all rows)".into(),
        "1".into(),
        ms(dsr_push),
        "1.00x".into(),
    ]);
    let chunks = M.div_ceil(TABLE_CHUNK);
    for (label, calls, samples) in [
        (
            format!("{M} x 4-byte elements, one update each"),
            M,
            &per_slot,
        ),
        (
            format!("{chunks} x {TABLE_CHUNK}-slot chunks (dsr's layout), one update each"),
            chunks,
            &per_chunk,
        ),
    ] {
        let x = median(samples);
        t.row(vec![
            label,
            calls.to_string(),
            ms(x),
            format!("{:.0}x", x / dsr_push),
        ]);
    }
    report.tables.push(t);

    let mut t = Table::new(
        format!(
            "memory of the maps (memlock from /proc/self/fdinfo; {DEFAULT_MAX_VIPS} VIPs, \
             {DEFAULT_MAX_BACKENDS} backends, {M}-slot tables, {DEFAULT_FLOW_TABLE_SIZE} flows, \
             {} CPUs)",
            online_cpus()
        ),
        &["map", "entries", "memlock"],
    );
    let total: u64 = memory.iter().map(|m| m.memlock).sum();
    for m in &memory {
        t.row(vec![
            m.name.clone(),
            m.entries.to_string(),
            bytes(m.memlock),
        ]);
    }
    t.row(vec!["total".into(), String::new(), bytes(total)]);
    t.row(vec![
        "(Sizes::table_bytes: TABLES alone, dsr's estimate)".into(),
        String::new(),
        bytes(sizes.table_bytes()),
    ]);
    report.tables.push(t);

    let mut t = Table::new(
        format!(
            "flow table walk and flow-state exchange ([sync]) for {} flows",
            sync.flows
        ),
        &["what", "total", "per flow"],
    );
    t.row(vec![
        "walk the flow table (BPF_MAP_LOOKUP_BATCH; the flow count and sync)".into(),
        ms(sync.walk_ms),
        format!("{:.0} ns", sync.walk_ms * 1e6 / sync.flows as f64),
    ]);
    t.row(vec![
        "encode and sign (HMAC-SHA256) the datagrams".into(),
        ms(sync.encode_ms),
        format!("{:.0} ns", sync.encode_ms * 1e6 / sync.flows as f64),
    ]);
    t.row(vec![
        "verify and decode them".into(),
        ms(sync.decode_ms),
        format!("{:.0} ns", sync.decode_ms * 1e6 / sync.flows as f64),
    ]);
    t.row(vec![
        "bytes on the wire, per peer (UDP payload)".into(),
        bytes(sync.bytes),
        format!("{:.1} B", sync.bytes as f64 / sync.flows as f64),
    ]);
    report.tables.push(t);
    report.notes.push(format!(
        "[sync]: 1,000 new flows a second cost {:.0} kB/s per peer (UDP payload), plus a refresh \
         of each live flow every flow_idle_timeout / 3, and a walk of the whole table per interval \
         ({:.0} ns per entry here).",
        sync.bytes as f64 / sync.flows as f64,
        sync.walk_ms * 1e6 / sync.flows as f64
    ));

    let build_1000 = builds[COUNTS.iter().position(|&n| n == 1000).expect("1000")];
    report.targets.push(Target::new(
        "maglev::build, 1000 backends",
        "< 1.8 ms",
        ms(build_1000),
        build_1000 < 1.8,
    ));
    let worst_push = pushes.iter().copied().fold(0.0, f64::max);
    report.targets.push(Target::new(
        "push a changed table (worst of N=10/100/1000)",
        "< 5 ms",
        ms(worst_push),
        worst_push < 5.0,
    ));
    Ok(report)
}

struct SyncCosts {
    flows: u32,
    walk_ms: f64,
    encode_ms: f64,
    decode_ms: f64,
    bytes: u64,
}

/// Fills the flow table with `n` flows (as a peer's would arrive), then times one walk of it
/// and the encoding and decoding of them all as sync datagrams.
fn sync_costs(dp: &Datapath, n: u32) -> Result<SyncCosts> {
    use dsr::runtime::sync::{WireFlow, decode, encode};
    let mut adopter = dp.flow_adopter(std::time::Duration::from_secs(DEFAULT_FLOW_IDLE_SECS))?;
    let vip: dsr::spec::model::VipAddr = "192.0.2.10:80/tcp".parse().unwrap();
    let flow = |i: u32| {
        dsr_common::FlowKey::new(
            Ipv4Addr::from(0xc633_0000 + (i >> 16)).into(),
            i as u16,
            vip.address,
            80,
            6,
        )
    };
    for i in 0..n {
        let key = dsr_common::FlowMapKey::new(0, 0, &flow(i));
        adopter.adopt(&key, i % 16)?;
    }
    let counter = dp.flow_counter(std::time::Duration::from_secs(DEFAULT_FLOW_IDLE_SECS))?;
    let (walk_ms, live) = timed(|| counter.live_entries());
    let live = live?;
    if live.len() != n as usize {
        anyhow::bail!("walked {} of the {n} flows", live.len());
    }
    let wire: Vec<WireFlow> = live
        .iter()
        .map(|(k, e)| WireFlow {
            vip,
            vlan: k.vlan,
            flow: k.flow(dsr_common::addr_words(vip.address), 6, dsr_common::HASH_ALL),
            backend: Ipv4Addr::new(10, 0, 0, 1 + e.backend as u8).into(),
        })
        .collect();
    let key = b"bench sync key, 32 bytes or so..";
    let now = std::time::SystemTime::now();
    let mut seq = 0;
    let (encode_ms, datagrams) = timed(|| encode(key, 1, &mut seq, now, &wire));
    let bytes = datagrams.iter().map(|d| d.len() as u64).sum();
    let (decode_ms, got) = timed(|| {
        datagrams
            .iter()
            .map(|d| decode(key, d, now).map(|r| r.flows.len()).unwrap_or(0))
            .sum::<usize>()
    });
    if got != wire.len() {
        anyhow::bail!("decoded {got} of {} flows", wire.len());
    }
    Ok(SyncCosts {
        flows: n,
        walk_ms,
        encode_ms,
        decode_ms,
        bytes,
    })
}

/// Median time of `maglev::build` per backend count.
fn build_times(runs: usize) -> Result<Vec<f64>> {
    let mut out = Vec::new();
    for &n in &COUNTS {
        let e = entries(n);
        let samples: Vec<f64> = (0..runs)
            .map(|_| timed(|| std::hint::black_box(maglev::build(std::hint::black_box(&e), M))).0)
            .collect();
        out.push(median(&samples));
        check_interrupted()?;
    }
    Ok(out)
}

/// Median time of `Datapath::set_vip` with a changed table, per backend count.
fn push_times(dp: &mut Datapath, runs: usize, failures: &mut Vec<String>) -> Result<Vec<f64>> {
    let key = VipAddr {
        address: Ipv4Addr::new(192, 0, 2, 10).into(),
        port: 80,
        protocol: Protocol::Tcp,
        vlan: 0,
    };
    let mut out = Vec::new();
    for &n in &COUNTS {
        let e = entries(n);
        let tables = [maglev::build(&e, M), maglev::build(&e[1..], M)];
        for t in &tables {
            dp.set_vip(&key, 0, t, VipOptions::default())?;
        }
        let mut samples = Vec::with_capacity(runs);
        for i in 0..runs {
            let (took, result) =
                timed(|| dp.set_vip(&key, 0, &tables[i % 2], VipOptions::default()));
            result?;
            samples.push(took);
        }
        if dp.table(&key)? != tables[(runs - 1) % 2] {
            failures.push(format!(
                "push, N={n}: the table read back is not the one pushed"
            ));
        }
        out.push(median(&samples));
        check_interrupted()?;
    }
    Ok(out)
}

/// The naive way of pushing a table: one bpf_map_update_elem per element, into a plain array
/// of u32 slots and into one of dsr's 16-slot chunks. Medians (ms) of `runs` writes each.
fn one_by_one_times(runs: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    let table = maglev::build(&entries(100), M);
    let slots: Vec<u8> = table.iter().flat_map(|s| s.to_ne_bytes()).collect();
    let chunks = M.div_ceil(TABLE_CHUNK);
    let mut chunked = slots.clone();
    chunked.resize(chunks as usize * size_of::<TableChunk>(), 0);
    let per_slot_map = RawArray::create(M, 4)?;
    let per_chunk_map = RawArray::create(chunks, size_of::<TableChunk>() as u32)?;
    let (mut per_slot, mut per_chunk) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let (took, r) = timed(|| per_slot_map.write_one_by_one(&slots));
        r?;
        per_slot.push(took);
        let (took, r) = timed(|| per_chunk_map.write_one_by_one(&chunked));
        r?;
        per_chunk.push(took);
        check_interrupted()?;
    }
    Ok((per_slot, per_chunk))
}

/// Median reload-to-effect time (ms) of the running daemon, per backend count.
fn reload_times(runs: usize, failures: &mut Vec<String>) -> Result<Vec<f64>> {
    let tag = format!("dsrbench-{}-cp", std::process::id());
    let _ns = Namespaces::create(&[&tag])?;
    sh(&[
        "ip", "-n", &tag, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
    ])?;
    for dev in ["eth0", "eth1", "lo"] {
        sh(&["ip", "-n", &tag, "link", "set", dev, "up"])?;
    }
    let dir = TempDir::create(&tag)?;
    let socket = dir.path().join("dsr.sock");
    let config = dir.path().join("dsr.toml");
    let write = |changed: Option<(usize, u32)>| {
        fs::write(&config, reload_config(&tag, &socket, dir.path(), changed))
    };
    write(None)?;
    let log = dir.path().join("dsr.log");
    let dsr = DsrProcess::start(&tag, &config, &tag, &socket, &log)?;
    let mut out = Vec::new();
    for (k, &n) in COUNTS.iter().enumerate() {
        let mut samples = Vec::new();
        let mut weight = 1;
        for r in 0..runs {
            weight = if r % 2 == 0 { 2 } else { 1 };
            write(Some((k, weight)))?;
            let (took, answer) = timed(|| dsr.call(&Request::Reload));
            let answer = answer?;
            if !answer.ok || !answer.message.contains("1 changed") {
                failures.push(format!("reload, N={n}: {}", answer.message));
                break;
            }
            samples.push(took);
            check_interrupted()?;
        }
        // The effect, as the daemon reports it: the backend has its new weight.
        let status = dsr
            .call(&Request::Status)?
            .status
            .context("dsr sent no status")?;
        let seen = status
            .vips
            .iter()
            .find(|v| v.name == format!("n{n}"))
            .and_then(|v| {
                let first = std::net::IpAddr::from(backend_addr(k, 0));
                v.backends.iter().find(|b| b.address == first)
            })
            .map(|b| b.weight);
        if seen != Some(weight) {
            failures.push(format!(
                "reload, N={n}: status shows weight {seen:?}, the config says {weight}"
            ));
        }
        // Back to the original weights, so that the next VIP's reloads change only it.
        write(None)?;
        dsr.call(&Request::Reload)?;
        out.push(median(&samples));
    }
    dsr.stop()?;
    Ok(out)
}

/// The reload benchmark's config: VIP k has COUNTS[k] backends of weight 1, except backend 0
/// of VIP `changed.0`, which has weight `changed.1`.
fn reload_config(
    instance: &str,
    socket: &Path,
    dir: &Path,
    changed: Option<(usize, u32)>,
) -> String {
    let mut c = format!(
        "instance = \"{instance}\"\ninterface = \"eth0\"\ncontrol_socket = \"{}\"\n\
         state_dir = \"{}\"\nmax_vips = 4\nflow_table_size = 65536\n",
        socket.display(),
        dir.join("state").display()
    );
    for (k, &n) in COUNTS.iter().enumerate() {
        c += &format!(
            "\n[[vip]]\nname = \"n{n}\"\naddress = \"192.0.2.{}\"\nport = 80\nprotocol = \"tcp\"\n",
            k + 1
        );
        for i in 0..n {
            let weight = match changed {
                Some((v, w)) if v == k && i == 0 => w,
                _ => 1,
            };
            c += &format!(
                "  [[vip.backend]]\n  address = \"{}\"\n  weight = {weight}\n  \
                 mac = \"02:00:{:02x}:00:{:02x}:{:02x}\"\n",
                backend_addr(k, i),
                k + 1,
                i >> 8,
                i & 0xff
            );
        }
    }
    c
}

/// Numbers of the fds that are BPF maps.
fn bpf_map_fds() -> BTreeSet<u32> {
    let Ok(dir) = fs::read_dir("/proc/self/fd") else {
        return BTreeSet::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let target = fs::read_link(e.path()).ok()?;
        (target.to_string_lossy() == "anon_inode:bpf-map")
            .then(|| e.file_name().to_string_lossy().parse().ok())
            .flatten()
    })
    .collect()
}

struct MapMemory {
    name: String,
    entries: u64,
    memlock: u64,
}

/// memlock of every map fd opened since `before` (the maps of the data path just loaded).
fn map_memory(before: &BTreeSet<u32>) -> Result<Vec<MapMemory>> {
    let mut out = Vec::new();
    for fd in bpf_map_fds().difference(before) {
        let info = fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
        let field = |name: &str| -> u64 {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim_start_matches(':').trim().parse().ok())
                .unwrap_or(0)
        };
        let id = field("map_id") as u32;
        let name = aya::maps::MapInfo::from_id(id)
            .ok()
            .and_then(|i| i.name_as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("map {id}"));
        out.push(MapMemory {
            name,
            entries: field("max_entries"),
            memlock: field("memlock"),
        });
    }
    out.sort_by_key(|m| std::cmp::Reverse(m.memlock));
    Ok(out)
}
