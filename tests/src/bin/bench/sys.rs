//! Small system helpers the parts share: CPU pinning, running code inside a network
//! namespace (borrowing from the caller), Ctrl-C as a flag, medians, the date.

use std::{
    fs::{self, File},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Result, bail};

/// Pins the calling thread (and the threads and processes it starts later, which inherit its
/// mask) to one CPU: on 2 vCPUs a migration in the middle of a measurement is a large error.
pub fn pin_to_cpu(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET stays within it for cpu < CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!(
                "sched_setaffinity(CPU {cpu}): {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// CPUs online (nproc), whatever this thread's affinity (available_parallelism honours it,
/// and the benchmarks pin themselves to one CPU).
pub fn online_cpus() -> usize {
    // SAFETY: plain libc query.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(1).max(1)
}

/// The CPU the benchmarks run on: the last one (the first tends to take more interrupts).
pub fn bench_cpu() -> usize {
    online_cpus() - 1
}

/// Runs `f` on a thread that has entered network namespace `ns` (sockets, interface names and
/// ifindexes it uses are that namespace's). Unlike `dsr_lab::lab::in_netns`, `f` may borrow.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).map_err(|e| anyhow::anyhow!("open {path}: {e}"))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: plain syscall on a valid fd; only this new thread changes namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                bail!("setns {path}: {}", std::io::Error::last_os_error());
            }
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread in namespace {ns} panicked"))?
    })
}

/// Network namespaces this process created, deleted on drop (also when unwinding).
pub struct Namespaces(Vec<String>);

impl Namespaces {
    /// Creates the namespaces (removing stale ones of the same name first).
    pub fn create(names: &[&str]) -> Result<Namespaces> {
        let me = Namespaces(names.iter().map(|n| n.to_string()).collect());
        for ns in &me.0 {
            let _ = dsr_lab::lab::sh(&["ip", "netns", "del", ns]);
            dsr_lab::lab::sh(&["ip", "netns", "add", ns])?;
        }
        Ok(me)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = dsr_lab::lab::sh(&["ip", "netns", "del", ns]);
        }
    }
}

/// A directory under the system's temp directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn create(name: &str) -> Result<TempDir> {
        let path = std::env::temp_dir().join(name);
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path)?;
        Ok(TempDir(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Turns Ctrl-C / SIGTERM into a flag that the load loops check, so that an interrupted run
/// still unwinds and removes its namespaces instead of dying with them in place.
pub fn catch_interrupts() {
    let handler: extern "C" fn(libc::c_int) = on_sigint;
    // SAFETY: installing a handler that only stores to an atomic (async-signal-safe).
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
}

/// Fails once Ctrl-C / SIGTERM was received.
pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// Median of the values (mean of the middle two for an even count); NaN if empty.
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Median of integer samples (per-call durations in ns), without copying them into floats.
pub fn median_u32(values: &mut [u32]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let n = values.len();
    let (_, hi, _) = values.select_nth_unstable(n / 2);
    let hi = *hi as f64;
    if n % 2 == 1 {
        hi
    } else {
        let lo = *values[..n / 2].iter().max().expect("n >= 2");
        (lo as f64 + hi) / 2.0
    }
}

/// Mean of the middle half of the samples: as robust to outliers as a median, but it
/// resolves differences finer than the samples' step (the kernel's clock here moves in ~10 ns
/// steps, so per-call medians are quantized). NaN if empty.
pub fn interquartile_mean(values: &mut [u32]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_unstable();
    let n = values.len();
    let middle = &values[n / 4..n - n / 4];
    middle.iter().map(|&v| v as f64).sum::<f64>() / middle.len() as f64
}

/// Current UTC date and time, `YYYY-MM-DD HH:MM UTC`.
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86400, secs % 86400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// Days since 1970-01-01 -> (year, month, day), Howard Hinnant's `civil_from_days`.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median_u32(&mut [5, 1, 9, 3]), 4.0);
        assert_eq!(median_u32(&mut [5, 1, 9]), 5.0);
        assert_eq!(interquartile_mean(&mut [100, 1, 2, 3, 4, 0, 7, 5]), 3.5);
    }
}
