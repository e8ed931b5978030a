//! One daemon per instance, and where commands find it.
//!
//! `dsr run` takes an exclusive lock on `/run/dsr/<instance>.lock` before it touches any map,
//! pin, program or state file, so a second daemon for the same instance exits having changed
//! nothing. The lock file stays when the daemon ends: the lock, not the file, says that a
//! daemon runs, and deleting it would let a starting daemon lock a file that is then
//! unlinked while a third one creates and locks a new one. Once its control socket is up, the daemon records where it is in
//! `/run/dsr/<instance>.json`, so that `dsr status --instance NAME` finds a daemon whose
//! `control_socket` is not the default.

use std::{
    fs::{File, OpenOptions},
    io::{Read, Seek, Write},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// Where locks and records live (tmpfs: gone at boot, like the daemons they describe).
pub const RUN_DIR: &str = "/run/dsr";

/// Held for the daemon's lifetime; the kernel releases it when the process ends, however
/// it ends.
pub struct Lock {
    _file: File,
}

pub fn lock_path(instance: &str) -> PathBuf {
    Path::new(RUN_DIR).join(format!("{instance}.lock"))
}

/// Takes the instance's lock, or says which process holds it.
pub fn lock(instance: &str) -> Result<Lock> {
    std::fs::create_dir_all(RUN_DIR).with_context(|| format!("creating {RUN_DIR}"))?;
    let path = lock_path(instance);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on a file descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            bail!(
                "a dsr daemon for instance {instance:?} is already running (pid {}, lock {}); \
                 nothing was changed. Use `dsr reload` to apply a new config, or `dsr stop` first",
                pid.trim(),
                path.display()
            );
        }
        return Err(err).with_context(|| format!("locking {}", path.display()));
    }
    file.set_len(0)?;
    file.rewind()?;
    write!(file, "{}", std::process::id())?;
    Ok(Lock { _file: file })
}

/// Whether the instance's daemon runs (answering or not): the pid its lock file names is
/// alive. Read without taking the lock, so that asking can never make a starting daemon
/// find its lock taken.
pub fn locked(instance: &str) -> bool {
    std::fs::read_to_string(lock_path(instance))
        .ok()
        .and_then(|pid| pid.trim().parse::<u32>().ok())
        .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

/// Where a running daemon can be reached.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    pub pid: u32,
    pub config: PathBuf,
    pub control_socket: PathBuf,
    pub state_dir: PathBuf,
}

fn record_path(instance: &str) -> PathBuf {
    Path::new(RUN_DIR).join(format!("{instance}.json"))
}

pub fn write_record(instance: &str, record: &Record) -> Result<()> {
    super::write_atomic(&record_path(instance), serde_json::to_vec_pretty(record)?)
}

/// The record of the instance's daemon, if one was written and the daemon still holds its
/// lock.
pub fn read_record(instance: &str) -> Option<Record> {
    let text = std::fs::read_to_string(record_path(instance)).ok()?;
    serde_json::from_str(&text).ok()
}

pub fn remove_record(instance: &str) {
    let _ = std::fs::remove_file(record_path(instance));
}
