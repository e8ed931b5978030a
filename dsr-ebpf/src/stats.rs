//! Per-CPU counters; userspace sums the CPUs.

use dsr_common::{Counter, Event, Reason};

use crate::maps::{BACKEND_STATS, EVENT_STATS, REASON_STATS, VIP_STATS};

#[inline(always)]
fn add(counter: Option<*mut Counter>, len: usize) {
    if let Some(c) = counter {
        // SAFETY: a per-CPU element is only touched by this CPU, and this program does not
        // run nested on one CPU.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += len as u64;
        }
    }
}

#[inline(always)]
pub fn count_reason(reason: Reason, len: usize) {
    add(REASON_STATS.get_ptr_mut(reason as u32), len);
}

#[inline(always)]
pub fn count_vip(id: u32, len: usize) {
    add(VIP_STATS.get_ptr_mut(id), len);
}

#[inline(always)]
pub fn count_backend(id: u32, len: usize) {
    add(BACKEND_STATS.get_ptr_mut(id), len);
}

/// A new flow placed by the Maglev table on backend `backend` of VIP `vip`.
#[inline(always)]
pub fn count_new_flow(vip: u32, backend: u32) {
    // SAFETY: per-CPU elements, see add().
    if let Some(c) = VIP_STATS.get_ptr_mut(vip) {
        unsafe { (*c).flows += 1 };
    }
    if let Some(c) = BACKEND_STATS.get_ptr_mut(backend) {
        unsafe { (*c).flows += 1 };
    }
}

#[inline(always)]
pub fn count_event(event: Event) {
    if let Some(c) = EVENT_STATS.get_ptr_mut(event as u32) {
        // SAFETY: per-CPU elements, see add().
        unsafe { *c += 1 };
    }
}
