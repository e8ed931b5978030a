//! dsr's XDP program: forwards frames for a VIP to a backend chosen by its flow table or its
//! Maglev table, by rewriting the MAC addresses (Direct Server Return); passes everything
//! else untouched.
//!
//! No policy lives here: userspace decides which backends are usable and writes the tables;
//! this program applies what the maps say. Every exit is a [`Reason`], counted per CPU.
#![no_std]
#![no_main]

mod flows;
mod headers;
mod maps;
mod stats;
mod trace;
mod vip;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use aya_log_ebpf::{debug, warn};
use dsr_common::{
    Addressee, BACKEND_F_KEEP_FLOWS, BACKEND_F_VALID, Backend, Event, FlowKey, FlowMapKey,
    HASH_PORTS, LAYOUT_VERSION, Reason, Settings, TABLE_CHUNK, TRACE_F_BACKEND, TRACE_F_FLOW_HIT,
    TRACE_F_REMEMBERED, TRACE_F_SLOT, TRACE_F_VIP, VIP_F_FRAGMENTS, VIP_F_NO_CONNTRACK, VipInfo,
    flow_hash,
    headers::{EthHdr, IPPROTO_TCP},
    parse::{self, Kind, TCP_FIN, TCP_RST, TCP_SYN},
};

use crate::{
    headers::{Xdp, ptr_at_mut, read_at},
    maps::{BACKENDS, IFACES, SETTINGS, TABLES, TX_PORTS},
    trace::Seen,
};

#[xdp]
pub fn dsr(ctx: XdpContext) -> u32 {
    let mut seen = Seen::default();
    let (reason, action) = forward(&ctx, &mut seen);
    let len = ctx.data_end() - ctx.data();
    stats::count_reason(reason, len);
    if seen.tracing != 0 {
        return trace::hand_over(&ctx, &seen, reason as u32, action, len);
    }
    action
}

/// A reason that is not forwarding, with its verdict.
#[inline(always)]
fn stop(reason: Reason) -> (Reason, u32) {
    let action = match reason {
        Reason::NoBackend | Reason::NoTxPort | Reason::NotMaster => xdp_action::XDP_DROP,
        _ => xdp_action::XDP_PASS,
    };
    (reason, action)
}

/// The whole decision: why the frame is forwarded, passed or dropped, and the XDP action.
/// The frame is only modified on the forwarding path. What it learns on the way is noted in
/// `seen`, for `dsr trace`.
#[inline(always)]
fn forward(ctx: &XdpContext, seen: &mut Seen) -> (Reason, u32) {
    let Some(settings) = SETTINGS.get(0) else {
        return stop(Reason::NotConfigured);
    };
    if settings.layout_version != LAYOUT_VERSION {
        return stop(Reason::NotConfigured);
    }
    seen.tracing = settings.trace;
    let ifindex = ctx.ingress_ifindex() as u32;
    let Some(iface) = IFACES.get(ifindex).copied() else {
        return stop(Reason::NotConfigured);
    };
    if iface.mac == [0; 6] {
        return stop(Reason::NotConfigured);
    }
    let Some(eth) = read_at::<EthHdr>(ctx, 0) else {
        return stop(Reason::Malformed);
    };
    // On a shared segment a switch floods frames for unknown MACs to every port: forwarding
    // one meant for another host (a peer load balancer) would deliver it twice.
    match iface.addressee(&eth.dst) {
        Addressee::Us => {}
        Addressee::Standby => return stop(Reason::NotMaster),
        Addressee::Other => return stop(Reason::NotOurMac),
    }
    let packet = match parse::parse(&Xdp(ctx)) {
        Ok(p) => p,
        Err(reason) => return stop(reason),
    };
    let fragment = matches!(packet.kind, Kind::Fragment { .. });
    let Some(vip) = vip::find(&packet.key, packet.vlan, packet.kind) else {
        return stop(match packet.kind {
            Kind::Plain => Reason::NotVip,
            Kind::Fragment { .. } => Reason::Fragment,
            Kind::TooBig => Reason::NotTcpUdp,
        });
    };
    seen.flags |= TRACE_F_VIP;
    seen.vip = vip.id;
    if fragment && vip.flags & VIP_F_FRAGMENTS == 0 {
        return stop(Reason::Fragment);
    }
    let len = ctx.data_end() - ctx.data();
    stats::count_vip(vip.id, len);

    // The flow as this VIP hashes it (a VIP accepting fragments never hashes ports), and
    // its flow-table key, scoped by the VIP and the VLAN.
    let key = packet.key.masked(vip.hash_fields);
    let flow_key = FlowMapKey::new(vip.id, packet.vlan, &key);
    let tracked = vip.flags & VIP_F_NO_CONNTRACK == 0;
    let now = if tracked { flows::now_ns() } else { 0 };
    let established = if tracked {
        // TCP flags are 0 but for TCP; an ICMP error's quoted segment is not this flow's;
        // and an entry without both ports stands for many connections, which one FIN or
        // SYN says nothing about.
        let flags = if packet.kind == Kind::Plain && vip.hash_fields & HASH_PORTS == HASH_PORTS {
            packet.tcp_flags
        } else {
            0
        };
        flows::established(&flow_key, now, settings.flow_idle_ns, flags)
    } else {
        None
    };
    // An established flow stays on its backend while that backend keeps flows (healthy,
    // draining or inhibited), even when the table no longer points there; and only if the
    // backend is one of this VIP's.
    let kept = established.and_then(|id| {
        let b = BACKENDS.get(id)?;
        let keep = BACKEND_F_VALID | BACKEND_F_KEEP_FLOWS;
        let kept = (b.flags & keep == keep && b.vip == vip.id).then_some((id, *b));
        if kept.is_none() {
            debug!(
                ctx,
                "VIP id {}: the flow entry's backend {} keeps no flows now; the table places the flow",
                vip.id,
                id
            );
        }
        kept
    });
    let placed = kept.is_none();
    let (backend_id, backend) = match kept {
        Some(found) => {
            seen.flags |= TRACE_F_FLOW_HIT;
            found
        }
        None => match from_table(ctx, &vip, &key, settings) {
            Some((slot, found)) => {
                seen.flags |= TRACE_F_SLOT;
                seen.slot = slot;
                found
            }
            None => return stop(Reason::NoBackend),
        },
    };
    seen.flags |= TRACE_F_BACKEND;
    seen.backend = backend_id;

    let action = if backend.tx_port != 0 {
        // The devmap entry goes when its interface goes: drop (counted), never count the
        // frame as forwarded.
        match TX_PORTS.redirect(backend.tx_port, 0) {
            Ok(action) => action,
            Err(_) => {
                warn!(
                    ctx,
                    "backend {} is behind TX port {}, which has no interface now: dropped",
                    backend_id,
                    backend.tx_port
                );
                return stop(Reason::NoTxPort);
            }
        }
    } else {
        xdp_action::XDP_TX
    };
    // An ICMP error is not a flow of its own: it only follows one. A later fragment of a TCP
    // segment has no TCP header (no flags): it follows its flow, and never starts one.
    let headerless_tcp = matches!(packet.kind, Kind::Fragment { first: false })
        && packet.key.proto == IPPROTO_TCP as u32;
    if placed && tracked && packet.kind != Kind::TooBig && !headerless_tcp {
        let flags = packet.tcp_flags;
        let is_tcp = packet.key.proto == IPPROTO_TCP as u32;
        if is_tcp && flags & (TCP_RST | TCP_FIN) != 0 {
            // The end of a connection this node never carried (ECMP sent its other packets
            // elsewhere, or it was forgotten): remembering it would only pin a dead flow.
            stats::count_event(Event::UntrackedClose);
        } else {
            flows::remember(ctx, &flow_key, backend_id, now);
            seen.flags |= TRACE_F_REMEMBERED;
            if is_tcp && flags & TCP_SYN == 0 {
                // A connection taken over mid-stream: pinned from now on, but not new.
                stats::count_event(Event::Adopted);
            } else {
                stats::count_new_flow(vip.id, backend_id);
            }
        }
    }

    let Some(eth) = ptr_at_mut::<EthHdr>(ctx, 0) else {
        return stop(Reason::Malformed);
    };
    // SAFETY: bounds checked by ptr_at_mut. The source must be the sending interface's own
    // MAC: a frame that keeps the client's would teach the switch that the client lives on
    // our port, and the backend's replies would then come here instead of going direct.
    unsafe {
        (*eth).dst = backend.mac;
        (*eth).src = if backend.tx_port != 0 {
            backend.src_mac
        } else {
            iface.mac
        };
    }
    stats::count_backend(backend_id, len);
    let reason = match packet.kind {
        Kind::Plain => Reason::Forwarded,
        Kind::Fragment { .. } => Reason::FragmentForwarded,
        Kind::TooBig => Reason::IcmpForwarded,
    };
    (reason, action)
}

/// The slot of the VIP's Maglev table for this flow and the backend it gives, if any.
///
/// A function of its own in the object (a BPF-to-BPF call, off the hit path): inlined, its
/// copies in every path took the verifier over its million-instruction limit with
/// datapath_log = "debug" once the flow key shrank (`datapath_log_levels_...` in
/// tests/tests/datapath.rs reports the counts).
#[inline(never)]
fn from_table(
    ctx: &XdpContext,
    vip: &VipInfo,
    key: &FlowKey,
    settings: &Settings,
) -> Option<(u32, (u32, Backend))> {
    if vip.table_size == 0 {
        return None;
    }
    let slot = flow_hash(key, settings.hash_seed) % vip.table_size;
    let chunk = TABLES.get(vip.table_base + slot / TABLE_CHUNK)?;
    // `% TABLE_CHUNK` (a power of two) also bounds the index for the verifier.
    let id = chunk.slots[(slot % TABLE_CHUNK) as usize];
    let backend = BACKENDS.get(id)?;
    // A slot can only name one of this VIP's backends; checked all the same, so that a table
    // row left over from another VIP (an id reused too early) never sends its traffic there.
    if backend.flags & BACKEND_F_VALID == 0 || backend.vip != vip.id {
        debug!(
            ctx,
            "VIP id {}: table slot {} names backend {}, not one of its usable backends",
            vip.id,
            slot,
            id
        );
        return None;
    }
    Some((slot, (id, *backend)))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
