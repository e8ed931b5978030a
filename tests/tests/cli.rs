//! The `dsr` binary facing bad input: errors name the file, the line and the problem, and
//! nothing is loaded or attached.

use std::process::Command;

use dsr_lab::lab::dsr_bin;

fn dsr(args: &[&str]) -> (i32, String) {
    let out = Command::new(dsr_bin())
        .args(args)
        .output()
        .expect("run dsr");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

fn write_config(name: &str, text: &str) -> String {
    let path = std::env::temp_dir().join(format!("dsr-cli-{}-{name}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

const GOOD: &str = "interface = \"lo\"\n\n[[vip]]\naddress = \"198.18.0.100\"\nport = 80\nprotocol = \"tcp\"\n  [[vip.backend]]\n  address = \"198.18.0.11\"\n  mac = \"02:00:00:00:00:11\"\n";

#[test]
fn check_accepts_a_good_config() {
    let path = write_config("good", GOOD);
    let (code, text) = dsr(&["check", "--config", &path]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("1 VIPs, 1 backends"), "{text}");
}

/// Bad configs key by key are dsr-userspace/tests/bad_configs.rs (the parser, `dsr check`
/// and `dsr run`); here the file itself.
#[test]
fn check_names_an_unreadable_file() {
    let (code, out) = dsr(&["check", "--config", "/nonexistent/dsr.toml"]);
    assert_eq!(code, 1);
    assert!(out.contains("/nonexistent/dsr.toml: cannot read"), "{out}");
}

#[test]
fn run_names_a_missing_interface() {
    let path = write_config("noiface", &GOOD.replace("\"lo\"", "\"nosuchif0\""));
    let (code, out) = dsr(&["run", "--config", &path]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("interface \"nosuchif0\" not found"), "{out}");
}

#[test]
fn vrrp_notify_names_what_is_wrong_and_records_a_good_notify() {
    let state = std::env::temp_dir().join(format!("dsr-cli-{}-vrrp-state", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let text = format!(
        "instance = \"cli-vrrp-{}\"\nstate_dir = \"{}\"\n{GOOD}\n[[announce]]\nname = \"VI_1\"\nvips = [\"198.18.0.100:80/tcp\"]\nvmac_vrid = 51\n\n[[announce]]\nname = \"plain\"\nvips = [\"198.18.0.100:80/tcp\"]\n",
        std::process::id(),
        state.display()
    );
    let path = write_config("vrrp", &text);
    let notify = |args: &[&str]| {
        let mut all = vec!["vrrp-notify", "--config", &path];
        all.extend_from_slice(args);
        dsr(&all)
    };
    // What the calls recorded so far under <state_dir>/vrrp.
    let records = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(state.join("vrrp"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    let (code, out) = notify(&["INSTANCE", "VI_9", "MASTER", "100", "--pid", "1"]);
    assert!(
        code != 0 && out.contains("no [[announce]] group is named \"VI_9\""),
        "{out}"
    );
    assert_eq!(records(), Vec::<std::path::PathBuf>::new(), "{out}");
    let (code, out) = notify(&["INSTANCE", "plain", "MASTER", "100", "--pid", "1"]);
    assert!(code != 0 && out.contains("has no vmac_vrid"), "{out}");
    assert_eq!(records(), Vec::<std::path::PathBuf>::new(), "{out}");
    let (code, out) = notify(&["INSTANCE", "VI_1", "LEADER", "100", "--pid", "1"]);
    assert!(code != 0 && out.contains("one of MASTER, BACKUP"), "{out}");
    assert_eq!(records(), Vec::<std::path::PathBuf>::new(), "{out}");
    // Not run by keepalived, and no --pid.
    let (code, out) = notify(&["INSTANCE", "VI_1", "MASTER", "100"]);
    assert!(code != 0 && out.contains("give --pid"), "{out}");
    assert_eq!(records(), Vec::<std::path::PathBuf>::new(), "{out}");
    // GROUP notifies are not ours.
    let (code, out) = notify(&["GROUP", "G", "MASTER", "100"]);
    assert!(code == 0 && out.contains("ignoring"), "{out}");
    assert_eq!(records(), Vec::<std::path::PathBuf>::new(), "{out}");
    // A good one is recorded, with no daemon running.
    let (code, out) = notify(&["INSTANCE", "VI_1", "BACKUP", "100", "--pid", "1"]);
    assert_eq!(code, 0, "{out}");
    let record = std::fs::read_to_string(state.join("vrrp/VI_1")).unwrap();
    assert_eq!(record, "BACKUP 1\n");
    assert_eq!(records(), [state.join("vrrp/VI_1")], "what `records` sees");
    let _ = std::fs::remove_dir_all(&state);
}

/// `--interval` below 100 ms is refused before the watch starts (a busier loop gains
/// nothing over a file rewritten every second); 100 ms runs.
#[test]
fn announce_watch_refuses_an_interval_below_100ms() {
    let dir = std::env::temp_dir().join(format!("dsr-cli-{}-watch", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ran = dir.join("withdrawn");
    let watch = |interval: &str| {
        let mut child = Command::new(dsr_bin())
            .arg("announce-watch")
            .arg(dir.join("no-such-announcement"))
            .args(["--on-announce", "true", "--on-withdraw"])
            .arg(format!("touch {}", ran.display()))
            .args(["--interval", interval])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        while std::time::Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
                return Some((status, err));
            }
            if ran.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    };
    let (status, err) = watch("99ms").expect("a 99 ms watch kept running");
    assert!(
        !status.success() && err.contains("--interval 99ms: at least 100ms"),
        "{status}: {err}"
    );
    assert!(!ran.exists(), "the refused watch ran its command");
    assert!(watch("100ms").is_none(), "a 100 ms watch exited");
    assert!(
        ran.exists(),
        "the 100 ms watch did not run its withdraw command"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
