//! The Debian package (`cargo xtask deb`): built, installed into an empty root with dpkg, its
//! files where they belong, the unit's ExecStart (paths rebased onto that root) running the
//! packaged binary in the lab until `dsr status` answers and traffic is forwarded, SIGTERM (what
//! `systemctl stop` sends) leaving the data path forwarding, and the unit passing
//! `systemd-analyze verify` (systemd is not PID 1 here: verify needs no running manager).

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use dsr_lab::lab::{Lab, UDP_PORT, VIP};

const UNIT: &str = "lib/systemd/system/dsr.service";
const CONFIG: &str = "/etc/dsr/dsr.toml";
const BIN: &str = "/usr/bin/dsr";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Runs `cargo xtask deb` and returns the path it reports.
fn build_package() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let started = Instant::now();
    let out = Command::new(cargo)
        .args(["xtask", "deb"])
        .current_dir(workspace_root())
        .stderr(Stdio::inherit())
        .output()
        .expect("running cargo xtask deb");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "cargo xtask deb failed:\n{stdout}");
    println!(
        "package: `cargo xtask deb` took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let deb = stdout
        .lines()
        .find_map(|l| l.strip_prefix("[xtask] package: "))
        .unwrap_or_else(|| panic!("no package path in:\n{stdout}"));
    PathBuf::from(deb.trim())
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// `path` inside the install root.
fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

#[test]
fn package_installs_runs_and_verifies() {
    let deb = build_package();
    assert!(deb.is_file(), "{} is missing", deb.display());

    // An empty dpkg database in an empty root. No chroot: there is nothing to run in DIR.
    let root = std::env::temp_dir().join(format!("dsr-pkg-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    for dir in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
        fs::create_dir_all(root.join(dir)).unwrap();
    }
    fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    // --force-depends: the empty root has no libc6 to satisfy Depends.
    // --force-script-chrootless: the postinst runs without chroot, with DPKG_ROOT set.
    let (ok, out) = run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["--force-script-chrootless", "--force-depends", "-i"])
        .arg(&deb));
    assert!(ok, "dpkg -i failed:\n{out}");
    let (ok, out) = run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["-s", "dsr"]));
    assert!(
        ok && out.contains("Status: install ok installed"),
        "dsr is not installed in the root:\n{out}"
    );

    // The files.
    let bin = under(&root, BIN);
    let config = under(&root, CONFIG);
    for path in [
        BIN,
        UNIT,
        CONFIG,
        "usr/share/bash-completion/completions/dsr",
        "usr/share/zsh/vendor-completions/_dsr",
        "usr/share/fish/vendor_completions.d/dsr.fish",
        "usr/share/man/man1/dsr.1.gz",
        "usr/share/man/man1/dsr-run.1.gz",
        "usr/lib/sysusers.d/dsr.conf",
        "usr/share/dsr/notify/route-next-hop.sh",
        "usr/share/dsr/notify/secondary-ip.sh",
    ] {
        let p = under(&root, path);
        let len = fs::metadata(&p)
            .unwrap_or_else(|e| panic!("{path} not installed: {e}"))
            .len();
        assert!(len > 0, "{path} is empty");
    }
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&bin).unwrap().permissions().mode() & 0o111,
        0o111
    );
    let man = fs::read(under(&root, "usr/share/man/man1/dsr.1.gz")).unwrap();
    assert_eq!(&man[..2], &[0x1f, 0x8b], "the man page is not gzipped");
    let bash =
        fs::read_to_string(under(&root, "usr/share/bash-completion/completions/dsr")).unwrap();
    assert!(
        bash.contains("realserver") && !bash.contains("manpage"),
        "bash completions"
    );
    let conffiles = fs::read_to_string(root.join("var/lib/dpkg/info/dsr.conffiles")).unwrap();
    assert_eq!(conffiles.trim(), CONFIG, "conffiles");
    // Its one maintainer script made the daemon's user and the operators' group, in the
    // root (not on this host).
    for script in ["preinst", "prerm", "postrm"] {
        let p = root.join(format!("var/lib/dpkg/info/dsr.{script}"));
        assert!(!p.exists(), "the package has a {script}");
    }
    assert!(root.join("var/lib/dpkg/info/dsr.postinst").exists());
    let passwd = fs::read_to_string(root.join("etc/passwd")).unwrap_or_default();
    let group = fs::read_to_string(root.join("etc/group")).unwrap_or_default();
    assert!(
        passwd
            .lines()
            .any(|l| l.starts_with("dsr:") && l.ends_with(":/var/lib/dsr:/usr/sbin/nologin")),
        "no dsr user in the root's /etc/passwd:\n{passwd}"
    );
    assert!(
        group.lines().any(|l| l.starts_with("dsr:")),
        "no dsr group in the root's /etc/group:\n{group}"
    );
    // Installed, not enabled or started: no wants/ symlink.
    assert!(
        !root.join("etc/systemd").exists(),
        "installing enabled the unit"
    );
    // The shipped example config is valid as it is.
    let (ok, out) = run(Command::new(&bin).args(["check", "--config"]).arg(&config));
    assert!(
        ok,
        "the packaged {CONFIG} does not pass `dsr check`:\n{out}"
    );

    // The unit: one ExecStart, a reload by SIGHUP, no ExecStop (stopping keeps forwarding).
    let unit = fs::read_to_string(under(&root, UNIT)).unwrap();
    let key = |k: &str| -> Vec<String> {
        unit.lines()
            .filter_map(|l| l.trim().strip_prefix(k)?.strip_prefix('='))
            .map(str::to_owned)
            .collect()
    };
    let exec_start = key("ExecStart");
    assert_eq!(exec_start, [format!("{BIN} run --config {CONFIG}")]);
    assert_eq!(key("ExecReload"), ["/bin/kill -HUP $MAINPID"]);
    assert_eq!(key("KillSignal"), ["SIGTERM"]);
    assert!(key("ExecStop").is_empty(), "the unit has an ExecStop");
    // The capabilities the privilege test measured, and the usual hardening.
    let caps = ["CAP_BPF CAP_PERFMON CAP_NET_ADMIN".to_owned()];
    assert_eq!(key("CapabilityBoundingSet"), caps);
    assert_eq!(key("AmbientCapabilities"), caps);
    for (k, v) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectKernelTunables", "yes"),
        ("ReadWritePaths", "/sys/fs/bpf"),
        ("RuntimeDirectory", "dsr"),
        ("StateDirectory", "dsr"),
        // Not root; the daemon's uid running with exactly these capabilities is what
        // tests/tests/privilege.rs measures (the daemon below runs as root).
        ("User", "dsr"),
        ("Group", "dsr"),
    ] {
        assert_eq!(key(k), [v], "{k}");
    }
    let rebase = |s: &str| {
        s.replace(BIN, &bin.display().to_string())
            .replace(CONFIG, &config.display().to_string())
    };

    // `systemd-analyze verify` on a copy whose paths point into the root (the unit's own
    // /usr/bin/dsr does not exist on this host); MANPATH lets it check Documentation=man:dsr(1)
    // against the installed man page.
    let verify_dir = root.join("verify");
    fs::create_dir_all(&verify_dir).unwrap();
    let copy = verify_dir.join("dsr.service");
    fs::write(&copy, rebase(&unit)).unwrap();
    let (ok, out) = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .env("MANPATH", root.join("usr/share/man")));
    assert!(
        ok && out.trim().is_empty(),
        "systemd-analyze verify:\n{out}"
    );

    // The unit's ExecStart, rebased, with the conffile edited for the lab (as an operator
    // edits /etc/dsr/dsr.toml), run in the load balancer's namespace as Lab does.
    let lab = Lab::new("pkg", &[1, 1]);
    fs::write(&config, lab.config()).unwrap();
    let argv: Vec<String> = rebase(&exec_start[0])
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let log = lab.dir.join("dsr-pkg.log");
    let logf = fs::File::create(&log).unwrap();
    let mut daemon = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", lab.lb_ns))
        .args(&argv)
        .stdout(logf.try_clone().unwrap())
        .stderr(logf)
        .spawn()
        .expect("starting the packaged dsr");
    let status = |json: bool| {
        let mut cmd = Command::new(&bin);
        cmd.args(["status", "--config"]).arg(&config);
        if json {
            cmd.arg("--json");
        }
        run(&mut cmd)
    };
    let status_json = || {
        let (ok, out) = status(true);
        let json: Option<serde_json::Value> = serde_json::from_str(&out).ok().filter(|_| ok);
        (json, out)
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    let st = loop {
        let (json, out) = status_json();
        if let Some(st) = json.filter(|st| st["daemon"] == "running") {
            break st;
        }
        if let Some(st) = daemon.try_wait().unwrap() {
            panic!(
                "the packaged dsr exited with {st}:\n{}",
                fs::read_to_string(&log).unwrap()
            );
        }
        assert!(
            Instant::now() < deadline,
            "`dsr status` did not answer within 15 s: {out}\n{}",
            fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let vips: Vec<&str> = st["vips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(vips, ["tcp-80", "udp-53"], "{st}");
    let (ok, text) = status(false);
    assert!(
        ok && text.contains(&format!("{VIP}:{UDP_PORT}/udp")),
        "{text}"
    );
    let who = lab
        .udp_request(40_001)
        .expect("a request through the packaged dsr");
    assert!(who.starts_with("backend"), "answered by {who:?}");

    // SIGTERM, as `systemctl stop dsr` sends (KillSignal): the daemon exits, forwarding stays.
    // SAFETY: signalling our own child (nsenter execs dsr, so it is dsr itself).
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(st) = daemon.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = daemon.kill();
            panic!("the packaged dsr did not exit within 10 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "dsr exited with {exit} on SIGTERM");
    let (json, out) = status_json();
    let st = json.unwrap_or_else(|| panic!("`dsr status` after SIGTERM: {out}"));
    assert_eq!(st["daemon"], "down", "{out}");
    assert_eq!(st["data_path_pinned"], true, "{out}");
    assert_eq!(
        lab.udp_request(40_001).expect("forwarding after SIGTERM"),
        who,
        "the flow moved after the daemon stopped"
    );

    drop(lab);
    let _ = fs::remove_dir_all(&root);
}
