//! Map names, limits and the layout of every key and value the XDP program and userspace share.
//!
//! Rules for everything here: `#[repr(C)]`, `Copy`, explicit `_pad` fields (uninitialised
//! padding breaks key equality and the verifier), integers instead of `bool`/enums.
//! Change a layout => bump [`LAYOUT_VERSION`]: userspace refuses to adopt maps of another version.

/// Version of the map layout below. Stored in [`Settings::layout_version`].
pub const LAYOUT_VERSION: u32 = 10;

/// The Maglev paper's M = 65537 (a prime, so every backend's skip walks the whole table):
/// what tests and benchmarks use as a fixed table size. A VIP's own size is chosen per VIP
/// (dsr-userspace's `plan::sizing`).
pub const DEFAULT_TABLE_SIZE: u32 = 65537;
/// Table slots per configured backend of a VIP when its `table_size` is not given: a VIP's
/// default size is the smallest prime >= this x its backends (backups and sorry included).
/// Chosen by the distribution bench: removing one of 100 backends then moves <= 1.1x the
/// ideal 1/N of new flows with equal weights and with weights 1..=4 (the lightest backend
/// removed), where 65537 slots move 1.55x and 2.0x.
pub const TABLE_SLOTS_PER_BACKEND: u32 = 32_500;
/// Largest table a VIP may have unless the config says otherwise (`max_table_slots`;
/// 16 MiB): its build for 1000 backends stays near 0.2 s, well under a health-check interval.
pub const DEFAULT_MAX_TABLE_SLOTS: u32 = 4_194_301;
/// Slots (4 bytes each, 512 KiB) of `table_budget` per VIP of `max_vips` unless the config
/// says otherwise: what each VIP's two fixed rows of 65537 slots took before per-VIP sizes.
pub const TABLE_BUDGET_PER_VIP: u32 = 1 << 17;
/// `table_budget` for the default `max_vips` (128 MiB).
pub const DEFAULT_TABLE_BUDGET: u32 = DEFAULT_MAX_VIPS * TABLE_BUDGET_PER_VIP;
/// VIPs the maps hold unless the config says otherwise (the maps are sized at load time).
pub const DEFAULT_MAX_VIPS: u32 = 256;
/// Backends (distinct backend ids) the maps hold unless the config says otherwise.
pub const DEFAULT_MAX_BACKENDS: u32 = 4096;
/// Flows the connection table holds unless the config says otherwise (an LRU: the least
/// recently used flow is evicted when it is full). About 100 bytes each in the kernel.
pub const DEFAULT_FLOW_TABLE_SIZE: u32 = 1 << 20;
/// A flow with no packet for this long is forgotten (its next packet is a new flow).
pub const DEFAULT_FLOW_IDLE_SECS: u64 = 300;
/// The data path refreshes a flow's `last_seen_ns` at most this often: one shared-memory
/// write per flow per second instead of one per packet.
pub const FLOW_REFRESH_NS: u64 = 1_000_000_000;
/// Slots per TABLES element. Array maps round each element to 8 bytes, so a single-u32 value
/// would double the memory; 16 slots (64 bytes) per element keep the mmap'ed layout dense.
pub const TABLE_CHUNK: u32 = 16;

/// Map names (BPF object names are at most 15 characters).
pub mod names {
    pub const SETTINGS: &str = "SETTINGS";
    pub const IFACES: &str = "IFACES";
    pub const VIPS: &str = "VIPS";
    pub const TABLES: &str = "TABLES";
    pub const BACKENDS: &str = "BACKENDS";
    pub const VIP_STATS: &str = "VIP_STATS";
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    pub const FLOWS: &str = "FLOWS";
    pub const VIP_ADDRS: &str = "VIP_ADDRS";
    pub const VIP_FILTER: &str = "VIP_FILTER";
    pub const TX_PORTS: &str = "TX_PORTS";
    pub const REASON_STATS: &str = "REASON_STATS";
    pub const EVENT_STATS: &str = "EVENT_STATS";
    pub const TRACE: &str = "TRACE";
    pub const TRACE_FILTER: &str = "TRACE_FILTER";
    pub const TRACE_PROG: &str = "TRACE_PROG";
}

/// Name of the XDP program in the object.
pub const PROGRAM_NAME: &str = "dsr";
/// Name of the program `dsr` tail-calls to write a trace record.
pub const TRACE_PROGRAM_NAME: &str = "dsr_trace";

/// SETTINGS[0]: deployment-wide values, written by userspace before the program is attached.
/// A zero `layout_version` means "not configured": the program passes everything.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    pub layout_version: u32,
    pub hash_seed: u32,
    /// Non-zero: `dsr trace` is listening, so each frame's decision is offered to TRACE
    /// (subject to TRACE_FILTER). Read per packet with the rest of SETTINGS: when off, tracing
    /// costs one predictable branch.
    pub trace: u32,
    pub _pad: u32,
    /// Flows idle longer than this are treated as new (CLOCK_MONOTONIC_COARSE nanoseconds).
    pub flow_idle_ns: u64,
}

/// IFACES entries: an array indexed by ifindex, so the data path's first lookup is an
/// inlined array access rather than a hash lookup. Interfaces with a larger ifindex cannot
/// host the program (userspace refuses them).
pub const MAX_IFINDEX: u32 = 1 << 16;

/// IFACES value, indexed by ifindex: the MAC of an interface the program is attached to
/// (all zero: not one of ours), and the VRRP virtual MACs of instances this node takes part
/// in (all-zero slots are unused), each received for only while `vmac_master` says this
/// node is master of it.
/// XDP cannot read its own interface's MAC, so userspace writes it here.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Iface {
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
    pub vmacs: [[u8; 6]; MAX_VMACS],
    /// 1: master of `vmacs[i]`'s instance.
    pub vmac_master: [u8; MAX_VMACS],
}

/// Most VRRP virtual MACs (instances with `use_vmac`) one interface takes part in.
pub const MAX_VMACS: usize = 4;

/// Whom a frame's destination MAC names, for [`Iface::addressee`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Addressee {
    /// This node: its own MAC, or a virtual MAC it is master of.
    Us,
    /// A virtual MAC of an instance this node is not master of.
    Standby,
    Other,
}

impl Iface {
    /// Written out slot by slot with constant indices: the verifier then sees no loop and
    /// no pointer arithmetic on a computed index (which it refuses).
    #[inline(always)]
    pub fn addressee(&self, dst: &[u8; 6]) -> Addressee {
        if *dst == self.mac {
            return Addressee::Us;
        }
        // An unused (all-zero) slot names nobody; no frame is sent to 00:00:00:00:00:00.
        if *dst == [0; 6] {
            return Addressee::Other;
        }
        let master = if *dst == self.vmacs[0] {
            self.vmac_master[0]
        } else if *dst == self.vmacs[1] {
            self.vmac_master[1]
        } else if *dst == self.vmacs[2] {
            self.vmac_master[2]
        } else if *dst == self.vmacs[3] {
            self.vmac_master[3]
        } else {
            return Addressee::Other;
        };
        if master == 1 {
            Addressee::Us
        } else {
            Addressee::Standby
        }
    }
}

/// Most TX_PORTS entries (interfaces other than the receiving one that backends sit behind).
pub const MAX_TX_PORTS: u32 = 64;

/// VIPS key: what a packet is addressed to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipKey {
    /// IPv6 address or IPv4-mapped (`::ffff:a.b.c.d`), words in network byte order.
    pub addr: [u32; 4],
    /// Destination port, network byte order (as read from the packet); 0 = all ports.
    pub port: u16,
    /// IP protocol number (6 TCP, 17 UDP).
    pub proto: u8,
    pub _pad: u8,
    /// 802.1Q VLAN id the VIP is restricted to (the frame's outer tag); 0 = any.
    pub vlan: u16,
    pub _pad2: u16,
}

impl VipKey {
    pub fn new(addr: core::net::IpAddr, port: u16, proto: u8, vlan: u16) -> Self {
        VipKey {
            addr: crate::hash::addr_words(addr),
            port: port.to_be(),
            proto,
            _pad: 0,
            vlan,
            _pad2: 0,
        }
    }
}

/// VIP_ADDRS key: a VIP address and protocol. One lookup here tells the data path whether a
/// packet's destination is a VIP address at all, and which VIPS keys to try for it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipAddrKey {
    pub addr: [u32; 4],
    pub proto: u8,
    pub _pad: [u8; 3],
}

impl VipAddrKey {
    pub fn new(addr: core::net::IpAddr, proto: u8) -> Self {
        VipAddrKey {
            addr: crate::hash::addr_words(addr),
            proto,
            _pad: [0; 3],
        }
    }
}

/// VIP_FILTER: a bitmap with one bit set per VIP address (at [`vip_filter_bit`]). A clear
/// bit proves a destination is no VIP address with one inlined array read, sparing most
/// non-VIP traffic the VIP_ADDRS hash lookup (a set bit may be a collision: VIP_ADDRS
/// decides).
pub const VIP_FILTER_WORDS: u32 = 1024;

/// Which VIP_FILTER bit stands for `addr` (the data path's address words).
#[inline(always)]
pub fn vip_filter_bit(addr: &[u32; 4]) -> u32 {
    let folded = addr[0] ^ addr[1] ^ addr[2] ^ addr[3];
    // Fibonacci hashing: the top 16 bits of the product index 65536 bits.
    folded.wrapping_mul(0x9e37_79b1) >> 16
}

/// VIP_ADDRS value: `ADDR_F_*`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipAddrInfo {
    pub flags: u32,
}

/// VIPS has keys with a port for this address.
pub const ADDR_F_PORTS: u32 = 1;
/// VIPS has a port-0 key for this address (an all-ports VIP, or a fragment alias).
pub const ADDR_F_PORT0: u32 = 2;
/// VIPS has keys restricted to a VLAN for this address.
pub const ADDR_F_VLAN: u32 = 4;

/// VIPS value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipInfo {
    /// Index into VIP_STATS.
    pub id: u32,
    /// TABLES element where the VIP's table starts: its `ceil(table_size / TABLE_CHUNK)`
    /// elements follow. Userspace writes a new table into free elements, then switches this
    /// (one VIPS update: no packet sees a half-written table).
    pub table_base: u32,
    /// Slots of the table; 0 = no usable backend, packets are dropped.
    pub table_size: u32,
    /// `VIP_F_*`.
    pub flags: u32,
    /// Which fields of the flow select the backend: `HASH_*` bits.
    pub hash_fields: u32,
}

/// The VIP's flows are not tracked: every packet is placed by the Maglev table alone
/// (cheaper for one-packet flows such as DNS; drained backends then lose their flows).
pub const VIP_F_NO_CONNTRACK: u32 = 1;
/// The VIP accepts IPv4/IPv6 fragments. Its hash then never includes ports (a non-first
/// fragment has none), so all fragments of a datagram reach one backend.
pub const VIP_F_FRAGMENTS: u32 = 2;
/// This port-0 entry only exists to catch non-first fragments of a port VIP that accepts
/// fragments; other packets do not match it.
pub const VIP_F_FRAGMENT_ALIAS: u32 = 4;

pub const HASH_SRC_ADDR: u32 = 1;
pub const HASH_DST_ADDR: u32 = 2;
pub const HASH_SRC_PORT: u32 = 4;
pub const HASH_DST_PORT: u32 = 8;
pub const HASH_PROTO: u32 = 16;
/// The 5-tuple: the default.
pub const HASH_ALL: u32 = 31;
/// Port fields: what a VIP accepting fragments never hashes.
pub const HASH_PORTS: u32 = HASH_SRC_PORT | HASH_DST_PORT;

/// One TABLES element: `TABLE_CHUNK` consecutive slots of a Maglev table, each a backend id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableChunk {
    pub slots: [u32; TABLE_CHUNK as usize],
}

/// BACKENDS value, indexed by backend id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
    /// `BACKEND_F_*`.
    pub flags: u32,
    /// 0 = send back out of the receiving interface (XDP_TX); n = redirect through TX_PORTS
    /// entry n (a backend behind another interface).
    pub tx_port: u32,
    /// Id of the VIP this backend belongs to. A flow entry is followed only to a backend of
    /// the VIP the packet matched, so an entry can never carry one VIP's clients to another
    /// VIP's backends (not even when ids are reused).
    pub vip: u32,
    /// Source MAC for redirected frames: the egress interface's own.
    pub src_mac: [u8; 6],
    pub _pad2: [u8; 2],
}

/// The backend entry is filled in (it has a MAC); a table slot naming an entry without it drops.
pub const BACKEND_F_VALID: u32 = 1;
/// The entry is in use (with or without a MAC): an all-zero entry is a free id.
pub const BACKEND_F_PRESENT: u32 = 4;
/// Established flows (FLOWS entries) stay on this backend: set while it is healthy, draining
/// (weight 0) or inhibited; cleared when it fails or is removed, so its flows move to the
/// VIP's table's new owner.
pub const BACKEND_F_KEEP_FLOWS: u32 = 2;

/// FLOWS key: the flow as its VIP hashes it, scoped by the VIP and the frame's VLAN. Two VIPs
/// (or two VLANs) that see the same masked 5-tuple, e.g. one source-hashed client, have two
/// entries.
///
/// Only the fields the VIP id does not already fix: a VIP id stands for one address and one
/// protocol, so the destination address and the protocol are implied (see [`FlowMapKey::flow`]).
/// 28 bytes instead of the 48 of a whole [`crate::FlowKey`]: the LRU hash hashes and compares
/// every key byte, and the smaller key measured 31-41 ns cheaper per lookup (`cargo xtask
/// bench datapath`, the 28-byte floor).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowMapKey {
    /// The VIP id the packet matched.
    pub vip: u32,
    /// The frame's outer VLAN id (0 = untagged).
    pub vlan: u16,
    pub _pad: u16,
    /// The flow's source address, zeroed when the VIP does not hash on it.
    pub src: [u32; 4],
    /// The flow's ports as [`crate::FlowKey::ports`] holds them, the unhashed ones zeroed.
    pub ports: u32,
}

impl FlowMapKey {
    /// The entry for `flow` (already masked by the VIP's hash fields) of VIP `vip`.
    #[inline(always)]
    pub fn new(vip: u32, vlan: u16, flow: &crate::FlowKey) -> Self {
        FlowMapKey {
            vip,
            vlan,
            _pad: 0,
            src: flow.src,
            ports: flow.ports,
        }
    }

    /// The masked flow this entry stands for, given its VIP's address words, protocol number
    /// and hash fields (`HASH_*`): what the data path hashed for it. The source and ports are
    /// the entry's own, as the data path masked them when it made the entry (a VIP whose hash
    /// setting changed since holds entries masked the former way: see
    /// [`FlowMapKey::masked_by`]).
    pub fn flow(&self, vip_addr: [u32; 4], proto: u8, hash_fields: u32) -> crate::FlowKey {
        let implied = crate::FlowKey {
            dst: vip_addr,
            proto: proto as u32,
            ..Default::default()
        }
        .masked(hash_fields);
        crate::FlowKey {
            src: self.src,
            ports: self.ports,
            ..implied
        }
    }

    /// Whether the entry's fields are masked as `hash_fields` masks them: false for an entry
    /// made under another hash setting of the VIP (it idles out; it stands for no flow of
    /// the setting now).
    pub fn masked_by(&self, hash_fields: u32) -> bool {
        let flow = crate::FlowKey {
            src: self.src,
            ports: self.ports,
            ..Default::default()
        };
        flow.masked(hash_fields) == flow
    }
}

/// [`FlowEntry::flags`]: a TCP FIN or RST of the flow was seen inbound. The entry still
/// forwards (the close takes more packets, and a RST may be lost), but the flow no longer
/// counts as active (load-aware weights, `dsr status`). A SYN clears it (the tuple reused).
pub const FLOW_F_CLOSING: u32 = 1;

/// FLOWS value, keyed by [`FlowMapKey`]: the backend a flow was given.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEntry {
    pub backend: u32,
    /// `FLOW_F_*`.
    pub flags: u32,
    /// CLOCK_MONOTONIC_COARSE (bpf_ktime_get_coarse_ns) of a recent packet, refreshed at
    /// most every [`FLOW_REFRESH_NS`].
    pub last_seen_ns: u64,
}

/// VIP_STATS / BACKEND_STATS value (per CPU; userspace sums the CPUs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
    /// New flows placed by the Maglev table (VIP and backend counters; 0 in REASON_STATS).
    pub flows: u64,
}

/// Why the program returned what it did. REASON_STATS is indexed by these (per CPU).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Sent to a backend (XDP_TX).
    Forwarded = 0,
    /// Passed: not addressed to the receiving interface's MAC (flooded, multicast, broadcast).
    NotOurMac = 1,
    /// Passed: not IPv4/IPv6 (ARP, LLDP, ...).
    NotIp = 2,
    /// Passed: IP, but not TCP/UDP (ICMP, NDP, ...).
    NotTcpUdp = 3,
    /// Passed: TCP/UDP whose (address, port, protocol) is no VIP.
    NotVip = 4,
    /// Passed: a header is truncated or invalid; the kernel's stack decides.
    Malformed = 5,
    /// Passed: IPv6 with an extension header before TCP/UDP.
    Ipv6ExtHeader = 6,
    /// Passed: a fragment for an address with no VIP that accepts fragments.
    Fragment = 7,
    /// Passed: the receiving interface has no IFACES entry, or SETTINGS is unset.
    NotConfigured = 8,
    /// Dropped: the VIP has no usable backend.
    NoBackend = 9,
    /// Forwarded: a fragment for a VIP that accepts fragments.
    FragmentForwarded = 10,
    /// Forwarded: an ICMP "fragmentation needed" / ICMPv6 "packet too big" about a VIP's
    /// flow, sent to that flow's backend so path-MTU discovery works.
    IcmpForwarded = 11,
    /// Passed: more than two VLAN tags.
    TooManyVlanTags = 12,
    /// Dropped: the backend sits behind another interface and TX_PORTS has no entry for it
    /// (the interface went away). Not counted on the backend.
    NoTxPort = 13,
    /// Dropped: addressed to the virtual MAC of a VRRP instance this node is not master of.
    /// Passing it would let the local stack answer for the VIP that a killed keepalived
    /// left on its vmac interface (with resets); dropped, the client retransmits to the
    /// new master.
    NotMaster = 14,
}

/// Number of [`Reason`]s; REASON_STATS has this many entries.
pub const REASON_COUNT: u32 = 15;

impl Reason {
    pub const ALL: [Reason; REASON_COUNT as usize] = [
        Reason::Forwarded,
        Reason::NotOurMac,
        Reason::NotIp,
        Reason::NotTcpUdp,
        Reason::NotVip,
        Reason::Malformed,
        Reason::Ipv6ExtHeader,
        Reason::Fragment,
        Reason::NotConfigured,
        Reason::NoBackend,
        Reason::FragmentForwarded,
        Reason::IcmpForwarded,
        Reason::TooManyVlanTags,
        Reason::NoTxPort,
        Reason::NotMaster,
    ];

    /// Short name for counters and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::Forwarded => "forwarded",
            Reason::NotOurMac => "not_our_mac",
            Reason::NotIp => "not_ip",
            Reason::NotTcpUdp => "not_tcp_udp",
            Reason::NotVip => "not_vip",
            Reason::Malformed => "malformed",
            Reason::Ipv6ExtHeader => "ipv6_ext_header",
            Reason::Fragment => "fragment",
            Reason::NotConfigured => "not_configured",
            Reason::NoBackend => "no_backend",
            Reason::FragmentForwarded => "forwarded_fragment",
            Reason::IcmpForwarded => "forwarded_icmp",
            Reason::TooManyVlanTags => "too_many_vlan_tags",
            Reason::NoTxPort => "no_tx_port",
            Reason::NotMaster => "not_vrrp_master",
        }
    }

    /// The verdict the program returns for this reason ("forward": XDP_TX, or XDP_REDIRECT
    /// for a backend behind another interface).
    pub const fn verdict(self) -> &'static str {
        match self {
            Reason::Forwarded | Reason::FragmentForwarded | Reason::IcmpForwarded => "forward",
            Reason::NoBackend | Reason::NoTxPort | Reason::NotMaster => "drop",
            _ => "pass",
        }
    }

    pub const fn forwards(self) -> bool {
        matches!(
            self,
            Reason::Forwarded | Reason::FragmentForwarded | Reason::IcmpForwarded
        )
    }
}

/// Things the program counts besides its verdicts (EVENT_STATS, per CPU, indexed by these).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A flow-table insert failed: the flow is placed by the table again on its next packet.
    FlowInsertFailed = 0,
    /// A TCP segment that is neither a SYN nor a RST/FIN found no flow entry (a connection
    /// taken over after a failover, an eviction or a restart): it was placed by the table and
    /// remembered, so it stays pinned through later table changes. Not a new flow.
    Adopted = 1,
    /// A TCP RST or FIN found no flow entry (often the last packet of a connection another
    /// node carried): forwarded by the table, not remembered, not a new flow.
    UntrackedClose = 2,
    /// A trace record was not written: TRACE was full (the reader is behind).
    TraceLost = 3,
}

pub const EVENT_COUNT: u32 = 4;

impl Event {
    pub const ALL: [Event; EVENT_COUNT as usize] = [
        Event::FlowInsertFailed,
        Event::Adopted,
        Event::UntrackedClose,
        Event::TraceLost,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Event::FlowInsertFailed => "flow_insert_failed",
            Event::Adopted => "adopted",
            Event::UntrackedClose => "untracked_close",
            Event::TraceLost => "trace_lost",
        }
    }
}

/// Bytes of the TRACE ring buffer (a power of two, a multiple of the page size): about 2,500
/// records, a few milliseconds of a busy interface, while the reader drains it continuously.
pub const TRACE_RING_BYTES: u32 = 1 << 18;

/// TraceRecord::flags: which fields hold something.
/// `flow` holds the packet's flow (it was parsed as TCP/UDP or an ICMP error about one).
pub const TRACE_F_FLOW: u32 = 1 << 0;
/// `vip` holds the VIP id the packet matched.
pub const TRACE_F_VIP: u32 = 1 << 1;
/// `backend` holds the backend id the packet was sent to (or would have been: no_tx_port).
pub const TRACE_F_BACKEND: u32 = 1 << 2;
/// The backend came from the flow table (an established flow).
pub const TRACE_F_FLOW_HIT: u32 = 1 << 3;
/// The backend came from the VIP's table: `slot` holds the slot.
pub const TRACE_F_SLOT: u32 = 1 << 4;
/// The flow was remembered in the flow table by this packet.
pub const TRACE_F_REMEMBERED: u32 = 1 << 5;

/// One TRACE record: what the program decided for one frame and why.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceRecord {
    /// bpf_ktime_get_ns (CLOCK_MONOTONIC).
    pub time_ns: u64,
    /// The flow as parsed (ports not masked by the VIP's hash fields); see `TRACE_F_FLOW`.
    pub flow: crate::FlowKey,
    pub flags: u32,
    /// A [`Reason`].
    pub reason: u32,
    /// The XDP action returned.
    pub action: u32,
    pub ifindex: u32,
    pub vip: u32,
    pub backend: u32,
    pub slot: u32,
    /// Frame length in bytes.
    pub len: u32,
    /// Outer VLAN id (0 = untagged).
    pub vlan: u16,
    /// The destination MAC the frame arrived with.
    pub dst_mac: [u8; 6],
    /// TCP flags (`parse::TCP_*`) of a TCP packet with its header; 0 otherwise.
    pub tcp_flags: u8,
    pub _pad: [u8; 7],
}

/// TraceFilter::flags: which conditions apply (none: every frame).
pub const TRACE_FILTER_VIP: u32 = 1 << 0;
pub const TRACE_FILTER_CLIENT: u32 = 1 << 1;

/// TRACE_FILTER[0]: which frames are traced. Checked in the data path so that a filtered
/// trace of a busy node does not overflow the ring with frames nobody asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceFilter {
    pub flags: u32,
    /// VIP id (`TRACE_FILTER_VIP`).
    pub vip: u32,
    /// Client address as the flow key holds it (`TRACE_FILTER_CLIENT`).
    pub client: [u32; 4],
}

impl TraceFilter {
    /// Whether a frame with these fields is traced.
    #[inline(always)]
    pub fn admits(&self, record: &TraceRecord) -> bool {
        if self.flags & TRACE_FILTER_VIP != 0
            && (record.flags & TRACE_F_VIP == 0 || record.vip != self.vip)
        {
            return false;
        }
        if self.flags & TRACE_FILTER_CLIENT != 0
            && (record.flags & TRACE_F_FLOW == 0 || record.flow.src != self.client)
        {
            return false;
        }
        true
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C), Copy, with explicit padding and no invalid bit patterns.
    unsafe impl aya::Pod for Settings {}
    unsafe impl aya::Pod for Iface {}
    unsafe impl aya::Pod for VipKey {}
    unsafe impl aya::Pod for VipAddrKey {}
    unsafe impl aya::Pod for VipAddrInfo {}
    unsafe impl aya::Pod for VipInfo {}
    unsafe impl aya::Pod for TableChunk {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for Counter {}
    unsafe impl aya::Pod for FlowEntry {}
    unsafe impl aya::Pod for crate::FlowKey {}
    unsafe impl aya::Pod for FlowMapKey {}
    unsafe impl aya::Pod for TraceFilter {}
    unsafe impl aya::Pod for TraceRecord {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<Settings>(), 24);
        assert_eq!(size_of::<FlowEntry>(), 16);
        assert_eq!(size_of::<crate::FlowKey>(), 40);
        assert_eq!(size_of::<Iface>(), 36);
        assert_eq!(size_of::<VipKey>(), 24);
        assert_eq!(size_of::<VipAddrKey>(), 20);
        assert_eq!(size_of::<VipInfo>(), 20);
        assert_eq!(size_of::<TableChunk>(), 4 * TABLE_CHUNK as usize);
        assert_eq!(size_of::<Backend>(), 28);
        assert_eq!(size_of::<FlowMapKey>(), 28);
        assert_eq!(size_of::<Counter>(), 24);
        assert_eq!(size_of::<TraceRecord>(), 96);
        assert_eq!(size_of::<TraceFilter>(), 24);
    }

    #[test]
    fn a_flow_entry_key_gives_back_the_flow_it_was_made_from() {
        let vip: core::net::IpAddr = "192.0.2.10".parse().unwrap();
        let client: core::net::IpAddr = "2001:db8::7".parse().unwrap();
        let full = crate::FlowKey::new(client, 40000, vip, 443, 6);
        for fields in [
            HASH_ALL,
            HASH_SRC_ADDR,
            HASH_ALL & !HASH_PORTS,
            HASH_DST_PORT,
        ] {
            let masked = full.masked(fields);
            let key = FlowMapKey::new(3, 7, &masked);
            assert_eq!((key.vip, key.vlan), (3, 7));
            assert_eq!(key.flow(full.dst, 6, fields), masked, "fields {fields:#x}");
            assert!(key.masked_by(fields));
        }
        // An entry made while the VIP hashed the whole 5-tuple is none of a source-hashed
        // VIP's.
        let whole = FlowMapKey::new(3, 0, &full.masked(HASH_ALL));
        assert!(!whole.masked_by(HASH_SRC_ADDR));
    }

    #[test]
    fn reasons_are_indexed_in_order() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        for (i, e) in Event::ALL.iter().enumerate() {
            assert_eq!(*e as usize, i);
        }
    }
}
