//! Who is VRRP master, for instances with a virtual MAC (keepalived `use_vmac`).
//!
//! Neither the vmac interface nor the VIP address says so: both survive a keepalived killed
//! with SIGKILL. Master means keepalived is alive and its last notify said MASTER for the
//! instance. keepalived's `notify` runs `dsr vrrp-notify`, which records the state and
//! keepalived's pid in `<state_dir>/vrrp/<group>` (a file, so a notify while dsr restarts is
//! not lost) and then asks the daemon to act on it at once.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The record of a group's instance: `<state_dir>/vrrp/<group>`.
pub fn file(state_dir: &Path, group: &str) -> PathBuf {
    state_dir.join("vrrp").join(group)
}

/// The states keepalived's notify reports for an instance.
pub const STATES: [&str; 5] = ["MASTER", "BACKUP", "FAULT", "STOP", "DELETED"];

/// Records `state` (one of [`STATES`]) reported by the keepalived process `pid`.
pub fn record(state_dir: &Path, group: &str, state: &str, pid: u32) -> Result<()> {
    if !STATES.contains(&state) {
        bail!("VRRP state {state:?}: one of {}", STATES.join(", "));
    }
    let path = file(state_dir, group);
    let dir = path.parent().unwrap();
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    super::write_atomic(&path, format!("{state} {pid}\n"))
}

/// Whether this node is master of the group's instance, and why (or why not).
pub fn master(state_dir: &Path, group: &str) -> (bool, String) {
    let path = file(state_dir, group);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return (false, "keepalived has not notified a state".into());
    };
    let mut words = text.split_whitespace();
    let (Some(state), Some(pid)) = (words.next(), words.next().and_then(|p| p.parse().ok())) else {
        return (false, format!("{} is not a VRRP record", path.display()));
    };
    if !is_keepalived(pid) {
        return (
            false,
            format!("keepalived (pid {pid}) is gone, its last state was {state}"),
        );
    }
    (
        state == "MASTER",
        format!("keepalived (pid {pid}) says {state}"),
    )
}

/// The name and parent of process `pid`, from /proc/PID/stat.
fn comm_and_parent(pid: u32) -> Option<(String, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "PID (COMM) STATE PPID ...": COMM may hold spaces and parentheses.
    let (head, tail) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_owned();
    let ppid = tail.split_whitespace().nth(1)?.parse().ok()?;
    Some((comm, ppid))
}

/// A live keepalived process (a zombie is dead: killed, not yet reaped).
fn is_keepalived(pid: u32) -> bool {
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, t)| t.trim_start().starts_with('Z'))
        })
        .unwrap_or(true);
    !zombie && comm_and_parent(pid).is_some_and(|(comm, _)| comm.starts_with("keepalived"))
}

/// The keepalived process that runs us (the notify script), through any shells between.
pub fn keepalived_ancestor() -> Option<u32> {
    let mut pid = std::os::unix::process::parent_id();
    for _ in 0..8 {
        let (comm, parent) = comm_and_parent(pid)?;
        if comm.starts_with("keepalived") {
            return Some(pid);
        }
        pid = parent;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_needs_the_state_and_a_live_keepalived() {
        let dir = std::env::temp_dir().join(format!("dsr-vrrp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(!master(&dir, "VI_1").0);
        assert!(record(&dir, "VI_1", "LEADER", 1).is_err());
        // pid 1 is not keepalived here: its MASTER does not count.
        record(&dir, "VI_1", "MASTER", 1).unwrap();
        let (m, why) = master(&dir, "VI_1");
        assert!(!m && why.contains("gone"), "{why}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn comm_with_spaces_and_parentheses_is_read() {
        let (comm, _) = comm_and_parent(std::process::id()).unwrap();
        assert!(!comm.is_empty());
    }
}
