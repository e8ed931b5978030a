//! The maps. Userspace (dsr-userspace's map writer) writes all of them except the counters,
//! and sizes them at load time; the sizes here are placeholders.

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC},
    macros::map,
    maps::{Array, DevMap, HashMap, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
};
use dsr_common::{
    Backend, Counter, EVENT_COUNT, FlowEntry, FlowMapKey, Iface, MAX_IFINDEX, MAX_TX_PORTS,
    REASON_COUNT, Settings, TRACE_RING_BYTES, TableChunk, TraceFilter, VIP_FILTER_WORDS,
    VipAddrInfo, VipAddrKey, VipInfo, VipKey,
};

/// Deployment-wide settings (layout version, hash seed, table row size); one entry.
#[map(name = "SETTINGS")]
pub static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

/// ifindex -> that interface's MAC, for every interface the program is attached to.
#[map(name = "IFACES")]
pub static IFACES: Array<Iface> = Array::with_max_entries(MAX_IFINDEX, 0);

/// (address, port, protocol) -> VIP id, active table row and size. Not preallocated, so an
/// update never recycles an element a running program may still be reading.
#[map(name = "VIPS")]
pub static VIPS: HashMap<VipKey, VipInfo> = HashMap::with_max_entries(1, BPF_F_NO_PREALLOC);

/// (address, protocol) -> which kinds of VIPS keys exist for it: one lookup settles
/// "not a VIP" for all other traffic.
#[map(name = "VIP_ADDRS")]
pub static VIP_ADDRS: HashMap<VipAddrKey, VipAddrInfo> =
    HashMap::with_max_entries(1, BPF_F_NO_PREALLOC);

/// Bitmap of VIP addresses (see dsr_common::VIP_FILTER_WORDS), written by userspace.
#[map(name = "VIP_FILTER")]
pub static VIP_FILTER: Array<u64> = Array::with_max_entries(VIP_FILTER_WORDS, 0);

/// Interfaces other than the receiving one that backends sit behind (index = a backend's
/// `tx_port`; 0 is unused). Frames for those backends leave with XDP_REDIRECT.
#[map(name = "TX_PORTS")]
pub static TX_PORTS: DevMap = DevMap::with_max_entries(MAX_TX_PORTS, 0);

/// The Maglev lookup tables of all VIPs: each VIP's table is a run of chunks from its
/// `table_base` (userspace allocates them). Mmapable so userspace writes a whole table at
/// memory speed.
#[map(name = "TABLES")]
pub static TABLES: Array<TableChunk> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// Backend id -> MAC to send to.
#[map(name = "BACKENDS")]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(1, 0);

/// Connection tracking: (VIP, VLAN, flow) -> backend it was given. One hash table shared by
/// all CPUs: on veth (and with RSS changes) one flow's packets arrive on different CPUs, and
/// a per-CPU table would then give them different answers once a backend drains. Its LRU is
/// the common one: with BPF_F_NO_COMMON_LRU the kernel splits the entries between all
/// *possible* CPUs, so one busy CPU could keep only a fraction of `flow_table_size` flows
/// (measured: 2048 of 4096 with 2 CPUs), and cloud VMs often have many more possible CPUs
/// than online ones; the per-CPU lists measured no faster here.
#[map(name = "FLOWS")]
pub static FLOWS: LruHashMap<FlowMapKey, FlowEntry> = LruHashMap::with_max_entries(1, 0);

/// Per VIP id: packets and bytes received for the VIP (forwarded or dropped).
#[map(name = "VIP_STATS")]
pub static VIP_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(1, 0);

/// Per backend id: packets and bytes forwarded to it.
#[map(name = "BACKEND_STATS")]
pub static BACKEND_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(1, 0);

/// Per [`dsr_common::Reason`]: packets and bytes that left the program for that reason.
#[map(name = "REASON_STATS")]
pub static REASON_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(REASON_COUNT, 0);

/// Per [`dsr_common::Event`]: things counted besides verdicts (failed flow inserts, ...).
#[map(name = "EVENT_STATS")]
pub static EVENT_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(EVENT_COUNT, 0);

/// `dsr trace` records ([`dsr_common::TraceRecord`]), written only while SETTINGS.trace is set.
#[map(name = "TRACE")]
pub static TRACE: RingBuf = RingBuf::with_byte_size(TRACE_RING_BYTES, 0);

/// Which frames are traced (one entry; flags 0: all).
#[map(name = "TRACE_FILTER")]
pub static TRACE_FILTER: Array<TraceFilter> = Array::with_max_entries(1, 0);

/// Entry 0: the `dsr_trace` program, which `dsr` tail-calls while tracing. Not pinned: each
/// daemon installs its own, and the entry goes with the daemon that traced.
#[map(name = "TRACE_PROG")]
pub static TRACE_PROG: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// What `dsr` learnt about the frame this CPU handles, for `dsr_trace`.
#[map(name = "TRACE_NOTES")]
pub static TRACE_NOTES: PerCpuArray<crate::trace::Notes> = PerCpuArray::with_max_entries(1, 0);
