//! `dsr trace`: the decision for one frame, offered to userspace through the TRACE ring
//! while SETTINGS.trace is set.
//!
//! The forwarding code notes what it learns in [`Seen`] (a few words on the stack, read by
//! nothing on its way); only while tracing are they copied to this CPU's TRACE_NOTES and a
//! tail call made to `dsr_trace`, a program of its own that builds, filters and writes the
//! record. The verifier checks `dsr_trace` once, not once per path through the forwarding
//! code, and nothing on those paths branches on what was noted, so it still merges them.
//! (A record builder inline, branching on the notes, took the program over the verifier's
//! million-instruction limit.)

use aya_ebpf::{
    bindings::xdp_action, helpers::bpf_ktime_get_ns, macros::xdp, programs::XdpContext,
};
use dsr_common::{Event, TRACE_F_FLOW, TraceRecord, headers::EthHdr, parse};

use crate::{
    headers::{Xdp, read_at},
    maps::{IFACES, TRACE, TRACE_FILTER, TRACE_NOTES, TRACE_PROG},
    stats,
};

/// What the forwarding code learnt about the frame.
#[derive(Clone, Copy, Default)]
pub struct Seen {
    /// SETTINGS.trace, as the forwarding code read it.
    pub tracing: u32,
    /// `TRACE_F_*` besides `TRACE_F_FLOW` (which `dsr_trace` finds by parsing the frame).
    pub flags: u32,
    pub vip: u32,
    pub backend: u32,
    pub slot: u32,
}

/// What `dsr` hands `dsr_trace` (per CPU: the tail call runs at once on the same CPU).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Notes {
    pub flags: u32,
    pub vip: u32,
    pub backend: u32,
    pub slot: u32,
    pub reason: u32,
    pub action: u32,
    pub len: u32,
}

/// Hands the frame to `dsr_trace`, which returns `action` in our place. Returns `action`
/// itself if the tail call cannot be made (the trace program's daemon is gone).
#[inline(always)]
pub fn hand_over(ctx: &XdpContext, seen: &Seen, reason: u32, action: u32, len: usize) -> u32 {
    if let Some(notes) = TRACE_NOTES.get_ptr_mut(0) {
        // SAFETY: a per-CPU element, only touched by this CPU (see stats::add); a tail call
        // only returns if it failed.
        unsafe {
            *notes = Notes {
                flags: seen.flags,
                vip: seen.vip,
                backend: seen.backend,
                slot: seen.slot,
                reason,
                action,
                len: len as u32,
            };
            TRACE_PROG.tail_call(ctx, 0);
        }
    }
    action
}

#[xdp]
pub fn dsr_trace(ctx: XdpContext) -> u32 {
    let Some(notes) = TRACE_NOTES.get(0).copied() else {
        return xdp_action::XDP_PASS;
    };
    emit(&ctx, &notes);
    notes.action
}

/// Writes the record, if the filter admits it. A full ring loses the record (counted),
/// never the frame.
#[inline(always)]
fn emit(ctx: &XdpContext, notes: &Notes) {
    let ifindex = ctx.ingress_ifindex() as u32;
    let forwarded = notes.action == xdp_action::XDP_TX || notes.action == xdp_action::XDP_REDIRECT;
    // Forwarding rewrote the MACs: such a frame was addressed to this interface.
    let dst_mac = match (forwarded, read_at::<EthHdr>(ctx, 0)) {
        (false, Some(eth)) => eth.dst,
        _ => IFACES.get(ifindex).map_or([0; 6], |i| i.mac),
    };
    let mut record = TraceRecord {
        // SAFETY: a helper without arguments.
        time_ns: unsafe { bpf_ktime_get_ns() },
        flags: notes.flags,
        reason: notes.reason,
        action: notes.action,
        ifindex,
        vip: notes.vip,
        backend: notes.backend,
        slot: notes.slot,
        len: notes.len,
        dst_mac,
        ..TraceRecord::default()
    };
    // Forwarding rewrote only the MACs: the headers parse as they arrived.
    if let Ok(packet) = parse::parse(&Xdp(ctx)) {
        record.flags |= TRACE_F_FLOW;
        record.flow = packet.key;
        record.vlan = packet.vlan;
        record.tcp_flags = packet.tcp_flags;
    }
    if let Some(filter) = TRACE_FILTER.get(0)
        && !filter.admits(&record)
    {
        return;
    }
    if TRACE.output::<TraceRecord>(&record, 0).is_err() {
        stats::count_event(Event::TraceLost);
    }
}
