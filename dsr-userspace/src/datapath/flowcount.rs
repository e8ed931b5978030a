//! How full the flow table is, and how many flows each VIP and backend holds (what
//! `ipvsadm -Ln` calls active connections). An LRU hash does not count its entries, so they
//! are walked: with BPF_MAP_LOOKUP_BATCH, thousands per system call (aya 0.14 has no batch
//! wrapper), on a descriptor of its own so the walk can run off the daemon's loop.

use std::{
    collections::HashMap,
    os::fd::{AsRawFd, OwnedFd},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Result, bail};
use dsr_common::{FLOW_F_CLOSING, FlowEntry, FlowMapKey};

/// Entries fetched per system call.
const BATCH: usize = 1024;

/// A clock's reading in nanoseconds.
pub fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CLOCK_MONOTONIC_COARSE, the data path's clock for flow entries.
pub fn coarse_now_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC_COARSE)
}

/// What one walk found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowCount {
    /// Entries of flows seen within the idle timeout.
    pub live: u64,
    /// Entries of idle flows: the data path treats their next packet as a new flow, and the
    /// LRU reuses them first.
    pub expired: u64,
    /// Live entries per VIP id and per backend id, closing ones left out (ipvsadm's active
    /// connections).
    pub per_vip: HashMap<u32, u64>,
    pub per_backend: HashMap<u32, u64>,
    /// Live entries of TCP flows whose FIN or RST was seen (still forwarding; ipvsadm's
    /// inactive connections), in all and per backend id.
    pub closing: u64,
    pub closing_per_backend: HashMap<u32, u64>,
    pub at: Option<SystemTime>,
    pub took: Duration,
}

/// Walks FLOWS on a descriptor of its own.
pub struct FlowCounter {
    pub(super) fd: OwnedFd,
    pub(super) idle_ns: u64,
}

impl FlowCounter {
    /// One walk of the whole table.
    pub fn count(&self) -> Result<FlowCount> {
        let started = Instant::now();
        let mut count = FlowCount::default();
        self.walk(|k, v, live| {
            if !live {
                count.expired += 1;
                return;
            }
            count.live += 1;
            if v.flags & FLOW_F_CLOSING != 0 {
                count.closing += 1;
                *count.closing_per_backend.entry(v.backend).or_default() += 1;
                return;
            }
            *count.per_vip.entry(k.vip).or_default() += 1;
            *count.per_backend.entry(v.backend).or_default() += 1;
        })?;
        count.at = Some(SystemTime::now());
        count.took = started.elapsed();
        Ok(count)
    }

    /// The live entries (seen within the idle timeout), for the flow-state exchange.
    pub fn live_entries(&self) -> Result<Vec<(FlowMapKey, FlowEntry)>> {
        let mut out = Vec::new();
        self.walk(|k, v, live| {
            if live {
                out.push((*k, *v));
            }
        })?;
        Ok(out)
    }

    /// Hands every entry to `visit` with whether it is live.
    fn walk(&self, mut visit: impl FnMut(&FlowMapKey, &FlowEntry, bool)) -> Result<()> {
        let now = coarse_now_ns();
        let mut keys = vec![FlowMapKey::default(); BATCH];
        let mut values = vec![FlowEntry::default(); BATCH];
        // The batch token (a bucket index for hash maps), in and out.
        let (mut token, mut next) = (0u64, 0u64);
        let mut first = true;
        loop {
            // union bpf_attr, batch variant: in_batch, out_batch, keys, values (u64 each),
            // count, map_fd (u32 each), elem_flags, flags (u64 each).
            let mut attr = [0u64; 8];
            attr[0] = if first {
                0
            } else {
                &mut token as *mut u64 as u64
            };
            attr[1] = &mut next as *mut u64 as u64;
            attr[2] = keys.as_mut_ptr() as u64;
            attr[3] = values.as_mut_ptr() as u64;
            attr[4] = BATCH as u64 | (self.fd.as_raw_fd() as u64) << 32;
            const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
            // SAFETY: the bpf syscall with a valid attr whose pointers address buffers of
            // BATCH keys and values of the map's own key and value types.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    BPF_MAP_LOOKUP_BATCH,
                    attr.as_mut_ptr(),
                    64usize,
                )
            };
            let err = std::io::Error::last_os_error();
            let got = (attr[4] & 0xffff_ffff) as usize;
            for (k, v) in keys.iter().zip(&values).take(got.min(BATCH)) {
                visit(k, v, now.saturating_sub(v.last_seen_ns) <= self.idle_ns);
            }
            if rc != 0 {
                match err.raw_os_error() {
                    // The end of the table.
                    Some(libc::ENOENT) => break,
                    _ => bail!("walking the flow table (BPF_MAP_LOOKUP_BATCH): {err}"),
                }
            }
            token = next;
            first = false;
        }
        Ok(())
    }
}

/// Enters flow entries learnt from a peer, on a descriptor of its own.
pub struct FlowAdopter {
    pub(super) flows: aya::maps::HashMap<aya::maps::MapData, FlowMapKey, FlowEntry>,
    pub(super) idle_ns: u64,
}

/// What [`FlowAdopter::adopt`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Adopted {
    /// A new entry (or one that had idled out here).
    New,
    /// The same flow on the same backend: refreshed, so that it does not idle out here
    /// while the peer carries it.
    Refreshed,
    /// This node holds the flow, live, on another backend: its own decision stands.
    Kept,
}

impl FlowAdopter {
    /// Enters `key` -> `backend`, now.
    pub fn adopt(&mut self, key: &FlowMapKey, backend: u32) -> Result<Adopted> {
        const BPF_ANY: u64 = 0;
        const BPF_NOEXIST: u64 = 1;
        let now = coarse_now_ns();
        let mut entry = FlowEntry {
            backend,
            flags: 0,
            last_seen_ns: now,
        };
        let (flags, outcome) = match self.flows.get(key, 0) {
            Err(aya::maps::MapError::KeyNotFound) => (BPF_NOEXIST, Adopted::New),
            Err(e) => return Err(e.into()),
            Ok(held) if held.backend == backend => {
                // A refresh keeps what this node saw of the flow (its FIN: closing).
                entry.flags = held.flags;
                (BPF_ANY, Adopted::Refreshed)
            }
            Ok(held) if now.saturating_sub(held.last_seen_ns) > self.idle_ns => {
                (BPF_ANY, Adopted::New)
            }
            Ok(_) => return Ok(Adopted::Kept),
        };
        match self.flows.insert(key, entry, flags) {
            Ok(()) => Ok(outcome),
            // The data path entered the flow meanwhile: its decision stands.
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::EEXIST) =>
            {
                Ok(Adopted::Kept)
            }
            Err(e) => Err(e.into()),
        }
    }
}
