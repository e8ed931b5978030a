//! dsr's XDP program: forwards frames for a VIP to a backend chosen by its Maglev table, by
//! rewriting the MAC addresses (Direct Server Return); passes everything else untouched.
//!
//! No policy lives here: userspace decides which backends are usable and writes the tables;
//! this program applies what the maps say. Every exit is a [`Reason`], counted per CPU.
#![no_std]
#![no_main]

mod flows;
mod headers;
mod maps;
mod stats;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use dsr_common::{
    BACKEND_F_KEEP_FLOWS, BACKEND_F_VALID, Backend, FlowKey, LAYOUT_VERSION, Reason, Settings,
    TABLE_CHUNK, VIP_F_NO_CONNTRACK, VipInfo, VipKey, flow_hash,
};

use crate::{
    headers::{ETH_P_IPV4, ETH_P_IPV6, EthHdr, Ipv4Hdr, Ipv6Hdr, Ports, ptr_at, ptr_at_mut},
    maps::{BACKENDS, IFACES, SETTINGS, TABLES, VIPS},
};

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const TCP_MIN_HDR: usize = 20;
const UDP_HDR: usize = 8;
/// `::ffff:0:0/96` third word, as read from the packet: v4 flows are keyed as IPv4-mapped IPv6.
const V4_MAPPED: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

#[xdp]
pub fn dsr(ctx: XdpContext) -> u32 {
    let reason = forward(&ctx);
    stats::count_reason(reason, ctx.data_end() - ctx.data());
    match reason {
        Reason::Forwarded => xdp_action::XDP_TX,
        Reason::NoBackend => xdp_action::XDP_DROP,
        _ => xdp_action::XDP_PASS,
    }
}

/// The whole decision. Returns why the frame is forwarded, passed or dropped; the frame is
/// only modified on the `Forwarded` path.
#[inline(always)]
fn forward(ctx: &XdpContext) -> Reason {
    let Some(settings) = SETTINGS.get(0) else {
        return Reason::NotConfigured;
    };
    if settings.layout_version != LAYOUT_VERSION {
        return Reason::NotConfigured;
    }
    let ifindex = ctx.ingress_ifindex() as u32;
    // SAFETY: IFACES values are plain data, copied out at once.
    let Some(iface) = (unsafe { IFACES.get(&ifindex) }).copied() else {
        return Reason::NotConfigured;
    };

    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Reason::Malformed;
    };
    // SAFETY: ptr_at checked that the header lies inside the frame.
    let eth = unsafe { &*eth };
    // On a shared segment a switch floods frames for unknown MACs to every port: forwarding
    // one meant for another host (a peer load balancer) would deliver it twice.
    if eth.dst != iface.mac {
        return Reason::NotOurMac;
    }

    let (key, l4_off) = match u16::from_be_bytes(eth.ethertype) {
        ETH_P_IPV4 => match parse_ipv4(ctx) {
            Ok(v) => v,
            Err(r) => return r,
        },
        ETH_P_IPV6 => match parse_ipv6(ctx) {
            Ok(v) => v,
            Err(r) => return r,
        },
        _ => return Reason::NotIp,
    };
    let min_l4 = if key.proto == IPPROTO_TCP as u32 {
        TCP_MIN_HDR
    } else {
        UDP_HDR
    };
    if ctx.data() + l4_off + min_l4 > ctx.data_end() {
        return Reason::Malformed;
    }
    let Some(ports) = ptr_at::<Ports>(ctx, l4_off) else {
        return Reason::Malformed;
    };
    // SAFETY: bounds checked by ptr_at.
    let ports = unsafe { *ports };
    let key = FlowKey {
        ports: ports.src as u32 | (ports.dst as u32) << 16,
        ..key
    };

    let vip_key = VipKey {
        addr: key.dst,
        port: ports.dst,
        proto: key.proto as u8,
        _pad: 0,
    };
    // SAFETY: VIPS is BPF_F_NO_PREALLOC (elements are RCU-freed, never recycled under us),
    // and the value is copied out at once.
    let Some(vip) = (unsafe { VIPS.get(&vip_key) }).copied() else {
        return Reason::NotVip;
    };
    let len = ctx.data_end() - ctx.data();
    stats::count_vip(vip.id, len);

    let tracked = vip.flags & VIP_F_NO_CONNTRACK == 0;
    let now = if tracked { flows::now_ns() } else { 0 };
    let established = if tracked {
        flows::established(&key, now, settings.flow_idle_ns)
    } else {
        None
    };
    // An established flow stays on its backend while that backend keeps flows (healthy,
    // draining or inhibited), even when the table no longer points there.
    let kept = established.and_then(|id| {
        let b = BACKENDS.get(id)?;
        let keep = BACKEND_F_VALID | BACKEND_F_KEEP_FLOWS;
        (b.flags & keep == keep).then_some((id, *b))
    });
    let (backend_id, backend) = match kept {
        Some(found) => found,
        None => {
            let Some((id, backend)) = from_table(&vip, &key, settings) else {
                return Reason::NoBackend;
            };
            if tracked {
                flows::remember(&key, id, now);
                stats::count_new_flow(vip.id, id);
            }
            (id, backend)
        }
    };

    let Some(eth) = ptr_at_mut::<EthHdr>(ctx, 0) else {
        return Reason::Malformed;
    };
    // SAFETY: bounds checked by ptr_at_mut. The source must be our own MAC: a frame that
    // keeps the client's would teach the switch that the client lives on our port, and the
    // backend's replies would then come here instead of going direct.
    unsafe {
        (*eth).dst = backend.mac;
        (*eth).src = iface.mac;
    }
    stats::count_backend(backend_id, len);
    Reason::Forwarded
}

/// The backend the VIP's Maglev table gives this flow, if it has one with a MAC.
#[inline(always)]
fn from_table(vip: &VipInfo, key: &FlowKey, settings: &Settings) -> Option<(u32, Backend)> {
    if vip.table_size == 0 {
        return None;
    }
    let slot = flow_hash(key, settings.hash_seed) % vip.table_size;
    let chunk = TABLES.get(vip.table_row * settings.row_chunks + slot / TABLE_CHUNK)?;
    // `% TABLE_CHUNK` (a power of two) also bounds the index for the verifier.
    let id = chunk.slots[(slot % TABLE_CHUNK) as usize];
    let backend = BACKENDS.get(id)?;
    (backend.flags & BACKEND_F_VALID != 0).then_some((id, *backend))
}

/// IPv4 with any IHL (options are skipped, not refused). Returns the flow key without ports
/// and the offset of the L4 header.
#[inline(always)]
fn parse_ipv4(ctx: &XdpContext) -> Result<(FlowKey, usize), Reason> {
    let ip = ptr_at::<Ipv4Hdr>(ctx, EthHdr::LEN).ok_or(Reason::Malformed)?;
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    if ip.ver_ihl >> 4 != 4 {
        return Err(Reason::Malformed);
    }
    let ihl = (ip.ver_ihl & 0x0f) as usize;
    if ihl < 5 {
        return Err(Reason::Malformed);
    }
    if ip.proto != IPPROTO_TCP && ip.proto != IPPROTO_UDP {
        return Err(Reason::NotTcpUdp);
    }
    // More-fragments flag or a fragment offset: only the first fragment carries ports.
    if u16::from_be(ip.frag_off) & 0x3fff != 0 {
        return Err(Reason::Fragment);
    }
    let key = FlowKey {
        src: [0, 0, V4_MAPPED, ip.saddr],
        dst: [0, 0, V4_MAPPED, ip.daddr],
        ports: 0,
        proto: ip.proto as u32,
    };
    Ok((key, EthHdr::LEN + ihl * 4))
}

/// IPv6 fixed header followed directly by TCP or UDP. Extension headers are passed: walking
/// them costs a bounded loop on every packet and real VIP traffic rarely carries them.
#[inline(always)]
fn parse_ipv6(ctx: &XdpContext) -> Result<(FlowKey, usize), Reason> {
    let ip = ptr_at::<Ipv6Hdr>(ctx, EthHdr::LEN).ok_or(Reason::Malformed)?;
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    if ip.version() != 6 {
        return Err(Reason::Malformed);
    }
    match ip.nexthdr {
        IPPROTO_TCP | IPPROTO_UDP => {}
        // hop-by-hop, routing, fragment, destination options, AH, mobility, HIP, shim6,
        // experimental (RFC 8200 section 4, RFC 7045).
        0 | 43 | 44 | 60 | 51 | 135 | 139 | 140 | 253 | 254 => {
            return Err(Reason::Ipv6ExtHeader);
        }
        _ => return Err(Reason::NotTcpUdp),
    }
    let key = FlowKey {
        src: ip.saddr,
        dst: ip.daddr,
        ports: 0,
        proto: ip.nexthdr as u32,
    };
    Ok((key, EthHdr::LEN + Ipv6Hdr::LEN))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
