//! `cargo xtask`: the project's task runner (build, test, run, bench).
//!
//! Every command first runs [`bootstrap`], which installs what the project needs beyond rustup
//! (Debian's BPF-capable rustc, LLVM 22 + bpf-linker, the namespace-lab tools) and mounts bpffs.
//! It lives here rather than in a script so that the two-command rule holds: on a fresh Debian
//! machine that has only rustup, `cargo xtask test` or `cargo xtask run` gets everything and
//! then does the job. Once everything is in place the bootstrap is only checks (one
//! `dpkg-query`, a few `stat`s), so it costs next to nothing on later runs.
//!
//! Only `anyhow` and `clap` as dependencies, and `std::process::Command` for everything, so
//! xtask itself compiles in seconds.

use std::{
    env,
    ffi::{OsStr, OsString},
    fs,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

/// Debian packages for the BPF toolchain (see PLATFORM.md): rustc 1.96 with a prebuilt `core`
/// for bpfel-unknown-none, and LLVM 22 for building bpf-linker.
const BPF_PACKAGES: [&str; 5] = [
    "rustc-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
];
/// Debian packages the namespace lab uses (util-linux provides nsenter).
const LAB_PACKAGES: [&str; 5] = ["iproute2", "ethtool", "nftables", "procps", "util-linux"];
/// Debian packages other tests run or read: keepalived (the VRRP pair lab, and its sample
/// configs in /usr/share/doc/keepalived/samples for `dsr import keepalived`; its service does
/// not start without an /etc/keepalived/keepalived.conf, the unit's ConditionFileNotEmpty) and
/// bird2 (the BGP ECMP lab; the tests run their own birds in the lab's namespaces) and
/// iputils-arping (the cloud lab's stand-in for a secondary IP moved by the cloud fabric).
const TEST_PACKAGES: [&str; 3] = ["keepalived", "bird2", "iputils-arping"];
/// Debian packages `cargo xtask deb` and its test use: dpkg-dev (dpkg-shlibdeps, for the
/// package's dependencies), binutils (strip), systemd (`systemd-analyze verify` of the unit;
/// systemd need not be running; man-db lets it check the unit's Documentation=man:dsr(1)).
const DEB_PACKAGES: [&str; 4] = ["dpkg-dev", "binutils", "systemd", "man-db"];

/// cargo-fuzz for `cargo xtask fuzz` (builds on stable; run with `-s none`).
const CARGO_FUZZ_VERSION: &str = "0.13.2";
const BPF_LINKER_VERSION: &str = "0.13.0";
/// cargo-deb builds the .deb (3.8.0: rust-version 1.85, builds with the rustup 1.95 here).
const CARGO_DEB_VERSION: &str = "3.8.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPF_RUSTC: &str = "/usr/bin/rustc";
const BPF_RUSTLIB: &str = "/usr/lib/rustlib/bpfel-unknown-none";
const BPFFS: &str = "/sys/fs/bpf";

/// Only buildable for bpfel-unknown-none, so left out of every host build: dsr-userspace's
/// build.rs builds dsr-ebpf (the data path), the tests crate's build.rs dsr-test-ebpf (the
/// test-only programs in tests/ebpf).
const BPF_ONLY_PACKAGES: [&str; 2] = ["dsr-ebpf", "dsr-test-ebpf"];
const USERSPACE_PACKAGE: &str = "dsr-userspace";
const TESTS_PACKAGE: &str = "dsr-tests";

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "dsr project tasks (each one bootstraps the machine first)"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the whole workspace (userspace, tests; the XDP programs through the build.rs of
    /// dsr-userspace and of the tests crate).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build the binaries, then run every test with DSR_BIN pointing at the debug `dsr`.
    Test {
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Run `dsr run --config FILE`, or without a config the namespace-lab demonstration.
    Run {
        /// dsr configuration file; without it the `dsr-demo` lab demonstration runs.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Also accepted after `--`: `cargo xtask run -- --config FILE`.
        #[arg(last = true)]
        rest: Vec<OsString>,
    },
    /// Build the Debian package target/debian/dsr_VERSION_ARCH.deb (release binary, systemd
    /// unit, /etc/dsr/dsr.toml, completions, man page) with cargo-deb.
    Deb,
    /// Differential fuzzing of the data path (`fuzz/`, cargo-fuzz on stable, no sanitizer):
    /// installs cargo-fuzz if missing, seeds the corpus from the hostile-frame generator, runs
    /// for `--seconds`. CI runs a short one.
    Fuzz {
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Extra arguments for libFuzzer (after `--`).
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Run the benchmark binary (`dsr-bench`) with the given arguments.
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("[xtask] error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let x = Xtask::new()?;
    x.bootstrap()?;
    match cli.command {
        Cmd::Build { release } => {
            let mut cmd = x.cargo();
            cmd.args(["build", "--workspace"]).args(exclude_bpf_only());
            if release {
                cmd.arg("--release");
            }
            x.run_checked(&mut cmd)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Test { args } => {
            // The package test (tests/tests/package.rs) runs `cargo xtask deb`.
            x.ensure_cargo_deb()?;
            let mut build = x.cargo();
            build
                .args(["build", "--workspace", "--bins"])
                .args(exclude_bpf_only());
            x.run_checked(&mut build)?;
            let dsr = x.root.join("target/debug/dsr");
            let mut test = x.cargo();
            test.args(["test", "--workspace", "--no-fail-fast"])
                .args(exclude_bpf_only())
                .args(&args)
                .env("DSR_BIN", &dsr);
            println!("[xtask] running the tests with DSR_BIN={}", dsr.display());
            run_tests_with_summary(&mut test)
        }
        Cmd::Run { config, rest } => {
            let config = match (config, parse_run_rest(&rest)?) {
                (Some(_), Some(_)) => bail!("--config given twice"),
                (a, b) => a.or(b),
            };
            x.run_checked(x.cargo().args([
                "build",
                "--release",
                "-p",
                USERSPACE_PACKAGE,
                "--bin",
                "dsr",
            ]))?;
            let dsr = x.root.join("target/release/dsr");
            if let Some(config) = config {
                println!(
                    "[xtask] running dsr in the foreground with {}",
                    config.display()
                );
                let mut cmd = x.command(&dsr);
                cmd.args([
                    OsStr::new("run"),
                    OsStr::new("--config"),
                    config.as_os_str(),
                ]);
                x.run_status(&mut cmd)
            } else {
                println!("[xtask] no --config given: running the namespace-lab demonstration");
                x.run_checked(x.cargo().args([
                    "build",
                    "--release",
                    "-p",
                    TESTS_PACKAGE,
                    "--bin",
                    "dsr-demo",
                ]))?;
                let mut cmd = x.command(x.root.join("target/release/dsr-demo"));
                cmd.env("DSR_BIN", &dsr);
                x.run_status(&mut cmd)
            }
        }
        Cmd::Deb => {
            let deb = x.build_deb()?;
            println!("[xtask] package: {}", deb.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Fuzz { seconds, args } => {
            x.ensure_cargo_fuzz()?;
            let corpus = x.root.join("fuzz/corpus/differential");
            let seeded = fs::read_dir(&corpus).is_ok_and(|mut d| d.next().is_some());
            if !seeded {
                println!(
                    "[xtask] seeding {} from the hostile-frame generator",
                    corpus.display()
                );
                x.run_checked(
                    x.cargo()
                        .args(["test", "-p", TESTS_PACKAGE, "--test", "hostile"])
                        .env("DSR_HOSTILE_SEED", "1")
                        .env("DSR_HOSTILE_FRAMES", "2000")
                        .env("DSR_HOSTILE_CORPUS", &corpus),
                )?;
            }
            let mut cmd = x.cargo();
            cmd.args(["fuzz", "run", "-s", "none", "differential", "--"])
                .arg(format!("-max_total_time={seconds}"))
                .arg("-max_len=1600")
                .args(&args);
            x.run_status(&mut cmd)
        }
        Cmd::Bench { args } => {
            let mut cmd = x.cargo();
            cmd.args([
                "run",
                "--release",
                "-p",
                TESTS_PACKAGE,
                "--bin",
                "dsr-bench",
                "--",
            ])
            .args(&args);
            x.run_status(&mut cmd)
        }
    }
}

/// What `cargo xtask run -- ...` may carry: `--config FILE` or `--config=FILE`.
/// `--exclude P` for every package that only builds for the BPF target.
fn exclude_bpf_only() -> Vec<&'static str> {
    BPF_ONLY_PACKAGES
        .iter()
        .flat_map(|p| ["--exclude", p])
        .collect()
}

fn parse_run_rest(rest: &[OsString]) -> Result<Option<PathBuf>> {
    let mut config = None;
    let mut it = rest.iter();
    while let Some(arg) = it.next() {
        let s = arg.to_string_lossy();
        let value = if s == "--config" {
            it.next().context("--config needs a FILE argument")?.clone()
        } else if let Some(v) = s.strip_prefix("--config=") {
            OsString::from(v)
        } else {
            bail!("unexpected argument {s:?} for `run` (expected `--config FILE`)");
        };
        if config.replace(PathBuf::from(value)).is_some() {
            bail!("--config given twice");
        }
    }
    Ok(config)
}

struct Xtask {
    /// Workspace root (parent of xtask's manifest directory).
    root: PathBuf,
    /// The cargo that runs us (`$CARGO`), else `cargo` from PATH.
    cargo: OsString,
    /// PATH for child commands: the current one, plus the cargo bin directory if it is not on
    /// it (bpf-linker lives there and rustc must find it when linking the XDP program).
    path: OsString,
}

impl Xtask {
    fn new() -> Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask's manifest directory has no parent")?
            .to_owned();
        let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let current = env::var_os("PATH").unwrap_or_default();
        let mut dirs: Vec<PathBuf> = env::split_paths(&current).collect();
        if let Some(bin) = cargo_bin_dir()
            && !dirs.contains(&bin)
        {
            dirs.push(bin);
        }
        let path = env::join_paths(dirs).context("cannot build PATH for child commands")?;
        Ok(Self { root, cargo, path })
    }

    fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.current_dir(&self.root).env("PATH", &self.path);
        cmd
    }

    fn cargo(&self) -> Command {
        self.command(&self.cargo)
    }

    /// Prints the command, runs it with inherited stdio, returns its exit code.
    fn run_status(&self, cmd: &mut Command) -> Result<ExitCode> {
        let shown = show(cmd);
        println!("[xtask] $ {shown}");
        let status = cmd
            .status()
            .with_context(|| format!("cannot start `{shown}`"))?;
        Ok(match status.code() {
            Some(0) => ExitCode::SUCCESS,
            Some(code) => {
                eprintln!("[xtask] `{shown}` exited with code {code}");
                ExitCode::from(u8::try_from(code).unwrap_or(1))
            }
            None => {
                eprintln!("[xtask] `{shown}` was killed by a signal ({status})");
                ExitCode::FAILURE
            }
        })
    }

    /// Prints the command, runs it with inherited stdio, fails unless it succeeds.
    fn run_checked(&self, cmd: &mut Command) -> Result<()> {
        let shown = show(cmd);
        println!("[xtask] $ {shown}");
        let status = cmd
            .status()
            .with_context(|| format!("cannot start `{shown}`"))?;
        if !status.success() {
            bail!("`{shown}` failed ({status})");
        }
        Ok(())
    }

    /// Makes this machine able to build and run everything; only checks once that is done.
    fn bootstrap(&self) -> Result<()> {
        check_root()?;
        if !Path::new("/etc/debian_version").exists() {
            print_manual_steps();
            bail!(
                "this is not a Debian machine (/etc/debian_version is absent): \
                 the automatic bootstrap only knows apt; follow the steps above, then rerun"
            );
        }
        self.ensure_packages()?;
        self.ensure_bpf_linker()?;
        check_bpf_rustc()?;
        self.ensure_bpffs()?;
        Ok(())
    }

    fn ensure_packages(&self) -> Result<()> {
        let wanted: Vec<&str> = BPF_PACKAGES
            .iter()
            .chain(&LAB_PACKAGES)
            .chain(&TEST_PACKAGES)
            .chain(&DEB_PACKAGES)
            .copied()
            .collect();
        // One query for all of them; an unknown package only adds a line to stderr.
        let out = Command::new("dpkg-query")
            .args(["-W", "-f=${Package} ${Status}\n"])
            .args(&wanted)
            .output()
            .context("cannot run dpkg-query")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let installed: Vec<&str> = stdout
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(_, status)| *status == "install ok installed")
            .map(|(name, _)| name.split(':').next().unwrap_or(name))
            .collect();
        let missing: Vec<&str> = wanted
            .iter()
            .copied()
            .filter(|p| !installed.contains(p))
            .collect();
        if missing.is_empty() {
            println!(
                "[xtask] debian packages: all present ({})",
                wanted.join(" ")
            );
            return Ok(());
        }
        println!("[xtask] debian packages missing: {}", missing.join(" "));
        self.run_checked(
            self.command("apt-get")
                .arg("update")
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
        .context("apt-get update failed")?;
        self.run_checked(
            self.command("apt-get")
                .args(["install", "-y", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
        .context("installing the Debian packages failed")?;
        Ok(())
    }

    fn ensure_bpf_linker(&self) -> Result<()> {
        let found = Command::new("bpf-linker")
            .arg("--version")
            .env("PATH", &self.path)
            .output()
            .ok()
            .filter(|o| o.status.success());
        if let Some(out) = found {
            let version = String::from_utf8_lossy(&out.stdout);
            println!("[xtask] bpf-linker: present ({})", version.trim());
            return Ok(());
        }
        println!(
            "[xtask] bpf-linker: missing, installing {BPF_LINKER_VERSION} against LLVM 22 \
             (takes about a minute)"
        );
        self.run_checked(
            self.cargo()
                .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
                .args(["--no-default-features", "--features", "llvm-22"])
                .env("LLVM_PREFIX", LLVM_PREFIX),
        )
        .context("installing bpf-linker failed")?;
        Ok(())
    }

    fn ensure_cargo_deb(&self) -> Result<()> {
        let found = Command::new("cargo-deb")
            .arg("--version")
            .env("PATH", &self.path)
            .output()
            .ok()
            .filter(|o| o.status.success());
        if let Some(out) = found {
            let version = String::from_utf8_lossy(&out.stdout);
            println!("[xtask] cargo-deb: present ({})", version.trim());
            return Ok(());
        }
        println!(
            "[xtask] cargo-deb: missing, installing {CARGO_DEB_VERSION} (takes about a minute)"
        );
        self.run_checked(self.cargo().args([
            "install",
            "cargo-deb",
            "--locked",
            "--version",
            CARGO_DEB_VERSION,
        ]))
        .context("installing cargo-deb failed")
    }

    /// `cargo xtask deb`: the release binary, completions and man page generated by it (hidden
    /// `dsr completions SHELL` / `dsr manpage`) into target/release/deb-assets/, then cargo-deb
    /// with dsr-userspace's `[package.metadata.deb]`. Returns the .deb's path.
    fn build_deb(&self) -> Result<PathBuf> {
        self.ensure_cargo_deb()?;
        self.run_checked(self.cargo().args([
            "build",
            "--release",
            "-p",
            USERSPACE_PACKAGE,
            "--bin",
            "dsr",
        ]))?;
        let dsr = self.root.join("target/release/dsr");
        let assets = self.root.join("target/release/deb-assets");
        let man = assets.join("man");
        let _ = fs::remove_dir_all(&assets);
        fs::create_dir_all(&man).with_context(|| format!("cannot create {}", man.display()))?;
        for (shell, file) in [("bash", "dsr.bash"), ("zsh", "_dsr"), ("fish", "dsr.fish")] {
            let args = ["completions", shell];
            let out = self
                .command(&dsr)
                .args(args)
                .output()
                .with_context(|| format!("cannot run {}", dsr.display()))?;
            if !out.status.success() || out.stdout.is_empty() {
                bail!(
                    "`dsr {}` failed ({}): {}",
                    args.join(" "),
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let path = assets.join(file);
            fs::write(&path, &out.stdout)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        self.run_checked(self.command(&dsr).arg("manpage").arg(&man))?;
        // Compressed here: cargo-deb only gzips man pages that are not under target/release.
        let mut gzip = self.command("gzip");
        gzip.args(["-9nf"]);
        for entry in fs::read_dir(&man)? {
            gzip.arg(entry?.path());
        }
        self.run_checked(&mut gzip)?;
        println!(
            "[xtask] generated completions and man pages in {}",
            assets.display()
        );
        // cargo-deb prints the package's path on stdout.
        let mut cmd = self.cargo();
        cmd.args(["deb", "-p", USERSPACE_PACKAGE, "--no-build"]);
        let shown = show(&cmd);
        println!("[xtask] $ {shown}");
        let out = cmd
            .stderr(std::process::Stdio::inherit())
            .output()
            .with_context(|| format!("cannot start `{shown}`"))?;
        if !out.status.success() {
            bail!("`{shown}` failed ({})", out.status);
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let deb = stdout
            .lines()
            .map(str::trim)
            .rfind(|l| l.ends_with(".deb"))
            .with_context(|| format!("cargo-deb printed no .deb path: {stdout}"))?;
        Ok(self.root.join(deb))
    }

    fn ensure_cargo_fuzz(&self) -> Result<()> {
        let found = self
            .cargo()
            .args(["fuzz", "--version"])
            .output()
            .ok()
            .filter(|o| o.status.success());
        if let Some(out) = found {
            let version = String::from_utf8_lossy(&out.stdout);
            println!("[xtask] cargo-fuzz: present ({})", version.trim());
            return Ok(());
        }
        println!("[xtask] cargo-fuzz: missing, installing {CARGO_FUZZ_VERSION} (about 40 s)");
        self.run_checked(self.cargo().args([
            "install",
            "cargo-fuzz",
            "--locked",
            "--version",
            CARGO_FUZZ_VERSION,
        ]))
        .context("installing cargo-fuzz failed")?;
        Ok(())
    }

    fn ensure_bpffs(&self) -> Result<()> {
        let mounts = fs::read_to_string("/proc/mounts").context("cannot read /proc/mounts")?;
        let mounted = mounts.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 3 && f[1] == BPFFS && f[2] == "bpf"
        });
        if mounted {
            println!("[xtask] bpffs: mounted at {BPFFS}");
            return Ok(());
        }
        println!("[xtask] bpffs: not mounted, mounting at {BPFFS}");
        self.run_checked(self.command("mount").args(["-t", "bpf", "bpf", BPFFS]))
            .context("mounting bpffs failed")
    }
}

fn check_root() -> Result<()> {
    let out = Command::new("id")
        .arg("-u")
        .output()
        .context("cannot run `id -u`")?;
    let uid = String::from_utf8_lossy(&out.stdout);
    if uid.trim() != "0" {
        bail!(
            "xtask must run as root (uid {}): the bootstrap installs packages and mounts bpffs, \
             and the tests and the lab create network namespaces and attach XDP programs",
            uid.trim()
        );
    }
    println!("[xtask] running as root");
    Ok(())
}

fn check_bpf_rustc() -> Result<()> {
    if !Path::new(BPF_RUSTC).exists() {
        bail!(
            "{BPF_RUSTC} is missing although the Debian packages are installed: \
             it comes from `rustc-web`; check `dpkg -L rustc-web`"
        );
    }
    if !Path::new(BPF_RUSTLIB).is_dir() {
        bail!(
            "{BPF_RUSTLIB} is missing: the prebuilt `core` for the BPF target comes from \
             `libstd-rust-web-dev-bpf`; check `dpkg -L libstd-rust-web-dev-bpf`"
        );
    }
    println!("[xtask] BPF rustc: {BPF_RUSTC} with {BPF_RUSTLIB}");
    Ok(())
}

fn cargo_bin_dir() -> Option<PathBuf> {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|home| home.join("bin"))
}

fn print_manual_steps() {
    let packages: Vec<&str> = BPF_PACKAGES
        .iter()
        .chain(&LAB_PACKAGES)
        .chain(&TEST_PACKAGES)
        .chain(&DEB_PACKAGES)
        .copied()
        .collect();
    println!("[xtask] not Debian: set the machine up by hand (as root), then rerun:");
    println!(
        "[xtask]   1. install the equivalents of the Debian packages: {}",
        packages.join(" ")
    );
    println!(
        "[xtask]      (a rustc with a prebuilt core for bpfel-unknown-none at {BPF_RUSTC}, \
         LLVM 22 development files, iproute2, ethtool, nftables, procps, nsenter, dpkg-dev, \
         binutils, systemd-analyze, man)"
    );
    println!(
        "[xtask]   2. LLVM_PREFIX={LLVM_PREFIX} cargo install bpf-linker --version \
         {BPF_LINKER_VERSION} --no-default-features --features llvm-22"
    );
    println!("[xtask]   3. mount -t bpf bpf {BPFFS}");
    println!(
        "[xtask]   4. for `cargo xtask deb` and its test: cargo install cargo-deb --locked \
         --version {CARGO_DEB_VERSION}"
    );
}

/// `program arg arg`, with the environment the command sets in front (except PATH).
fn show(cmd: &Command) -> String {
    let mut parts: Vec<String> = cmd
        .get_envs()
        .filter(|(k, _)| *k != "PATH")
        .filter_map(|(k, v)| Some(format!("{}={}", k.to_string_lossy(), v?.to_string_lossy())))
        .collect();
    parts.push(cmd.get_program().to_string_lossy().into_owned());
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// Runs `cargo test`, echoing its output, and ends with one plain summary line over every test
/// binary ("tests: N passed, N failed, N ignored"): cargo's own last line belongs to whichever
/// binary ran last (often a doc-test run with no tests) and says nothing about the whole run.
fn run_tests_with_summary(cmd: &mut Command) -> Result<ExitCode> {
    use std::io::{BufRead, BufReader};
    let shown = show(cmd);
    println!("[xtask] $ {shown}");
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{shown}`"))?;
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    let stdout = child.stdout.take().expect("piped stdout");
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        // "test result: ok. 4 passed; 0 failed; 1 ignored; 0 measured; ..."
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split(';') {
                let mut words = part.split_whitespace().rev();
                let (Some(what), Some(n)) = (words.next(), words.next()) else {
                    continue;
                };
                let Ok(n) = n.parse::<u64>() else { continue };
                match what {
                    "passed" => passed += n,
                    "failed" => failed += n,
                    "ignored" => ignored += n,
                    _ => {}
                }
            }
        }
    }
    let status = child.wait()?;
    if !status.success() && failed == 0 {
        // A build error or a crashed test binary: count it so the summary cannot read as green.
        failed = 1;
    }
    println!("tests: {passed} passed, {failed} failed, {ignored} skipped");
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
