//! What `dsr run` needs from the kernel, checked before anything is touched so that a daemon
//! started with too little is refused with the remedy rather than failing half-way.
//!
//! Measured with the real daemon under `setpriv` (tests/tests/privilege.rs): it runs as any
//! uid with CAP_BPF (maps, program load), CAP_PERFMON (the verifier rejects dsr's program
//! without it: packet-pointer arithmetic is only allowed to "perfmon-capable" loaders) and
//! CAP_NET_ADMIN (XDP attach, netlink neighbour and route requests, ethtool features).
//! CAP_SYS_ADMIN stands in for the first two, as the kernel has it.

use anyhow::{Result, bail};

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The effective capability set of this process (from /proc/self/status).
pub fn effective() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .unwrap_or(0)
}

pub fn has(cap: u32) -> bool {
    effective() & (1 << cap) != 0
}

/// Refuses, naming what is missing and how to grant it, unless the process may run the data
/// path.
pub fn check_for_run() -> Result<()> {
    let sys_admin = has(CAP_SYS_ADMIN);
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !sys_admin {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) && !sys_admin {
        missing.push("CAP_PERFMON");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if !missing.is_empty() {
        bail!(
            "dsr run needs CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (or root); missing {}. Run \
             it as root, or grant them, e.g. in the unit: AmbientCapabilities=CAP_BPF \
             CAP_PERFMON CAP_NET_ADMIN (see dist/dsr.service); nothing was changed",
            missing.join(", ")
        );
    }
    Ok(())
}

/// Whether this process may mount bpffs itself.
pub fn may_mount() -> bool {
    has(CAP_SYS_ADMIN)
}
