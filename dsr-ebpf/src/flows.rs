//! Connection tracking: the backend each flow was given, so that it keeps it while the Maglev
//! table changes (a backend drains, another is added).

use aya_ebpf::{helpers::bpf_ktime_get_coarse_ns, programs::XdpContext};
use aya_log_ebpf::warn;
use dsr_common::{
    Event, FLOW_F_CLOSING, FLOW_REFRESH_NS, FlowEntry, FlowMapKey,
    parse::{TCP_FIN, TCP_RST, TCP_SYN},
};

use crate::{maps::FLOWS, stats};

/// Coarse monotonic clock (jiffies resolution is plenty for idle timeouts, and it is the
/// cheapest clock a BPF program can read).
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// The backend an established flow was given, unless it has been idle longer than `idle_ns`.
/// `tcp_flags` (0 but for TCP): a FIN or RST marks the entry closing, a SYN clears the mark.
#[inline(always)]
pub fn established(key: &FlowMapKey, now: u64, idle_ns: u64, tcp_flags: u8) -> Option<u32> {
    let entry = FLOWS.get_ptr_mut(key)?;
    // SAFETY: LRU values are plain data. Two CPUs may refresh the same entry at once; both
    // write a current time, so the race is harmless.
    unsafe {
        let last = (*entry).last_seen_ns;
        let idle = now.saturating_sub(last);
        if idle > idle_ns {
            return None;
        }
        if idle > FLOW_REFRESH_NS {
            (*entry).last_seen_ns = now;
        }
        // Written only when it changes: an unchanged flag costs no store on the hit path.
        let flags = (*entry).flags;
        if tcp_flags & (TCP_FIN | TCP_RST) != 0 {
            if flags & FLOW_F_CLOSING == 0 {
                (*entry).flags = flags | FLOW_F_CLOSING;
            }
        } else if tcp_flags & TCP_SYN != 0 && flags & FLOW_F_CLOSING != 0 {
            (*entry).flags = flags & !FLOW_F_CLOSING;
        }
        Some((*entry).backend)
    }
}

/// Records the backend a new flow was given. A full table evicts its least recently used
/// flow; a failed insert (counted) only means the next packet is placed by the table again.
#[inline(always)]
pub fn remember(ctx: &XdpContext, key: &FlowMapKey, backend: u32, now: u64) {
    let entry = FlowEntry {
        backend,
        flags: 0,
        last_seen_ns: now,
    };
    if let Err(e) = FLOWS.insert(key, &entry, 0) {
        stats::count_event(Event::FlowInsertFailed);
        warn!(
            ctx,
            "flow table insert failed (error {}): VIP id {}'s flow will be placed by its table again",
            e,
            key.vip
        );
    }
}
