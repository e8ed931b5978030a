//! `dsr trace`: the decision for one frame, offered to userspace through the TRACE ring
//! while SETTINGS.trace is set.
//!
//! The forwarding code notes what it learns in [`Notes`], a per-CPU map value; the record is
//! built by a program of its own, `dsr_trace`, reached by a tail call. Both choices keep the
//! verifier's work flat: it checks `dsr_trace` once, not once per path through the forwarding
//! code, and it does not track map memory, so the notes do not keep it from merging paths.
//! (Notes on the stack read by an inline record builder took the program over the verifier's
//! million-instruction limit.)

use aya_ebpf::{
    bindings::xdp_action, helpers::bpf_ktime_get_ns, macros::xdp, programs::XdpContext,
};
use dsr_common::{Event, TRACE_F_FLOW, TraceRecord, parse};

use crate::{
    headers::Xdp,
    maps::{TRACE, TRACE_FILTER, TRACE_NOTES, TRACE_PROG},
    stats,
};

/// What the decision learnt about the frame this CPU is handling.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Notes {
    /// SETTINGS.trace, as the forwarding code read it.
    pub tracing: u32,
    /// `TRACE_F_*` besides `TRACE_F_FLOW` (which `dsr_trace` finds by parsing the frame).
    pub flags: u32,
    pub vip: u32,
    pub backend: u32,
    pub slot: u32,
    pub reason: u32,
    pub action: u32,
    pub len: u32,
    /// The destination MAC the frame arrived with (forwarding rewrites it).
    pub dst_mac: [u8; 6],
}

/// This CPU's notes, cleared for a new frame. `None` cannot happen (index 0 of a per-CPU
/// array).
#[inline(always)]
pub fn notes() -> Option<&'static mut Notes> {
    let notes = TRACE_NOTES.get_ptr_mut(0)?;
    // SAFETY: a per-CPU element, only touched by this CPU (see stats::add).
    let notes = unsafe { &mut *notes };
    notes.tracing = 0;
    notes.flags = 0;
    Some(notes)
}

/// Hands the frame to `dsr_trace`, which returns `action` in our place. Returns `action`
/// itself if the tail call cannot be made (the trace program's daemon is gone).
#[inline(always)]
pub fn hand_over(ctx: &XdpContext, notes: &mut Notes, reason: u32, action: u32, len: usize) -> u32 {
    notes.reason = reason;
    notes.action = action;
    notes.len = len as u32;
    // SAFETY: a tail call only returns if it failed.
    unsafe { TRACE_PROG.tail_call(ctx, 0) };
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
    let mut record = TraceRecord {
        // SAFETY: a helper without arguments.
        time_ns: unsafe { bpf_ktime_get_ns() },
        flags: notes.flags,
        reason: notes.reason,
        action: notes.action,
        ifindex: ctx.ingress_ifindex() as u32,
        vip: notes.vip,
        backend: notes.backend,
        slot: notes.slot,
        len: notes.len,
        dst_mac: notes.dst_mac,
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
