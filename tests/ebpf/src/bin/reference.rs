//! Reference XDP programs that dsr is measured and tested against; not part of the data path.
//! - `xdp_pass`: returns XDP_PASS. The lab attaches it to the switch-side peer of a veth that
//!   receives XDP_TX frames (a veth drops XDP frames unless its peer has an XDP program), and
//!   it is the "empty program" of the benchmarks.
//! - `xdp_macswap`: the cheapest program doing dsr's job: writes a fixed destination and
//!   source MAC and returns XDP_TX. The benchmarks' baseline.
//! - `xdp_floor_hit`, `xdp_floor_new`, `xdp_floor_new_pcpu`: the baseline plus what the kernel
//!   charges for a flow table with dsr's key and value shapes: one lookup that finds the flow,
//!   or a lookup that misses and an insert (with eviction in a full table; common or per-CPU
//!   LRU lists). The benchmarks' floor for dsr's hit and new-flow paths: what is left above
//!   it is dsr's own work.
//! - `xdp_floor_vip_hit`: the floor of dsr's hit path as the issue defines it (the VIP lookup
//!   stays: the flow key needs the VIP's id): a hash lookup shaped like VIPS (24-byte key,
//!   20-byte value, no preallocation) that finds the VIP, then the flow-table hit.
//! - `xdp_floor_hit48`, `xdp_floor_new48`: the same with the 48-byte key dsr had before map
//!   layout 10 (the whole 5-tuple beside the VIP id and VLAN), to keep measuring what the
//!   smaller key buys.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, HashMap, LruHashMap},
    programs::XdpContext,
};
// dsr's own key and value types: the floors have dsr's shapes by construction.
use dsr_common::{FlowEntry, FlowMapKey, VipInfo, VipKey};

/// [0] = destination MAC, [1] = source MAC (in the first 6 bytes of each entry).
#[map(name = "REF_MACS")]
static REF_MACS: Array<[u8; 8]> = Array::with_max_entries(2, 0);

#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[xdp]
pub fn xdp_macswap(ctx: XdpContext) -> u32 {
    macswap(&ctx)
}

/// The floor of a flow-table hit: XDP_TX (with the baseline's rewrite) when the frame's flow
/// is in REF_FLOWS, XDP_DROP when it is not (the benchmark checks which it got).
#[xdp]
pub fn xdp_floor_hit(ctx: XdpContext) -> u32 {
    match wide_key(&ctx) {
        Some(key) => floor_hit(&ctx, &REF_FLOWS, &narrow(key)),
        None => xdp_action::XDP_PASS,
    }
}

/// The floor of a new flow: a lookup that misses, an insert, the baseline's rewrite: XDP_TX.
/// XDP_DROP when the flow was there already, XDP_ABORTED when the insert failed.
#[xdp]
pub fn xdp_floor_new(ctx: XdpContext) -> u32 {
    match wide_key(&ctx) {
        Some(key) => floor_insert(&ctx, &REF_FLOWS, &narrow(key)),
        None => xdp_action::XDP_PASS,
    }
}

#[xdp]
pub fn xdp_floor_new_pcpu(ctx: XdpContext) -> u32 {
    match wide_key(&ctx) {
        Some(key) => floor_insert(&ctx, &REF_FLOWS_PCPU, &narrow(key)),
        None => xdp_action::XDP_PASS,
    }
}

#[xdp]
pub fn xdp_floor_hit48(ctx: XdpContext) -> u32 {
    match wide_key(&ctx) {
        Some(key) => floor_hit(&ctx, &REF_FLOWS48, &key),
        None => xdp_action::XDP_PASS,
    }
}

#[xdp]
pub fn xdp_floor_new48(ctx: XdpContext) -> u32 {
    match wide_key(&ctx) {
        Some(key) => floor_insert(&ctx, &REF_FLOWS48, &key),
        None => xdp_action::XDP_PASS,
    }
}

#[xdp]
pub fn xdp_floor_vip_hit(ctx: XdpContext) -> u32 {
    let Some(key) = wide_key(&ctx) else {
        return xdp_action::XDP_PASS;
    };
    let w = key.words;
    let vip = VipKey {
        addr: [w[6], w[7], w[8], w[9]],
        // The destination port (the high half of the ports word), as dsr's VIPS key has it.
        port: (w[10] >> 16) as u16,
        proto: w[11] as u8,
        _pad: 0,
        vlan: 0,
        _pad2: 0,
    };
    // SAFETY: plain data, read at once.
    let Some(info) = (unsafe { REF_VIPS.get(&vip) }) else {
        return xdp_action::XDP_DROP;
    };
    let mut flow = narrow(key);
    // The VIP's id into the flow key, as dsr does (the bench gives every VIP id 0, the id the
    // other floors' keys carry, so one warm table serves both).
    flow.vip = info.id;
    floor_hit(&ctx, &REF_FLOWS, &flow)
}

#[inline(always)]
fn floor_hit<K>(ctx: &XdpContext, flows: &LruHashMap<K, FlowEntry>, key: &K) -> u32 {
    if flows.get_ptr(key).is_none() {
        return xdp_action::XDP_DROP;
    }
    macswap(ctx)
}

#[inline(always)]
fn floor_insert<K>(ctx: &XdpContext, flows: &LruHashMap<K, FlowEntry>, key: &K) -> u32 {
    if flows.get_ptr(key).is_some() {
        return xdp_action::XDP_DROP;
    }
    let entry = FlowEntry {
        backend: 1,
        flags: 0,
        last_seen_ns: 0,
    };
    if flows.insert(key, &entry, 0).is_err() {
        return xdp_action::XDP_ABORTED;
    }
    macswap(ctx)
}

/// dsr's flow key before map layout 10 (VIP id, VLAN, source and destination address as four
/// words each, ports, protocol: 48 bytes), filled from fixed offsets of an untagged IPv4 or
/// IPv6 TCP/UDP frame without options: enough for the benchmarks' own frames.
#[repr(C)]
#[derive(Clone, Copy)]
struct WideKey {
    words: [u32; 12],
}

/// dsr's own flow key (`FlowMapKey`: VIP id, VLAN, source address, ports) of the frame.
#[inline(always)]
fn narrow(k: WideKey) -> FlowMapKey {
    let w = k.words;
    FlowMapKey {
        vip: w[0],
        vlan: w[1] as u16,
        _pad: 0,
        src: [w[2], w[3], w[4], w[5]],
        ports: w[10],
    }
}

/// The kernel floor of dsr's flow table: an LRU hash with dsr's key and value shapes. One
/// entry in the object (the lab loads it for `xdp_pass` and should not pay for a big table);
/// the benchmark sizes it like dsr's flow table at load time.
#[map(name = "REF_FLOWS")]
static REF_FLOWS: LruHashMap<FlowMapKey, FlowEntry> = LruHashMap::with_max_entries(1, 0);

/// The same with per-CPU LRU lists (BPF_F_NO_COMMON_LRU): what that flag would change.
#[map(name = "REF_FLOWS_PCPU")]
static REF_FLOWS_PCPU: LruHashMap<FlowMapKey, FlowEntry> =
    LruHashMap::with_max_entries(1, BPF_F_NO_COMMON_LRU);

const BPF_F_NO_PREALLOC: u32 = 1;

#[map(name = "REF_VIPS")]
static REF_VIPS: HashMap<VipKey, VipInfo> = HashMap::with_max_entries(512, BPF_F_NO_PREALLOC);

#[map(name = "REF_FLOWS48")]
static REF_FLOWS48: LruHashMap<WideKey, FlowEntry> = LruHashMap::with_max_entries(1, 0);

const BPF_F_NO_COMMON_LRU: u32 = 2;

/// IPv4 header without options, then the ports (offset 14).
#[repr(C)]
#[derive(Clone, Copy)]
struct V4 {
    _head: [u8; 9],
    proto: u8,
    _csum: [u8; 2],
    src: u32,
    dst: u32,
    ports: u32,
}

/// IPv6 header, then the ports (offset 14).
#[repr(C)]
#[derive(Clone, Copy)]
struct V6 {
    _head: [u8; 6],
    next: u8,
    _hops: u8,
    src: [u32; 4],
    dst: [u32; 4],
    ports: u32,
}

/// A copy of the `T` at `offset`, if it lies inside the frame (one bounds check per header,
/// the form the verifier learns packet bounds from).
#[inline(always)]
fn read_at<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    let start = ctx.data();
    if start + offset + core::mem::size_of::<T>() > ctx.data_end() {
        return None;
    }
    // SAFETY: inside the frame (checked above); BPF loads may be unaligned here.
    Some(unsafe { ((start + offset) as *const T).read_unaligned() })
}

/// The frame's flow key, or None for a frame that is no plain IPv4/IPv6 one.
#[inline(always)]
fn wide_key(ctx: &XdpContext) -> Option<WideKey> {
    let mut key = WideKey { words: [0; 12] };
    let ethertype: [u8; 2] = read_at(ctx, 12)?;
    match u16::from_be_bytes(ethertype) {
        0x0800 => {
            let h: V4 = read_at(ctx, 14)?;
            key.words[5] = h.src;
            key.words[9] = h.dst;
            key.words[10] = h.ports;
            key.words[11] = h.proto as u32;
        }
        0x86dd => {
            let h: V6 = read_at(ctx, 14)?;
            key.words[2..6].copy_from_slice(&h.src);
            key.words[6..10].copy_from_slice(&h.dst);
            key.words[10] = h.ports;
            key.words[11] = h.next as u32;
        }
        _ => return None,
    }
    Some(key)
}

/// `xdp_macswap`'s work, then XDP_TX.
#[inline(always)]
fn macswap(ctx: &XdpContext) -> u32 {
    let start = ctx.data();
    if start + 14 > ctx.data_end() {
        return xdp_action::XDP_PASS;
    }
    let (Some(dst), Some(src)) = (REF_MACS.get(0), REF_MACS.get(1)) else {
        return xdp_action::XDP_PASS;
    };
    let eth = start as *mut [u8; 6];
    // SAFETY: the first 14 bytes are inside the frame (checked above).
    unsafe {
        *eth = [dst[0], dst[1], dst[2], dst[3], dst[4], dst[5]];
        *eth.add(1) = [src[0], src[1], src[2], src[3], src[4], src[5]];
    }
    xdp_action::XDP_TX
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
