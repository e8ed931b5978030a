//! The real `dsr` daemon in a network namespace, as the benchmarks drive it: started with a
//! config, talked to over its control socket, stopped with `stop` (which removes its data
//! path: SIGTERM would leave the program pinned and attached). Whatever happens, dropping it
//! kills the process and removes its pinned instance, so no XDP program outlives a run.

use std::{
    fs::{self, File},
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use dsr::control::{Request, Response};

use crate::sys::check_interrupted;

pub struct DsrProcess {
    child: Option<Child>,
    instance: String,
    socket: PathBuf,
    log: PathBuf,
}

impl DsrProcess {
    /// Starts `dsr run --config CONFIG` with only the network namespace switched (so that it
    /// sees the host's bpffs), logging to `log`; returns once its control socket is up.
    /// `instance` and `socket` must be what the config says.
    pub fn start(
        ns: &str,
        config: &Path,
        instance: &str,
        socket: &Path,
        log: &Path,
    ) -> Result<DsrProcess> {
        let bin = dsr_lab::lab::dsr_bin();
        let f = File::create(log)?;
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .arg(&bin)
            .args(["run", "--config"])
            .arg(config)
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut p = DsrProcess {
            child: Some(child),
            instance: instance.to_owned(),
            socket: socket.to_owned(),
            log: log.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if UnixStream::connect(&p.socket).is_ok() {
                return Ok(p);
            }
            if let Some(status) = p.child.as_mut().expect("running").try_wait()? {
                bail!("dsr exited with {status}:\n{}", p.log_text());
            }
            if Instant::now() > deadline {
                bail!("dsr did not start within 15 s:\n{}", p.log_text());
            }
            check_interrupted()?;
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One request over the control socket (JSON lines), and the daemon's answer.
    pub fn call(&self, request: &Request) -> Result<Response> {
        let mut stream = UnixStream::connect(&self.socket)
            .with_context(|| format!("connecting to {}", self.socket.display()))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut line = serde_json::to_vec(request)?;
        line.push(b'\n');
        stream.write_all(&line)?;
        let mut answer = String::new();
        BufReader::new(stream)
            .read_line(&mut answer)
            .with_context(|| format!("no answer from dsr to {request:?}"))?;
        serde_json::from_str(answer.trim())
            .with_context(|| format!("answer from dsr to {request:?}: {answer:?}"))
    }

    /// `stop` with clean = true (the daemon detaches and removes its pinned data path), then
    /// waits for the process to exit and checks that its pinned instance is gone.
    pub fn stop(mut self) -> Result<()> {
        // The daemon may exit before its answer is written (the answer then is empty): what
        // counts is that it exits cleanly and leaves nothing pinned.
        if let Ok(answer) = self.call(&Request::Stop { clean: true })
            && !answer.ok
        {
            bail!("dsr refused to stop: {}", answer.message);
        }
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    bail!("dsr exited with {status} on stop:\n{}", self.log_text());
                }
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("dsr did not exit within 10 s of stop");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let pins = dsr::datapath::pin_dir(&self.instance);
        if pins.exists() {
            bail!("dsr stop left its data path pinned in {}", pins.display());
        }
        Ok(())
    }
}

/// `dsr run` must be the release binary of this tree: build it (a no-op when up to date)
/// unless DSR_BIN names one.
pub fn ensure_binary() -> Result<()> {
    if let Some(bin) = std::env::var_os("DSR_BIN") {
        let bin = PathBuf::from(bin);
        if !bin.exists() {
            bail!("DSR_BIN={} does not exist", bin.display());
        }
        return Ok(());
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin = root.join("target/release/dsr");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let built = Command::new(&cargo)
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "dsr-userspace",
            "--bin",
            "dsr",
        ])
        .status();
    match built {
        Ok(s) if s.success() => {}
        _ if bin.exists() => eprintln!(
            "warning: could not rebuild {} with cargo; using the one there",
            bin.display()
        ),
        _ => bail!(
            "{} is missing and `cargo build --release -p dsr-userspace --bin dsr` failed; \
             build it, or set DSR_BIN",
            bin.display()
        ),
    }
    // SAFETY: no other thread of this process is running (parts run one after the other on
    // the main thread, and their helper threads have been joined); start() reads it later.
    unsafe { std::env::set_var("DSR_BIN", &bin) };
    Ok(())
}

impl Drop for DsrProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Killed (or stopped uncleanly): the data path may still be pinned and attached.
        let _ = dsr::datapath::remove_pinned(&dsr::datapath::pin_dir(&self.instance));
    }
}
