//! The data path from userspace: loading, pinning and attaching the XDP program, and the map
//! primitives the writer (`writer`, the only code that decides what to write) is built from.
//!
//! Tables are written so that the data path never sees a half-written one: each VIP owns two
//! rows of TABLES; the new table goes into the row not in use (through an mmap of the map, at
//! memory speed), then a single VIPS update switches the VIP to it.

pub mod counters;
pub mod ethtool;
pub mod flowcount;
pub mod offload;
pub mod privileges;
mod programlog;
mod tables;
pub mod trace;
pub mod writer;

use counters::sum;
pub use counters::{Counters, PinnedCounters, Totals};
use tables::TableMmap;

use std::{
    net::IpAddr,
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, DevMap, HashMap, Map, MapData, PerCpuArray, PerCpuValues},
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
    },
};
use dsr_common::{
    ADDR_F_PORT0, ADDR_F_PORTS, ADDR_F_VLAN, Backend, Counter, EVENT_COUNT, Event, FlowEntry,
    FlowMapKey, Iface, LAYOUT_VERSION, MAX_IFINDEX, MAX_TX_PORTS, MAX_VMACS, PROGRAM_NAME,
    REASON_COUNT, Reason, Settings, TABLE_CHUNK, TRACE_PROGRAM_NAME, TRACE_RING_BYTES, TableChunk,
    VIP_F_FRAGMENT_ALIAS, VIP_FILTER_WORDS, VipAddrInfo, VipAddrKey, VipInfo, VipKey, names,
    vip_filter_bit,
};

use crate::{
    ebpf::DSR_OBJECT,
    plan::VipOptions,
    spec::model::{DatapathLog, MacAddr, Protocol, VipAddr, XdpAttachMode},
};

/// How big the maps are; fixed when the program is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizes {
    pub max_vips: u32,
    pub max_backends: u32,
    /// Slots all VIPs' tables share (`table_budget`), a multiple of TABLE_CHUNK.
    pub table_budget: u32,
    /// Flows the connection table (an LRU) holds.
    pub flow_table_size: u32,
}

impl Sizes {
    /// A `table_budget` for `tables` tables of `slots` slots each, with room for as many
    /// again (so that rewriting them never waits for freed runs to cool).
    pub fn budget_for(tables: u32, slots: u32) -> u32 {
        2 * tables * tables::chunks_of(slots) * TABLE_CHUNK
    }

    fn table_chunks(&self) -> u32 {
        tables::chunks_of(self.table_budget)
    }

    /// Bytes TABLES takes in the kernel.
    pub fn table_bytes(&self) -> u64 {
        self.table_chunks() as u64 * std::mem::size_of::<TableChunk>() as u64
    }

    /// Bytes FLOWS takes, roughly: key, value and the kernel's per-element overhead (an
    /// LRU hash element with its list node is about 64 bytes besides key and value;
    /// `cargo xtask bench` reports the memlock FLOWS takes for 1M flows).
    pub fn flow_bytes(&self) -> u64 {
        self.flow_table_size as u64
            * (64 + std::mem::size_of::<FlowMapKey>() + std::mem::size_of::<FlowEntry>()) as u64
    }
}

pub struct Datapath {
    ebpf: Ebpf,
    sizes: Sizes,
    pin_dir: Option<PathBuf>,
    /// The maps were already pinned: they hold the previous run's state.
    adopted: bool,
    vips: HashMap<MapData, VipKey, VipInfo>,
    backends: Array<MapData, Backend>,
    ifaces: Array<MapData, Iface>,
    tables: TableMmap,
    /// Which TABLES elements each VIP's table takes (kept equal to what VIPS points at).
    chunks: tables::Chunks,
    vip_stats: PerCpuArray<MapData, Counter>,
    backend_stats: PerCpuArray<MapData, Counter>,
    reason_stats: PerCpuArray<MapData, Counter>,
    vip_addrs: HashMap<MapData, VipAddrKey, VipAddrInfo>,
    vip_filter: Array<MapData, u64>,
    /// Mirror of VIP_FILTER, to write only the words that change.
    filter: Vec<u64>,
    tx_ports: DevMap<MapData>,
    tx_ports_fd: i32,
    hash_seed: u32,
    flows: HashMap<MapData, FlowMapKey, FlowEntry>,
    flows_fd: std::os::fd::OwnedFd,
    event_stats: PerCpuArray<MapData, u64>,
    links: Vec<XdpLinkId>,
    /// Handed to `dsr trace`'s server once (see [`Datapath::take_trace`]).
    trace: Option<(trace::TraceSwitch, trace::TraceRing)>,
    /// The data path's own log messages (aya-log), for the daemon to forward to its log.
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    /// Holds `dsr_trace` in the tail-call slot for as long as this process runs.
    _trace_prog: aya::maps::ProgramArray<MapData>,
}

/// Every map with the size it must have.
fn map_sizes(sizes: &Sizes) -> Result<[(&'static str, u32); 15]> {
    let table_elems = sizes.table_chunks();
    if table_elems == 0 {
        bail!("table_budget must hold at least one table");
    }
    Ok([
        (names::SETTINGS, 1),
        // Each VIP may also have a fragment alias.
        (names::VIPS, sizes.max_vips * 2),
        (names::VIP_ADDRS, sizes.max_vips),
        (names::TX_PORTS, MAX_TX_PORTS),
        (names::IFACES, MAX_IFINDEX),
        (names::VIP_FILTER, VIP_FILTER_WORDS),
        (names::VIP_STATS, sizes.max_vips),
        (names::TABLES, table_elems),
        (names::BACKENDS, sizes.max_backends),
        (names::BACKEND_STATS, sizes.max_backends),
        (names::FLOWS, sizes.flow_table_size),
        (names::REASON_STATS, REASON_COUNT),
        (names::EVENT_STATS, EVENT_COUNT),
        (names::TRACE, TRACE_RING_BYTES),
        (names::TRACE_FILTER, 1),
    ])
}

/// How many instructions the verifier processed for the loaded program (its limit is 1M):
/// the headroom left for data-path changes.
fn program_info_verified(ebpf: &Ebpf) -> Option<u32> {
    let program: &Xdp = ebpf.program(PROGRAM_NAME)?.try_into().ok()?;
    program.info().ok()?.verified_instruction_count()
}

/// A map the kernel would not create (ENOMEM: the memory, or the memory cgroup's limit; E2BIG)
/// said with its size and the setting that sizes it, since only a smaller setting (or more
/// memory) helps.
fn explain_map_error(e: anyhow::Error, sizes: &Sizes, map_sizes: &[(&str, u32)]) -> anyhow::Error {
    let Some(aya::EbpfError::MapError(aya::maps::MapError::CreateError { name, io_error })) =
        e.chain().find_map(|c| c.downcast_ref::<aya::EbpfError>())
    else {
        return e;
    };
    let entries = map_sizes
        .iter()
        .find(|(n, _)| n == name)
        .map_or(0, |(_, n)| *n);
    let (setting, bytes) = match name.as_str() {
        names::FLOWS => ("flow_table_size", Some(sizes.flow_bytes())),
        names::TABLES => ("table_budget", Some(sizes.table_bytes())),
        names::VIPS | names::VIP_ADDRS | names::VIP_STATS => ("max_vips", None),
        names::BACKENDS | names::BACKEND_STATS => ("max_backends", None),
        _ => return e,
    };
    let size = bytes.map_or(String::new(), |b| format!(", about {} MiB", b >> 20));
    anyhow!(
        "the kernel refused to create map {name} ({entries} entries{size}): {io_error}; lower \
         {setting} (or give dsr more memory: its memory cgroup's limit); nothing was pinned or \
         attached"
    )
}

/// Where an instance's maps and link are pinned: bpffs is one for all network namespaces, so
/// every instance has its own directory.
pub fn pin_dir(instance: &str) -> PathBuf {
    PathBuf::from(BPFFS).join("dsr").join(instance)
}

const BPFFS: &str = "/sys/fs/bpf";
const LINK_PIN: &str = "link";

/// Checks that the maps pinned in `dir` (if any) are the ones this binary would create: same
/// layout version and sizes. Returns whether there is a pinned data path to adopt.
pub fn check_pinned(dir: &Path, sizes: &Sizes) -> Result<bool> {
    if !dir.join(names::SETTINGS).exists() {
        return Ok(false);
    }
    let settings: Array<MapData, Settings> = Map::Array(
        MapData::from_pin(dir.join(names::SETTINGS)).with_context(|| {
            format!("opening pinned map {}", dir.join(names::SETTINGS).display())
        })?,
    )
    .try_into()
    .map_err(|e| {
        anyhow!(
            "pinned SETTINGS in {}: {e} (written by another version?)",
            dir.display()
        )
    })?;
    let version = settings.get(&0, 0)?.layout_version;
    let remedy = "`dsr stop` removes the pinned data path (traffic stops until dsr starts again)";
    // SETTINGS is written last when loading: a zero layout is a load that never finished
    // (killed while loading, or left by a dsr that did not clean up a failed one).
    if version == 0 {
        bail!(
            "the data path pinned in {} was never completed (a start killed while loading, \
             or a failed one of an older dsr) and carries no traffic: `dsr stop` removes it",
            dir.display()
        );
    }
    if version != LAYOUT_VERSION {
        bail!(
            "the data path pinned in {} has map layout {version}, this dsr uses {LAYOUT_VERSION}; {remedy}",
            dir.display()
        );
    }
    for (name, want) in map_sizes(sizes)? {
        let path = dir.join(name);
        let data = MapData::from_pin(&path)
            .with_context(|| format!("opening pinned map {}", path.display()))?;
        let have = data.info()?.max_entries();
        if have != want {
            bail!(
                "pinned map {} holds {have} entries but the config asks for {want} \
                 (max_vips / max_backends / table_budget / flow_table_size changed); {remedy}, \
                 or keep the old sizes",
                path.display()
            );
        }
    }
    Ok(true)
}

/// Removes an instance's pinned data path: the link is detached first (synchronously: a
/// link merely unpinned is released by the kernel a moment later), then every pin removed,
/// which frees the maps once no process holds them.
pub fn remove_pinned(dir: &Path) -> Result<bool> {
    if !dir.exists() {
        return Ok(false);
    }
    let had_pins = is_pinned(dir);
    let link = dir.join(LINK_PIN);
    if link.exists() {
        detach_link(&link)?;
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        std::fs::remove_file(&path).with_context(|| format!("unpinning {}", path.display()))?;
    }
    // An unprivileged daemon may own its pin directory but not the directory above it
    // (the service manager made it): then the empty directory stays, which is harmless.
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {}
        other => other.with_context(|| format!("removing {}", dir.display()))?,
    }
    Ok(had_pins)
}

/// Whether a data path is pinned in `dir` (not merely the directory made for it).
pub fn is_pinned(dir: &Path) -> bool {
    dir.join(names::SETTINGS).exists()
}

/// A pinned object opened read-only (BPF_OBJ_GET with BPF_F_RDONLY): aya 0.14's `from_pin`
/// always asks for read-write, which a reader without write permission on the pin is denied.
pub fn open_pin_readonly(pin: &Path) -> Result<std::os::fd::OwnedFd> {
    use std::os::{fd::FromRawFd, unix::ffi::OsStrExt};
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_F_RDONLY: u64 = 1 << 3;
    let path = std::ffi::CString::new(pin.as_os_str().as_bytes())?;
    // union bpf_attr, obj variant: { __u64 pathname; __u32 bpf_fd; __u32 file_flags; ... }
    let mut attr = [0u64; 8];
    attr[0] = path.as_ptr() as u64;
    attr[1] = BPF_F_RDONLY << 32;
    // SAFETY: the bpf syscall with a valid, zero-padded attr of the size we pass.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, attr.as_mut_ptr(), 64usize) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: a new descriptor the kernel just gave us.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// Lets the operators' group read the pins: the directory 0750 and every pin 0640, owned by
/// the group.
pub fn share_pins(dir: &Path, gid: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::os::unix::fs::chown(dir, None, Some(gid))
        .with_context(|| format!("giving {} to group {gid}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))?;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        std::os::unix::fs::chown(&path, None, Some(gid))
            .with_context(|| format!("giving {} to group {gid}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640))?;
    }
    Ok(())
}

/// BPF_LINK_DETACH on a pinned link: the program leaves the interface now. aya 0.14 has no
/// wrapper (its FdLink "detach" only closes the fd) and does not expose a link's fd, so this
/// is two raw bpf(2) calls: BPF_OBJ_GET on the pin, then BPF_LINK_DETACH.
fn detach_link(pin: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_DETACH: libc::c_long = 34;
    let path = std::ffi::CString::new(pin.as_os_str().as_bytes())?;
    // union bpf_attr, obj variant: { __u64 pathname; __u32 bpf_fd; __u32 file_flags; ... }
    let mut attr = [0u64; 8];
    attr[0] = path.as_ptr() as u64;
    // SAFETY: the bpf syscall with a valid, zero-padded attr of the size we pass.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, attr.as_mut_ptr(), 64usize) };
    if fd < 0 {
        bail!(
            "opening pinned link {}: {}",
            pin.display(),
            std::io::Error::last_os_error()
        );
    }
    // link_detach variant: { __u32 link_fd; }
    let mut attr = [0u64; 8];
    attr[0] = fd as u64;
    // SAFETY: as above; then closing the fd we got.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_LINK_DETACH, attr.as_mut_ptr(), 64usize) };
    let err = std::io::Error::last_os_error();
    unsafe { libc::close(fd as i32) };
    if rc != 0 {
        bail!("detaching the link {}: {err}", pin.display());
    }
    Ok(())
}

/// Mounts bpffs at /sys/fs/bpf if nothing is mounted there (a fresh machine has none).
pub fn ensure_bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(BPFFS) && l.contains(" bpf "))
    {
        return Ok(());
    }
    if !privileges::may_mount() {
        bail!(
            "bpffs is not mounted at {BPFFS}, and mounting it needs CAP_SYS_ADMIN, which this \
             process lacks: run `mount -t bpf bpf {BPFFS}` as root first (the unit does, in \
             ExecStartPre=+); nothing was changed"
        );
    }
    let status = std::process::Command::new("mount")
        .args(["-t", "bpf", "bpf", BPFFS])
        .status()
        .context("running mount -t bpf")?;
    if !status.success() {
        bail!("bpffs is not mounted at {BPFFS} and mounting it failed");
    }
    log::info!("mounted bpffs at {BPFFS}");
    Ok(())
}

/// How to load the data path.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub sizes: Sizes,
    pub hash_seed: u32,
    pub flow_idle: Duration,
    /// Pin maps and link here and adopt what is already pinned; `None` = nothing outlives
    /// this process (tests).
    pub pin_dir: Option<PathBuf>,
    /// Which of the program's own diagnostic messages are compiled in (by the verifier:
    /// the level is a constant of the loaded program).
    pub datapath_log: DatapathLog,
}

impl Datapath {
    /// Loads the program (adopting the maps pinned in `pin_dir`, if any) and writes SETTINGS.
    /// Nothing is attached yet: fill the maps first, then [`Datapath::attach`]. A new data
    /// path that fails to load leaves nothing pinned: the maps pinned before the failing one
    /// would otherwise be taken, at the next start, for a data path to adopt.
    pub fn load(opts: &LoadOptions) -> Result<Self> {
        if DSR_OBJECT.is_empty() {
            bail!("this dsr binary was built with DSR_EBPF_SKIP and carries no XDP program");
        }
        let map_sizes = map_sizes(&opts.sizes)?;
        let adopted = match &opts.pin_dir {
            Some(dir) => {
                ensure_bpffs()?;
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating pin directory {}", dir.display()))?;
                check_pinned(dir, &opts.sizes)?
            }
            None => false,
        };
        let loaded = Self::load_pinned_at(opts, &map_sizes, adopted);
        if loaded.is_err()
            && !adopted
            && let Some(dir) = &opts.pin_dir
            && let Err(e) = remove_pinned(dir)
        {
            log::error!("removing the half-created data path: {e:#}");
        }
        loaded.map_err(|e| explain_map_error(e, &opts.sizes, &map_sizes))
    }

    fn load_pinned_at(
        opts: &LoadOptions,
        map_sizes: &[(&'static str, u32)],
        adopted: bool,
    ) -> Result<Self> {
        let sizes = opts.sizes;
        let table_elems = map_sizes
            .iter()
            .find(|(n, _)| *n == names::TABLES)
            .expect("TABLES is sized")
            .1;
        let mut loader = EbpfLoader::new();
        let log_level = opts.datapath_log.level();
        loader.override_global(aya_log::LEVEL, &log_level, true);
        for &(name, size) in map_sizes {
            loader.map_max_entries(name, size);
            if let Some(dir) = &opts.pin_dir {
                loader.map_pin_path(name, dir.join(name));
            }
        }
        let mut ebpf = loader
            .load(DSR_OBJECT)
            .context("loading the dsr eBPF object (maps)")?;
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or_else(|| anyhow!("program {PROGRAM_NAME} missing from the object"))?
            .try_into()?;
        program
            .load()
            .context("loading the XDP program (verifier)")?;
        let tracer: &mut Xdp = ebpf
            .program_mut(TRACE_PROGRAM_NAME)
            .ok_or_else(|| anyhow!("program {TRACE_PROGRAM_NAME} missing from the object"))?
            .try_into()?;
        tracer
            .load()
            .context("loading the trace program (verifier)")?;
        let trace_fd = tracer.fd()?.try_clone()?;
        // aya-log reads its ring through the object: taken now, polled by the daemon.
        let logger = match opts.datapath_log {
            DatapathLog::Off => None,
            _ => Some(
                aya_log::EbpfLogger::init_with_logger(
                    &mut ebpf,
                    &programlog::THROTTLED as &'static dyn log::Log,
                )
                .context("reading the data path's log")?,
            ),
        };
        let mut trace_prog: aya::maps::ProgramArray<MapData> = ebpf
            .take_map(names::TRACE_PROG)
            .ok_or_else(|| anyhow!("map {} missing from the object", names::TRACE_PROG))?
            .try_into()?;
        trace_prog
            .set(0, &trace_fd, 0)
            .context("installing the trace program")?;

        let mut take = |name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| anyhow!("map {name} missing from the object"))
        };
        let settings_map = take(names::SETTINGS)?;
        // A second handle on SETTINGS for the trace switch (the fd duplicated).
        let Map::Array(settings_data) = &settings_map else {
            bail!("map {} is not an array", names::SETTINGS);
        };
        let settings_dup = MapData::from_fd(settings_data.fd().as_fd().try_clone_to_owned()?)?;
        let mut settings: Array<MapData, Settings> = settings_map.try_into()?;
        let trace_switch = trace::TraceSwitch {
            settings: Map::Array(settings_dup).try_into()?,
            filter: take(names::TRACE_FILTER)?.try_into()?,
        };
        let mut trace_ring = trace::TraceRing {
            ring: take(names::TRACE)?.try_into()?,
        };
        let vips: HashMap<MapData, VipKey, VipInfo> = take(names::VIPS)?.try_into()?;
        let backends = take(names::BACKENDS)?.try_into()?;
        let ifaces = take(names::IFACES)?.try_into()?;
        let aya::maps::Map::Array(tables) = take(names::TABLES)? else {
            bail!("map {} is not an array", names::TABLES);
        };
        let vip_stats = take(names::VIP_STATS)?.try_into()?;
        let backend_stats = take(names::BACKEND_STATS)?.try_into()?;
        let reason_stats = take(names::REASON_STATS)?.try_into()?;
        let event_stats = take(names::EVENT_STATS)?.try_into()?;
        let flows_map = take(names::FLOWS)?;
        let Map::LruHashMap(flows_data) = &flows_map else {
            bail!("map {} is not an LRU hash", names::FLOWS);
        };
        // For walkers on other threads (see flowcount).
        let flows_fd = flows_data.fd().as_fd().try_clone_to_owned()?;
        let flows = flows_map.try_into()?;
        let vip_addrs = take(names::VIP_ADDRS)?.try_into()?;
        let vip_filter: Array<MapData, u64> = take(names::VIP_FILTER)?.try_into()?;
        // What the map holds now (non-zero when a pinned data path was adopted).
        let filter = vip_filter.iter().collect::<Result<Vec<u64>, _>>()?;
        let tx_ports_map = take(names::TX_PORTS)?;
        let Map::DevMap(data) = &tx_ports_map else {
            bail!("map {} is not a devmap", names::TX_PORTS);
        };
        // Kept for BPF_MAP_DELETE_ELEM (see clear_tx_port); valid as long as `tx_ports` is.
        let tx_ports_fd = data.fd().as_fd().as_raw_fd();
        let tx_ports = tx_ports_map.try_into()?;
        let tables = TableMmap::new(tables, table_elems)?;
        // An adopted data path's VIPs keep their tables where they are.
        let live: Vec<(u32, u32)> = vips
            .iter()
            .map(|e| e.map(|(_, info)| (info.table_base, info.table_size)))
            .collect::<Result<_, _>>()?;
        let chunks = tables::Chunks::new(table_elems, live)
            .context("reading where the pinned VIPS entries' tables lie")?;

        settings.set(
            0,
            Settings {
                layout_version: LAYOUT_VERSION,
                hash_seed: opts.hash_seed,
                _pad: 0,
                // A trace session does not outlive the daemon that served it.
                trace: 0,
                flow_idle_ns: opts.flow_idle.as_nanos().min(u64::MAX as u128) as u64,
            },
            0,
        )?;
        let stale = trace_ring.discard();
        if stale > 0 {
            log::info!("dropped {stale} trace records a previous daemon left unread");
        }
        if let Some(n) = program_info_verified(&ebpf) {
            log::info!(
                "the verifier processed {n} instructions of dsr's XDP program (limit 1000000)"
            );
        }
        Ok(Datapath {
            ebpf,
            sizes,
            pin_dir: opts.pin_dir.clone(),
            adopted,
            vips,
            backends,
            ifaces,
            tables,
            chunks,
            vip_stats,
            backend_stats,
            reason_stats,
            event_stats,
            flows,
            vip_addrs,
            vip_filter,
            filter,
            tx_ports,
            tx_ports_fd,
            hash_seed: opts.hash_seed,
            links: Vec::new(),
            trace: Some((trace_switch, trace_ring)),
            _trace_prog: trace_prog,
            logger,
            flows_fd,
        })
    }

    /// Instructions the verifier processed for the forwarding program (its limit is 1M).
    pub fn verified_instructions(&self) -> Option<u32> {
        program_info_verified(&self.ebpf)
    }

    /// The reader of the program's log messages, if `datapath_log` is on (`None` once taken).
    pub fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        self.logger.take()
    }

    /// The trace switch and ring, for the one trace server (`None` once taken).
    pub fn take_trace(&mut self) -> Option<(trace::TraceSwitch, trace::TraceRing)> {
        self.trace.take()
    }

    /// Whether `load` found and adopted a pinned data path.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// The loaded program (for BPF_PROG_TEST_RUN).
    pub fn program(&self) -> &Xdp {
        self.ebpf
            .program(PROGRAM_NAME)
            .and_then(|p| p.try_into().ok())
            .expect("program checked at load")
    }

    fn program_mut(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(PROGRAM_NAME)
            .and_then(|p| p.try_into().ok())
            .expect("program checked at load")
    }

    /// Attaches to `ifindex` (whose MAC must already be in IFACES via [`Datapath::set_iface`]).
    /// With a pin directory: if a link is pinned there, the new program replaces the old one
    /// in it atomically (no packet sees no program); otherwise the new link is pinned, so the
    /// data path outlives this process.
    pub fn attach(&mut self, ifindex: u32, ifname: &str, mode: XdpAttachMode) -> Result<()> {
        if let Some(link_path) = self.pin_dir.as_ref().map(|d| d.join(LINK_PIN)) {
            if link_path.exists() {
                let pinned = PinnedLink::from_pin(&link_path)
                    .with_context(|| format!("opening pinned link {}", link_path.display()))?;
                let link = XdpLink::try_from(FdLink::from(pinned))
                    .context("the pinned link is not an XDP link")?;
                match self.program_mut().attach_to_link(link) {
                    Ok(id) => {
                        // Closing our fd on drop leaves the pinned link in place.
                        self.links.push(id);
                        return Ok(());
                    }
                    // The interface the link was made for went away (the link is defunct):
                    // a new link on the interface as it is now.
                    Err(e) => {
                        log::warn!(
                            "the pinned XDP link cannot take the program ({e}): attaching anew to {ifname}"
                        );
                        std::fs::remove_file(&link_path).with_context(|| {
                            format!("unpinning the defunct link {}", link_path.display())
                        })?;
                    }
                }
            }
            self.attach_new(ifindex, ifname, mode)?;
            let id = self.links.pop().expect("just attached");
            let link = self.program_mut().take_link(id)?;
            let fd_link = FdLink::try_from(link).context(
                "the kernel attached XDP without a bpf_link (netlink fallback); it cannot be pinned",
            )?;
            fd_link
                .pin(&link_path)
                .with_context(|| format!("pinning the XDP link at {}", link_path.display()))?;
            return Ok(());
        }
        self.attach_new(ifindex, ifname, mode)
    }

    /// Attaches to an interface that was deleted and created again (a new index): the old
    /// link went with the old interface.
    pub fn reattach(&mut self, ifindex: u32, ifname: &str, mode: XdpAttachMode) -> Result<()> {
        self.unpin_link()?;
        self.attach(ifindex, ifname, mode)
    }

    /// Unpins the link (if pinned) so the program detaches when this process lets go of it.
    pub fn unpin_link(&self) -> Result<()> {
        if let Some(path) = self.pin_dir.as_ref().map(|d| d.join(LINK_PIN))
            && path.exists()
        {
            std::fs::remove_file(&path).with_context(|| format!("unpinning {}", path.display()))?;
        }
        Ok(())
    }

    fn attach_new(&mut self, ifindex: u32, ifname: &str, mode: XdpAttachMode) -> Result<()> {
        let xdp_mode = match mode {
            XdpAttachMode::Native => XdpMode::Driver,
            XdpAttachMode::Skb => XdpMode::Skb,
        };
        let link = self
            .program_mut()
            .attach_to_if_index(ifindex, xdp_mode)
            .with_context(|| match mode {
                XdpAttachMode::Native => format!(
                    "attaching XDP to {ifname} in native mode (if its driver has no native XDP, \
                     set xdp_mode = \"skb\" in the config)"
                ),
                XdpAttachMode::Skb => format!("attaching XDP to {ifname} in skb mode"),
            })?;
        self.links.push(link);
        Ok(())
    }

    /// Tells the program the MAC of an interface it receives on.
    pub fn set_iface(&mut self, ifindex: u32, mac: MacAddr) -> Result<()> {
        if ifindex >= MAX_IFINDEX {
            bail!(
                "interface index {ifindex} is too large for dsr's IFACES map (at most {}): \
                 the program can only be attached to interfaces with a smaller index",
                MAX_IFINDEX - 1
            );
        }
        // The virtual MACs it holds stay (a re-attach or restart does not drop them).
        let old = self.ifaces.get(&ifindex, 0).unwrap_or_default();
        self.ifaces.set(
            ifindex,
            Iface {
                mac: mac.0,
                _pad: [0; 2],
                vmacs: old.vmacs,
                vmac_master: old.vmac_master,
            },
            0,
        )?;
        Ok(())
    }

    /// The VRRP virtual MACs of `ifindex`, each with whether it is received for (master),
    /// as the kernel's map has them.
    pub fn vmacs(&self, ifindex: u32) -> Result<Vec<(MacAddr, bool)>> {
        let iface = self.ifaces.get(&ifindex, 0)?;
        Ok(iface
            .vmacs
            .iter()
            .zip(iface.vmac_master)
            .filter(|(m, _)| **m != [0; 6])
            .map(|(m, master)| (MacAddr(*m), master == 1))
            .collect())
    }

    /// Sets the virtual MACs of `ifindex` (at most MAX_VMACS; its own MAC stays): frames to
    /// one are received while it is marked master, dropped otherwise.
    pub fn set_vmacs(&mut self, ifindex: u32, vmacs: &[(MacAddr, bool)]) -> Result<()> {
        if vmacs.len() > MAX_VMACS {
            bail!(
                "at most {MAX_VMACS} virtual MACs per interface, not {}",
                vmacs.len()
            );
        }
        let mut iface = self.ifaces.get(&ifindex, 0)?;
        iface.vmacs = [[0; 6]; MAX_VMACS];
        iface.vmac_master = [0; MAX_VMACS];
        for (i, (m, master)) in vmacs.iter().enumerate() {
            iface.vmacs[i] = m.0;
            iface.vmac_master[i] = *master as u8;
        }
        self.ifaces.set(ifindex, iface, 0)?;
        Ok(())
    }

    /// Zeroes a VIP id's counters (a reused id must not inherit its predecessor's).
    pub fn reset_vip_stats(&mut self, id: u32) -> Result<()> {
        let zeros = PerCpuValues::try_from(vec![Counter::default(); nr_cpus()?])?;
        self.vip_stats.set(id, zeros, 0)?;
        Ok(())
    }

    /// Zeroes a backend id's counters.
    pub fn reset_backend_stats(&mut self, id: u32) -> Result<()> {
        let zeros = PerCpuValues::try_from(vec![Counter::default(); nr_cpus()?])?;
        self.backend_stats.set(id, zeros, 0)?;
        Ok(())
    }

    /// Writes BACKENDS entry `id` (all zero: no backend).
    pub fn set_backend(&mut self, id: u32, entry: Backend) -> Result<()> {
        self.backends
            .set(id, entry, 0)
            .with_context(|| format!("writing backend {id}"))?;
        Ok(())
    }

    /// Points TX_PORTS entry `port` (1..MAX_TX_PORTS) at interface `ifindex`.
    pub fn set_tx_port(&mut self, port: u32, ifindex: u32) -> Result<()> {
        if port == 0 || port >= MAX_TX_PORTS {
            bail!("TX port {port} is not 1..{MAX_TX_PORTS}");
        }
        self.tx_ports
            .set(port, ifindex, None, 0)
            .with_context(|| format!("writing TX port {port} (ifindex {ifindex})"))?;
        Ok(())
    }

    /// Empties TX_PORTS entry `port`.
    pub fn clear_tx_port(&mut self, port: u32) -> Result<()> {
        // aya 0.14's DevMap has no remove: BPF_MAP_DELETE_ELEM on its fd. An empty slot
        // answers ENOENT, which is what we want anyway.
        const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
        let fd = self.tx_ports_fd;
        let key = port;
        // union bpf_attr, map-element variant: { __u32 map_fd; __u64 key; ... }
        let mut attr = [0u64; 8];
        attr[0] = fd as u64;
        attr[1] = &key as *const u32 as u64;
        // SAFETY: the bpf syscall with a valid, zero-padded attr of the size we pass; `key`
        // outlives the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_DELETE_ELEM,
                attr.as_mut_ptr(),
                64usize,
            )
        };
        let err = std::io::Error::last_os_error();
        if rc != 0 && err.raw_os_error() != Some(libc::ENOENT) {
            bail!("clearing TX port {port}: {err}");
        }
        Ok(())
    }

    /// Installs `table` (backend ids; empty = no usable backend, packets dropped) for a VIP,
    /// switching atomically from the table it had: the table is written into free TABLES
    /// elements, then one VIPS update points the VIP at it, and the old elements are given
    /// up. A VIP with a port that accepts fragments also gets a port-0 alias, which catches
    /// its non-first fragments. Fails, changing nothing, when `table_budget` has no free run
    /// for the table.
    pub fn set_vip(
        &mut self,
        addr: &VipAddr,
        id: u32,
        table: &[u32],
        opts: VipOptions,
    ) -> Result<()> {
        if id >= self.sizes.max_vips {
            bail!("VIP id {id} is beyond max_vips {}", self.sizes.max_vips);
        }
        let slots = u32::try_from(table.len()).context("table too large")?;
        let len = tables::chunks_of(slots);
        let base = if len == 0 {
            0
        } else {
            // Each step moves a table strictly lower or waits for a cooling run: bounded, but
            // bounded again so that no bookkeeping slip can spin here.
            let mut steps = 0;
            let base = loop {
                steps += 1;
                if steps > 4 * self.sizes.max_vips + 64 {
                    bail!("no room in TABLES for VIP {addr}'s table after {steps} steps");
                }
                match self.chunks.make_room(len) {
                    tables::Room::At(base) => break base,
                    tables::Room::Move { from, len, to } => self.move_table(from, len, to)?,
                    tables::Room::Wait => self.chunks.wait(),
                    tables::Room::Full => {
                        let (used, total) = self.chunks.usage();
                        bail!(
                            "no room in TABLES for VIP {addr}'s table of {slots} slots ({len} \
                             elements): {used} of {total} in use, the largest free run {}; \
                             raise table_budget (fixed when the data path is created) or give \
                             VIPs smaller table_size",
                            self.chunks.largest_free()
                        );
                    }
                }
            };
            self.tables
                .run_mut(base, slots)
                .expect("allocated within TABLES")
                .copy_from_slice(table);
            base
        };
        let flags = writer::vip_flags(opts);
        let info = VipInfo {
            id,
            table_base: base,
            table_size: slots,
            flags,
            hash_fields: opts.hash_fields,
        };
        let written = self
            .put_vip(vip_key(addr), info)
            .with_context(|| format!("writing VIP {addr}"));
        if written.is_err() && len > 0 {
            self.chunks.abandon(base);
        }
        written?;
        let alias = fragment_alias(addr);
        if opts.fragments && addr.port != 0 {
            let alias_info = VipInfo {
                flags: flags | VIP_F_FRAGMENT_ALIAS,
                ..info
            };
            self.put_vip(alias, alias_info)
                .with_context(|| format!("writing the fragment entry of VIP {addr}"))?;
        } else if addr.port != 0 && self.vips.get(&alias, 0).is_ok_and(|i| i.id == id) {
            // It stopped accepting fragments.
            self.delete_vip_key(&alias)?;
        }
        Ok(())
    }

    /// Moves the table at TABLES element `from` (`len` elements) to the free run at `to`: the
    /// copy is written first, then each VIPS entry pointing at it switches (as a new table
    /// would), so no packet sees a half-copied table.
    fn move_table(&mut self, from: u32, len: u32, to: u32) -> Result<()> {
        let slots = len * TABLE_CHUNK;
        let copy = self
            .tables
            .run(from, slots)
            .expect("a table within TABLES")
            .to_vec();
        self.tables
            .run_mut(to, slots)
            .expect("allocated within TABLES")
            .copy_from_slice(&copy);
        let pointing: Vec<(VipKey, VipInfo)> = match self.held_vips() {
            Ok(all) => all
                .into_iter()
                .filter(|(_, i)| i.table_size > 0 && i.table_base == from)
                .collect(),
            Err(e) => {
                self.chunks.abandon(to);
                return Err(e).context("moving a table to make room in TABLES");
            }
        };
        if pointing.is_empty() {
            // Nothing points at `from` any more (the kernel's VIPS is the truth): it is free.
            self.chunks.abandon(to);
            self.chunks.forget(from);
            return Ok(());
        }
        for (key, info) in pointing {
            if let Err(e) = self.put_vip(
                key,
                VipInfo {
                    table_base: to,
                    ..info
                },
            ) {
                self.chunks.abandon(to);
                return Err(e).context("moving a table to make room in TABLES");
            }
        }
        // No entry pointed at it (cannot happen: the run was found through them).
        self.chunks.abandon(to);
        Ok(())
    }

    /// Writes a VIPS entry, keeping `chunks` equal to what the entries point at.
    fn put_vip(&mut self, key: VipKey, info: VipInfo) -> Result<()> {
        let old = self.vips.get(&key, 0).ok();
        self.vips.insert(key, info, 0)?;
        if info.table_size > 0 {
            self.chunks.hold(info.table_base);
        }
        if let Some(o) = old.filter(|o| o.table_size > 0) {
            self.chunks.release(o.table_base);
        }
        Ok(())
    }

    pub fn remove_vip(&mut self, addr: &VipAddr) -> Result<()> {
        let key = vip_key(addr);
        let id = self.vips.get(&key, 0).map(|i| i.id).ok();
        self.delete_vip_key(&key)?;
        let alias = fragment_alias(addr);
        if addr.port != 0 && id.is_some() && self.vips.get(&alias, 0).ok().map(|i| i.id) == id {
            self.delete_vip_key(&alias)?;
        }
        Ok(())
    }

    /// How much of TABLES the VIPs' tables take.
    pub fn table_usage(&self) -> crate::control::status::TablesStatus {
        let (used, total) = self.chunks.usage();
        let slots = |chunks: u32| chunks as u64 * TABLE_CHUNK as u64;
        crate::control::status::TablesStatus {
            used_slots: slots(used),
            budget_slots: slots(total),
            largest_free_slots: slots(self.chunks.largest_free()),
        }
    }

    /// Makes VIP_FILTER mark exactly these VIP addresses.
    pub fn set_vip_filter(&mut self, addrs: impl IntoIterator<Item = IpAddr>) -> Result<()> {
        let mut want = vec![0u64; VIP_FILTER_WORDS as usize];
        for a in addrs {
            let bit = vip_filter_bit(&dsr_common::addr_words(a));
            want[(bit / 64) as usize] |= 1 << (bit % 64);
        }
        for (i, (&w, old)) in want.iter().zip(self.filter.iter_mut()).enumerate() {
            if w != *old {
                self.vip_filter
                    .set(i as u32, w, 0)
                    .context("writing VIP_FILTER")?;
                *old = w;
            }
        }
        Ok(())
    }

    /// Sets the `ADDR_F_*` flags of a VIP address (0 = remove the entry).
    pub fn set_vip_addr(&mut self, key: VipAddrKey, flags: u32) -> Result<()> {
        if flags == 0 {
            self.vip_addrs.remove(&key)?;
        } else {
            self.vip_addrs.insert(key, VipAddrInfo { flags }, 0)?;
        }
        Ok(())
    }

    /// The active table of a VIP, as the data path reads it.
    pub fn table(&self, addr: &VipAddr) -> Result<Vec<u32>> {
        self.table_of(&vip_key(addr))
            .map(<[u32]>::to_vec)
            .with_context(|| format!("VIP {addr}'s table"))
    }

    /// The table the VIPS entry of `key` points at, as the kernel holds it.
    pub fn table_of(&self, key: &VipKey) -> Result<&[u32]> {
        let info = self.vips.get(key, 0)?;
        self.tables
            .run(info.table_base, info.table_size)
            .ok_or_else(|| anyhow!("the table lies beyond TABLES"))
    }

    /// Slot `slot` of the table `info` points at, as the data path reads it.
    pub fn table_slot(&self, info: &VipInfo, slot: u32) -> Option<u32> {
        self.tables
            .run(info.table_base, info.table_size)?
            .get(slot as usize)
            .copied()
    }

    /// BACKENDS entry `id` as the kernel holds it.
    pub fn backend_entry(&self, id: u32) -> Option<Backend> {
        self.backends.get(&id, 0).ok()
    }

    pub fn hash_seed(&self) -> u32 {
        self.hash_seed
    }

    /// The connection-table entry of a flow, if any.
    pub fn flow(&self, key: &FlowMapKey) -> Option<FlowEntry> {
        self.flows.get(key, 0).ok()
    }

    /// The VIPS entry of `key`, if the kernel holds one.
    pub fn vip_info(&self, key: &VipKey) -> Option<VipInfo> {
        self.vips.get(key, 0).ok()
    }

    /// Removes the VIPS entry of `key` (one already gone is fine); its table's elements are
    /// given up once no entry points at them.
    pub fn delete_vip_key(&mut self, key: &VipKey) -> Result<()> {
        let old = self.vips.get(key, 0).ok();
        match self.vips.remove(key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(e).context("removing a VIPS entry"),
        }
        if let Some(o) = old.filter(|o| o.table_size > 0) {
            self.chunks.release(o.table_base);
        }
        Ok(())
    }

    /// Flow-table entries, at most `max` (in the kernel's hash order).
    /// A walker of the flow table that can run on another thread; entries idle longer than
    /// `idle` count as expired.
    pub fn flow_counter(&self, idle: Duration) -> Result<flowcount::FlowCounter> {
        Ok(flowcount::FlowCounter {
            fd: self.flows_fd.try_clone()?,
            idle_ns: idle.as_nanos().min(u64::MAX as u128) as u64,
        })
    }

    /// A writer of flow entries learnt from peers, usable on another thread; entries idle
    /// longer than `idle` may be replaced.
    pub fn flow_adopter(&self, idle: Duration) -> Result<flowcount::FlowAdopter> {
        Ok(flowcount::FlowAdopter {
            flows: Map::LruHashMap(MapData::from_fd(self.flows_fd.try_clone()?)?).try_into()?,
            idle_ns: idle.as_nanos().min(u64::MAX as u128) as u64,
        })
    }

    /// Up to `max` entries of the flow table, as the kernel holds them (`dsr flows`).
    pub fn flow_entries(&self, max: usize) -> Vec<(FlowMapKey, FlowEntry)> {
        self.flows
            .keys()
            .take(max)
            .filter_map(|k| k.ok())
            .filter_map(|k| self.flows.get(&k, 0).ok().map(|e| (k, e)))
            .collect()
    }

    /// Every VIPS entry the kernel holds (fragment aliases included).
    pub fn held_vips(&self) -> Result<Vec<(VipKey, VipInfo)>> {
        let keys: Vec<VipKey> = self.vips.keys().collect::<Result<_, _>>()?;
        Ok(keys
            .into_iter()
            .filter_map(|k| self.vips.get(&k, 0).ok().map(|v| (k, v)))
            .collect())
    }

    /// Every VIP_ADDRS entry the kernel holds.
    pub fn held_vip_addrs(&self) -> Result<Vec<(VipAddrKey, u32)>> {
        let keys: Vec<VipAddrKey> = self.vip_addrs.keys().collect::<Result<_, _>>()?;
        Ok(keys
            .into_iter()
            .filter_map(|k| self.vip_addrs.get(&k, 0).ok().map(|v| (k, v.flags)))
            .collect())
    }

    /// Every BACKENDS entry that is not all zero.
    pub fn held_backends(&self) -> Result<Vec<(u32, Backend)>> {
        let mut out = Vec::new();
        for id in 0..self.sizes.max_backends {
            let b = self.backends.get(&id, 0)?;
            if b != Backend::default() {
                out.push((id, b));
            }
        }
        Ok(out)
    }

    /// Every TX_PORTS entry in use: (port, ifindex).
    pub fn held_tx_ports(&self) -> Vec<(u32, u32)> {
        (1..MAX_TX_PORTS)
            .filter_map(|p| self.tx_ports.get(p, 0).ok().map(|v| (p, v.if_index)))
            .collect()
    }

    pub fn sizes(&self) -> Sizes {
        self.sizes
    }

    pub fn event_totals(&self) -> Result<[(Event, u64); EVENT_COUNT as usize]> {
        let mut out = Event::ALL.map(|e| (e, 0));
        for (event, total) in out.iter_mut() {
            *total = self.event_stats.get(&(*event as u32), 0)?.iter().sum();
        }
        Ok(out)
    }

    pub fn reason_totals(&self) -> Result<[(Reason, Totals); REASON_COUNT as usize]> {
        let mut out = Reason::ALL.map(|r| (r, Totals::default()));
        for (reason, totals) in out.iter_mut() {
            *totals = sum(&self.reason_stats, *reason as u32)?;
        }
        Ok(out)
    }

    pub fn vip_totals(&self, id: u32) -> Result<Totals> {
        sum(&self.vip_stats, id)
    }

    pub fn backend_totals(&self, id: u32) -> Result<Totals> {
        sum(&self.backend_stats, id)
    }
}

fn nr_cpus() -> Result<usize> {
    aya::util::nr_cpus().map_err(|(_, e)| anyhow!("counting possible CPUs: {e}"))
}

/// The VIPS key of a VIP.
pub fn vip_key(addr: &VipAddr) -> VipKey {
    VipKey::new(addr.address, addr.port, addr.protocol.number(), addr.vlan)
}

/// The port-0 VIPS key that catches a VIP's non-first fragments.
pub(crate) fn fragment_alias(addr: &VipAddr) -> VipKey {
    VipKey::new(addr.address, 0, addr.protocol.number(), addr.vlan)
}

/// The VIP_ADDRS flags a set of VIPs needs: per (address, protocol), which kinds of VIPS
/// keys exist.
pub fn vip_addr_flags<'a>(
    vips: impl IntoIterator<Item = (&'a VipAddr, bool)>,
) -> std::collections::BTreeMap<VipAddrKeyOrd, u32> {
    let mut out = std::collections::BTreeMap::new();
    for (addr, fragments) in vips {
        let flags = out
            .entry(VipAddrKeyOrd(addr.address, addr.protocol))
            .or_insert(0);
        if addr.port == 0 || fragments {
            *flags |= ADDR_F_PORT0;
        }
        if addr.port != 0 {
            *flags |= ADDR_F_PORTS;
        }
        if addr.vlan != 0 {
            *flags |= ADDR_F_VLAN;
        }
    }
    out
}

/// A VIP_ADDRS key in a form that sorts (for diffing what is written).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VipAddrKeyOrd(pub IpAddr, pub Protocol);

impl VipAddrKeyOrd {
    pub fn key(&self) -> VipAddrKey {
        VipAddrKey::new(self.0, self.1.number())
    }
}
