//! Least privilege: the real daemon runs as a non-root uid with only the capabilities it
//! needs (ambient CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN), refuses without any one of them,
//! and without bpffs mounted either mounts it (with CAP_SYS_ADMIN) or refuses with the
//! command to run. Each runs in the test's own namespaces; the bpffs cases in a private
//! mount namespace (`unshare --mount`), so no other test's pins are touched.

use std::{os::unix::fs::PermissionsExt, path::Path, time::Duration};

use dsr_lab::lab::Lab;

const UID: &str = "4242";

fn chown_tree(path: &Path) {
    let out = std::process::Command::new("chown")
        .args(["-R", &format!("{UID}:{UID}")])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn setpriv(caps: &str) -> Vec<String> {
    [
        "setpriv",
        "--reuid",
        UID,
        "--regid",
        UID,
        "--clear-groups",
        "--inh-caps",
        caps,
        "--ambient-caps",
        caps,
        "--bounding-set",
        caps,
        "--",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// What the service manager prepares (the unit's RuntimeDirectory, StateDirectory and its
/// ExecStartPre for the pin directory): directories the daemon's uid owns.
fn prepare(lab: &Lab) {
    chown_tree(&lab.dir);
    let pins = dsr::datapath::pin_dir(&lab.tag);
    std::fs::create_dir_all(&pins).unwrap();
    chown_tree(&pins);
    std::fs::create_dir_all(dsr::runtime::instance::RUN_DIR).unwrap();
    let lock = dsr::runtime::instance::lock_path(&lab.tag);
    std::fs::write(&lock, "").unwrap();
    chown_tree(&lock);
    let record = Path::new(dsr::runtime::instance::RUN_DIR).join(format!("{}.json", lab.tag));
    let _ = std::fs::remove_file(&record);
}

/// The daemon's uid may write its record into the run directory (the unit's RuntimeDirectory
/// is the daemon's); the mode is put back when the test ends.
struct RunDirOpen(u32, #[allow(dead_code)] std::sync::MutexGuard<'static, ()>);

/// The two tests open the run directory one after the other (each puts the mode back).
static RUN_DIR: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl RunDirOpen {
    fn new() -> Self {
        let guard = RUN_DIR.lock().unwrap_or_else(|e| e.into_inner());
        let dir = dsr::runtime::instance::RUN_DIR;
        let mode = std::fs::metadata(dir).unwrap().permissions().mode() & 0o7777;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        RunDirOpen(mode, guard)
    }
}

impl Drop for RunDirOpen {
    fn drop(&mut self) {
        let dir = dsr::runtime::instance::RUN_DIR;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(self.0));
    }
}

#[test]
fn runs_with_cap_bpf_perfmon_and_net_admin_only() {
    let mut lab = Lab::new("lowpriv", &[1, 1]);
    prepare(&lab);
    let _run_dir = RunDirOpen::new();
    let config = lab.config();
    // Without any one of the three it refuses, naming it, and pins nothing.
    for (caps, missing) in [
        ("-all,+net_admin,+perfmon", "CAP_BPF"),
        ("-all,+bpf,+net_admin", "CAP_PERFMON"),
        ("-all,+bpf,+perfmon", "CAP_NET_ADMIN"),
    ] {
        lab.wrapper = setpriv(caps);
        let e = lab
            .start_dsr_with(&config, false)
            .expect_err("started without a capability it needs");
        let e = format!("{e:#}");
        assert!(
            e.contains(&format!("missing {missing}")) && e.contains("nothing was changed"),
            "{e}"
        );
        assert!(!dsr::datapath::is_pinned(&dsr::datapath::pin_dir(&lab.tag)));
    }
    lab.wrapper = setpriv("-all,+bpf,+net_admin,+perfmon");
    lab.start_dsr_with(&config, false)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let who = lab
        .udp_request(49000)
        .expect("forwarded by the unprivileged daemon");
    assert!(who.starts_with("backend-"), "{who}");
    let status = lab.status();
    assert_eq!(status.vips.len(), 2);
    assert_eq!(status.pid.map(uid_of), Some(UID.parse().unwrap()));
    std::thread::sleep(Duration::from_millis(100));
}

fn uid_of(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .unwrap()
}

/// In a private mount namespace without bpffs: `sh -c` unmounts it, then runs the rest.
fn without_bpffs(mut rest: Vec<String>) -> Vec<String> {
    let mut w: Vec<String> = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        "umount /sys/fs/bpf && exec \"$@\"",
        "sh",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    w.append(&mut rest);
    w
}

#[test]
fn without_bpffs_it_mounts_it_as_root_and_names_the_command_otherwise() {
    let mut lab = Lab::new("nobpffs", &[1, 1]);
    prepare(&lab);
    let _run_dir = RunDirOpen::new();
    let config = lab.config();
    lab.wrapper = without_bpffs(setpriv("-all,+bpf,+net_admin,+perfmon"));
    let e = format!(
        "{:#}",
        lab.start_dsr_with(&config, false)
            .expect_err("started without bpffs")
    );
    assert!(
        e.contains("mount -t bpf bpf /sys/fs/bpf") && e.contains("CAP_SYS_ADMIN"),
        "{e}"
    );
    // As root, in its own mount namespace, it mounts bpffs (private to it) and runs.
    lab.wrapper = without_bpffs(Vec::new());
    lab.start_dsr_with(&config, false)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(lab.dsr_log().contains("mounted bpffs"), "{}", lab.dsr_log());
    lab.udp_request(49100).expect("forwarded");
    // The host's bpffs never saw this instance's pins.
    assert!(!dsr::datapath::is_pinned(&dsr::datapath::pin_dir(&lab.tag)));
    lab.stop_dsr();
}

/// Operators in the `control_group` use the CLI without root (their own group or a
/// supplementary one); anyone else is refused with the remedy.
#[test]
fn the_control_group_uses_the_cli_without_root() {
    let mut lab = Lab::new("opgroup", &[1, 1]);
    let config = lab
        .config()
        .replace("max_vips = 8", "control_group = \"4243\"\nmax_vips = 8");
    lab.start_dsr_with(&config, false)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let socket = std::fs::metadata(lab.socket()).unwrap();
    assert_eq!(socket.permissions().mode() & 0o777, 0o660);
    assert_eq!(std::os::unix::fs::MetadataExt::gid(&socket), 4243);
    let config_path = lab.config_path();
    let as_user = |gid: &str, groups: Option<&str>| {
        let mut cmd = std::process::Command::new("setpriv");
        cmd.args(["--reuid", "4244", "--regid", gid]);
        match groups {
            Some(g) => cmd.args(["--groups", g]),
            None => cmd.arg("--clear-groups"),
        };
        let out = cmd
            .arg(dsr_lab::lab::dsr_bin())
            .args(["status", "--json", "--config"])
            .arg(&config_path)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = as_user("4243", None);
    assert!(ok && out.contains("\"udp-53\""), "{out}");
    let (ok, out) = as_user("4245", Some("4243"));
    assert!(ok && out.contains("\"udp-53\""), "{out}");
    let (ok, out) = as_user("4245", None);
    assert!(!ok && out.contains("permission denied"), "{out}");
    // With the daemon gone, an operator still reads the status from the pins (opened
    // read-only) and the saved state (0640 in a 0750 directory, both the group's).
    let state = lab.dir.join("state");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        (mode(&state), mode(&state.join("state.json"))),
        (0o750, 0o640)
    );
    let pins = dsr::datapath::pin_dir(&lab.tag);
    assert_eq!(mode(&pins.join(dsr_common::names::VIP_STATS)), 0o640);
    lab.kill_dsr();
    let (ok, out) = as_user("4243", None);
    assert!(ok, "{out}");
    let status: dsr::control::Status =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(status.daemon, dsr::control::DaemonState::Down);
    assert!(status.data_path_pinned && status.vips.len() == 2, "{out}");
}
