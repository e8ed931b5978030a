//! Whether each VIP should be announced (its VRRP instance held, its route offered), told to
//! keepalived or a routing daemon through one file per VIP that dsr rewrites every second.
//!
//! A VIP is announced while it is not drained (`dsr vip drain`) and at least `min_usable` of
//! its backends take new flows. The file, `<state_dir>/announce/<VIP name>`, holds `0` when
//! the VIP is announced and `1` when not: keepalived's `track_file` convention (with
//! `weight 0`, a non-zero value puts the instance in FAULT). Its modification time is the
//! heartbeat: `dsr announce-check FILE --grace 10s` (a keepalived `track_script`, or a
//! routing daemon's watchdog) fails when the file says withdrawn or when dsr has not
//! refreshed it within the grace, so a dead daemon is withdrawn without its help. SIGTERM
//! leaves the files (a restart within the grace changes nothing); `dsr stop` withdraws at once.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::{
    runtime::state::{State, Vip},
    spec::model::{AnnounceGroup, Require},
};

/// Backends that take the VIP's new flows now.
pub fn usable(vip: &Vip) -> u32 {
    vip.serving().1.len() as u32
}

pub fn announced(vip: &Vip) -> bool {
    !vip.spec.drained && usable(vip) >= vip.spec.min_usable
}

pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("announce")
}

/// The file of a VIP (its name, with anything but letters, digits, `.`, `-` and `_` as `_`).
pub fn file(state_dir: &Path, name: &str) -> PathBuf {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    dir(state_dir).join(safe)
}

/// Whether a group is announced: any or all of its VIPs (a VIP that no longer exists counts
/// as withdrawn).
pub fn group_announced(group: &AnnounceGroup, state: &State) -> bool {
    let mut each = group.vips.iter().map(|name| {
        state
            .vips
            .iter()
            .find(|v| &v.spec.name == name)
            .is_some_and(announced)
    });
    match group.require {
        Require::All => each.all(|a| a),
        Require::Any => each.any(|a| a),
    }
}

/// The file of an announcement group: `<state_dir>/announce/groups/<name>`.
pub fn group_file(state_dir: &Path, name: &str) -> PathBuf {
    dir(state_dir).join("groups").join(name)
}

/// Writes every VIP's and group's file (the heartbeat), withdrawn for all with
/// `withdraw_all`, and removes the files of VIPs and groups that are gone.
pub fn write_all(
    state_dir: &Path,
    state: &State,
    groups: &[AnnounceGroup],
    withdraw_all: bool,
) -> Result<()> {
    let dir = dir(state_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut wanted = Vec::new();
    for vip in &state.vips {
        let path = file(state_dir, &vip.spec.name);
        let value = if !withdraw_all && announced(vip) {
            "0\n"
        } else {
            "1\n"
        };
        put(&path, value)?;
        wanted.push(path);
    }
    let groups_dir = dir.join("groups");
    std::fs::create_dir_all(&groups_dir)?;
    for g in groups {
        let path = group_file(state_dir, &g.name);
        let value = if !withdraw_all && group_announced(g, state) {
            "0\n"
        } else {
            "1\n"
        };
        put(&path, value)?;
        wanted.push(path);
    }
    for d in [&dir, &groups_dir] {
        for entry in std::fs::read_dir(d)? {
            let path = entry?.path();
            if path.is_file() && !wanted.contains(&path) {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    Ok(())
}

/// Writes `value` into `path`, or, when it holds `value` already, only refreshes its
/// modification time (the heartbeat): that needs no disk space, so a full state directory
/// does not withdraw a VIP once the grace is over.
fn put(path: &Path, value: &str) -> Result<()> {
    if std::fs::read_to_string(path).is_ok_and(|v| v == value) {
        return std::fs::File::options()
            .write(true)
            .open(path)
            .and_then(|f| f.set_modified(std::time::SystemTime::now()))
            .with_context(|| format!("refreshing {}", path.display()));
    }
    super::write_atomic(path, value)
}

/// `dsr announce-check`: whether the file says announced and is fresher than `grace`.
pub fn check(path: &Path, grace: Duration) -> Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let age = std::fs::metadata(path)?
        .modified()?
        .elapsed()
        .unwrap_or(Duration::ZERO);
    if text.trim() != "0" {
        bail!(
            "{}: withdrawn (no usable backends, or drained, or dsr stopped)",
            path.display()
        );
    }
    if age > grace {
        bail!(
            "{}: not refreshed for {:.1}s (grace {:?}): the dsr daemon is gone",
            path.display(),
            age.as_secs_f64(),
            grace
        );
    }
    Ok(())
}

/// `dsr announce-watch`: runs `on_announce` or `on_withdraw` (by `sh -c`) at start and at
/// every change of [`check`]'s verdict, reading the file every `interval`. A command that
/// fails is run again at the next read, until it succeeds. Runs until killed.
pub fn watch(
    path: &Path,
    grace: Duration,
    interval: Duration,
    on_announce: &str,
    on_withdraw: &str,
) -> ! {
    // What the last successful command made true; None until one succeeded.
    let mut done: Option<bool> = None;
    loop {
        let verdict = check(path, grace);
        let announce = verdict.is_ok();
        if done != Some(announce) {
            let (what, cmd) = if announce {
                ("announced", on_announce)
            } else {
                ("withdrawn", on_withdraw)
            };
            match verdict {
                Ok(()) => log::info!("{}: {what}: running {cmd:?}", path.display()),
                Err(e) => log::warn!("{e:#}: running {cmd:?}"),
            }
            match std::process::Command::new("sh").arg("-c").arg(cmd).status() {
                Ok(status) if status.success() => done = Some(announce),
                Ok(status) => log::error!("{cmd:?} failed ({status}); retrying in {interval:?}"),
                Err(e) => log::error!("running {cmd:?}: {e}; retrying in {interval:?}"),
            }
        }
        std::thread::sleep(interval);
    }
}
