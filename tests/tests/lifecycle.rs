//! The daemon's life cycle with traffic flowing: crash (`kill -9`) and restart, SIGTERM and
//! restart, config reload (SIGHUP and `dsr reload`, good and bad), runtime changes through
//! the CLI surviving restarts and reloads, `dsr reset`, and the control socket refusing
//! malformed input.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use dsr_lab::lab::{Lab, UDP_PORT, VIP};

/// Sends UDP requests from a rotating set of source ports until stopped (at most 60 s),
/// counting answered and unanswered ones.
struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(lab: &Lab) -> Traffic {
        let (stop, ok, failed) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let ns = format!("/run/netns/{}", lab.client_ns);
        let (s, o, f) = (stop.clone(), ok.clone(), failed.clone());
        let thread = std::thread::spawn(move || {
            dsr_lab::lab::in_netns_path(&ns);
            let started = std::time::Instant::now();
            let mut i = 0u16;
            while !s.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
                let sport = 50000 + i % 200;
                i = i.wrapping_add(1);
                let r = (|| -> std::io::Result<()> {
                    let sock = std::net::UdpSocket::bind((dsr_lab::lab::CLIENT_IP, sport))?;
                    sock.connect((VIP, UDP_PORT))?;
                    sock.set_read_timeout(Some(Duration::from_secs(1)))?;
                    sock.send(b"who are you?")?;
                    let mut buf = [0u8; 64];
                    sock.recv(&mut buf)?;
                    Ok(())
                })();
                match r {
                    Ok(()) => o.fetch_add(1, Ordering::Relaxed),
                    Err(_) => f.fetch_add(1, Ordering::Relaxed),
                };
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        Traffic {
            stop,
            ok,
            failed,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// kill -9 and SIGTERM, each followed by a restart, under continuous traffic: not one request
/// fails, an open TCP connection survives, and the counters carry on.
#[test]
fn restarts_lose_nothing() {
    let mut lab = Lab::new("restart", &[1, 1, 1]);
    lab.start_dsr(false).unwrap_or_else(|e| panic!("{e:#}"));
    let mut conn = lab.tcp_connect(45000).unwrap();
    let owner = conn.ask().unwrap();
    let traffic = Traffic::start(&lab);
    std::thread::sleep(Duration::from_millis(300));

    let status = lab.kill_dsr().unwrap();
    assert!(
        !status.success(),
        "kill -9 should not look like a clean exit"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        conn.ask().unwrap(),
        owner,
        "open connection broken while dsr is dead"
    );
    lab.restart_dsr(false).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        lab.dsr_log().contains("adopted the running data path"),
        "{}",
        lab.dsr_log()
    );
    std::thread::sleep(Duration::from_millis(500));

    let status = lab.stop_dsr().unwrap();
    assert!(status.success(), "SIGTERM exit: {status}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(conn.ask().unwrap(), owner);
    lab.restart_dsr(false).unwrap_or_else(|e| panic!("{e:#}"));
    std::thread::sleep(Duration::from_millis(300));

    let (ok, failed) = traffic.finish();
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed across the restarts\n{}",
        ok + failed,
        lab.dsr_log()
    );
    assert!(ok > 200, "only {ok} requests sent");
    assert_eq!(
        conn.ask().unwrap(),
        owner,
        "open connection moved across restarts"
    );
    // Counters were adopted, not reset: the VIP saw at least every answered request.
    let st = lab.status();
    let udp = st.vips.iter().find(|v| v.addr.port == UDP_PORT).unwrap();
    assert!(
        udp.traffic.packets >= ok,
        "VIP counted {} packets for {ok} answered requests",
        udp.traffic.packets
    );
}

/// Runtime changes survive a restart and a reload; `dsr reset` returns to the config.
#[test]
fn runtime_changes_survive_restart_and_reload_until_reset() {
    let mut lab = Lab::new("runtime", &[1, 1]);
    lab.start_dsr(false).unwrap_or_else(|e| panic!("{e:#}"));
    let (ok, out) = lab.dsr(&["backend", "weight", "udp-53", "198.18.0.12", "3"]);
    assert!(ok && out.contains("weight 1 -> 3"), "{out}");
    let (ok, out) = lab.dsr(&["vip", "add", "198.18.0.100:5353/udp", "--name", "extra"]);
    assert!(ok, "{out}");
    let (ok, out) = lab.dsr(&["backend", "add", "extra", "198.18.0.11"]);
    assert!(ok, "{out}");

    let check = |lab: &Lab, when: &str| {
        let st = lab.status();
        assert_eq!(st.runtime_changes, 3, "{when}");
        let udp = st.vips.iter().find(|v| v.name == "udp-53").unwrap();
        assert_eq!(udp.backends[1].weight, 3, "{when}");
        assert!(
            udp.backends[1].runtime,
            "{when}: not marked as differing from the config"
        );
        let extra = st
            .vips
            .iter()
            .find(|v| v.name == "extra")
            .expect("runtime VIP gone");
        assert!(extra.runtime && extra.backends.len() == 1, "{when}");
    };
    check(&lab, "after the changes");
    lab.stop_dsr();
    lab.restart_dsr(false).unwrap();
    check(&lab, "after a restart");
    let (ok, out) = lab.dsr(&["reload"]);
    assert!(ok, "{out}");
    check(&lab, "after a reload");
    let rendered = lab.dsr(&["status"]).1;
    assert!(
        rendered.contains("extra *"),
        "status does not mark runtime VIPs:\n{rendered}"
    );

    let (ok, out) = lab.dsr(&["reset"]);
    assert!(ok && out.contains("dropped 3 runtime changes"), "{out}");
    let st = lab.status();
    assert_eq!(st.runtime_changes, 0);
    assert!(st.vips.iter().all(|v| v.name != "extra"));
    assert!(
        st.vips
            .iter()
            .flat_map(|v| &v.backends)
            .all(|b| b.weight == 1 && !b.runtime)
    );
}

/// A reload applies only the difference; a bad config is refused with file and line and
/// changes nothing (SIGHUP and `dsr reload` alike).
#[test]
fn reload_applies_differences_and_refuses_bad_configs() {
    let mut lab = Lab::new("reload", &[1, 1, 1]);
    let two_backends = {
        let mut c = lab.header();
        c += &format!(
            "\n[[vip]]\nname = \"udp\"\naddress = \"{VIP}\"\nport = 53\nprotocol = \"udp\"\n"
        );
        for b in &lab.backends[..2] {
            c += &format!("  [[vip.backend]]\n  address = \"{}\"\n", b.ip);
        }
        c
    };
    lab.start_dsr_with(&two_backends, false)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut conn_flows = Vec::new();
    for p in 46000..46050u16 {
        conn_flows.push((p, lab.udp_request(p).unwrap()));
    }
    let packets_before = lab.status().vips[0].traffic.packets;
    assert!(packets_before >= 50);

    // A broken config: refused, with file and line; everything keeps running.
    let config = lab.config_path();
    std::fs::write(&config, format!("{two_backends}  weight = \"heavy\"\n")).unwrap();
    let (ok, out) = lab.dsr(&["reload"]);
    assert!(!ok, "a bad config was accepted: {out}");
    assert!(
        out.contains(&format!("{}:18:", config.display())) && out.contains("weight"),
        "{out}"
    );
    assert!(out.contains("still running the previous config"), "{out}");
    // SIGHUP with the same broken file: logged, nothing changes.
    let pid = lab.status().pid.unwrap();
    // SAFETY: signalling the daemon we started.
    unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    lab.wait_for(
        "the SIGHUP error in the log",
        Duration::from_secs(3),
        || lab.dsr_log().contains("SIGHUP: reload refused"),
    );
    assert_eq!(lab.status().vips[0].backends.len(), 2);
    for (p, who) in &conn_flows[..10] {
        assert_eq!(&lab.udp_request(*p).unwrap(), who);
    }

    // A good config adding the third backend: only that changes; flows and counters stay.
    let mut three = two_backends.clone();
    three += &format!(
        "  [[vip.backend]]\n  address = \"{}\"\n",
        lab.backends[2].ip
    );
    std::fs::write(&config, &three).unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    lab.wait_for("the reload", Duration::from_secs(3), || {
        lab.status().vips[0].backends.len() == 3
    });
    for (p, who) in &conn_flows {
        assert_eq!(
            &lab.udp_request(*p).unwrap(),
            who,
            "established flow {p} moved on reload"
        );
    }
    let st = lab.status();
    assert!(
        st.vips[0].traffic.packets >= packets_before + 60,
        "counters reset by the reload"
    );
    assert!(lab.dsr_log().contains("1 changed"), "{}", lab.dsr_log());
    let fresh: Vec<String> = (47000..47100u16)
        .map(|p| lab.udp_request(p).unwrap())
        .collect();
    assert!(
        fresh.iter().any(|w| w == "backend-3"),
        "the new backend gets no new flows"
    );

    // Settings that cannot change live are refused, naming them.
    std::fs::write(&config, three.replace("max_vips = 8", "max_vips = 9")).unwrap();
    let (ok, out) = lab.dsr(&["reload"]);
    assert!(!ok && out.contains("max_vips"), "{out}");
}

/// The message `dsr check` gives for a config, without its "file:line: " prefix.
fn config_message(lab: &Lab, config: &str) -> String {
    let path = lab.dir.join("bad.toml");
    std::fs::write(&path, config).unwrap();
    let out = std::process::Command::new(dsr_lab::lab::dsr_bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success(), "dsr check accepted:\n{config}");
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    let line = text
        .lines()
        .find(|l| l.contains("bad.toml:"))
        .unwrap_or_else(|| panic!("{text}"));
    // "dsr: /path/bad.toml:12: message"
    let after_file = line.split_once("bad.toml:").unwrap().1;
    after_file
        .split_once(": ")
        .map_or(after_file, |(_, m)| m)
        .trim()
        .to_owned()
}

/// The control socket and CLI refuse bad input and change nothing; `status` works while
/// the daemon is down.
#[test]
fn bad_requests_change_nothing() {
    let mut lab = Lab::new("badreq", &[1, 1]);
    lab.start_dsr(false).unwrap_or_else(|e| panic!("{e:#}"));
    // A VIP that owns its address's UDP fragments, for the "second owner" case below.
    let (ok, out) = lab.dsr(&[
        "vip",
        "add",
        "198.18.0.200:54/udp",
        "--fragments",
        "--name",
        "frag",
    ]);
    assert!(ok, "{out}");
    let before = lab.state_of();

    // The same rule refuses the same mistake in a config file and on the command line, with
    // the same message.
    let with_backend = |check: &str, backend: &str| {
        format!(
            "{}\n[[vip]]\nname = \"x\"\naddress = \"198.18.0.100\"\nport = 53\nprotocol = \"udp\"\n{check}  [[vip.backend]]\n  address = \"198.18.0.50\"\n{backend}",
            lab.header()
        )
    };
    let interval_msg = config_message(
        &lab,
        &with_backend("[vip.check]\ntype = \"tcp\"\ninterval = \"0s\"\n", ""),
    );
    let weight_msg = config_message(&lab, &with_backend("", "  weight = 2000000\n"));
    let path_msg = config_message(
        &lab,
        &with_backend("[vip.check]\ntype = \"http\"\npath = \"nopath\"\n", ""),
    );
    let tcp_path_msg = config_message(
        &lab,
        &with_backend("[vip.check]\ntype = \"tcp\"\npath = \"/x\"\n", ""),
    );
    let own_msg = config_message(
        &lab,
        &with_backend("", "").replace("198.18.0.50", "198.18.0.100"),
    );
    for m in [
        &interval_msg,
        &weight_msg,
        &path_msg,
        &tcp_path_msg,
        &own_msg,
    ] {
        assert!(!m.is_empty());
    }

    fn add<'a>(extra: &[&'a str]) -> Vec<&'a str> {
        let mut a = vec!["backend", "add", "udp-53", "198.18.0.50"];
        a.extend_from_slice(extra);
        a
    }
    for (args, words) in [
        (
            vec!["backend", "remove", "udp-53", "198.18.0.99"],
            "has no backend 198.18.0.99".to_owned(),
        ),
        (
            vec!["backend", "drain", "nope", "198.18.0.11"],
            "no VIP named".into(),
        ),
        (
            vec!["backend", "add", "udp-53", "198.18.0.11"],
            "already has backend".into(),
        ),
        (
            vec!["backend", "weight", "udp-53", "198.18.0.11", "5000000"],
            "above the maximum".into(),
        ),
        (
            vec!["vip", "add", "198.18.0.100:53/udp"],
            "exists already".into(),
        ),
        (
            vec!["vip", "remove", "198.18.0.100:9/tcp"],
            "no VIP named".into(),
        ),
        (
            add(&["--check", "tcp", "--check-interval", "0s"]),
            interval_msg.clone(),
        ),
        (add(&["--weight", "2000000"]), weight_msg.clone()),
        (
            add(&["--check", "http", "--check-path", "nopath"]),
            path_msg.clone(),
        ),
        (
            add(&["--check", "tcp", "--check-path", "/x"]),
            tcp_path_msg.clone(),
        ),
        (add(&["--check-port", "8080"]), "--check".into()),
        (
            add(&["--check", "tcp", "--rise", "0"]),
            "rise 0 must be 1..=100".into(),
        ),
        (
            add(&["--interface", "nosuch0"]),
            "interface \"nosuch0\" not found".into(),
        ),
        (
            vec!["backend", "add", "udp-53", "198.18.0.100"],
            own_msg.clone(),
        ),
        (
            vec!["vip", "add", "198.18.0.100:*/tcp", "--check", "tcp"],
            "an all-ports VIP has no port to check".into(),
        ),
        (
            vec!["vip", "add", "198.18.0.200:55/udp", "--fragments"],
            "only one VIP per address, protocol and VLAN may take its fragments".into(),
        ),
        (
            vec![
                "vip",
                "add",
                "198.18.0.100:70/tcp",
                "--name",
                "198.18.0.100:53/udp",
            ],
            "address of another VIP".into(),
        ),
    ] {
        let (ok, out) = lab.dsr(&args);
        assert!(!ok, "{args:?} succeeded: {out}");
        assert!(
            out.contains(&words),
            "{args:?}: {out:?} does not say {words:?}"
        );
    }
    // Raw garbage on the socket.
    for garbage in [
        "hello\n",
        "{\"cmd\":\"backend_remove\"}\n",
        "{\"cmd\":\"status\",\"x\":1}\n",
        "\n",
    ] {
        let mut s = UnixStream::connect(lab.socket()).unwrap();
        s.write_all(garbage.as_bytes()).unwrap();
        let mut answer = String::new();
        BufReader::new(s).read_line(&mut answer).unwrap();
        let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(v["ok"], false, "{garbage:?} -> {answer}");
        assert!(
            v["message"].as_str().unwrap().contains("malformed"),
            "{answer}"
        );
    }
    assert_eq!(
        before,
        lab.state_of(),
        "a refused request changed the state"
    );
    // The socket is root's alone.
    let mode = std::fs::metadata(lab.socket())
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()))
        .unwrap();
    assert_eq!(mode & 0o777, 0o600);

    // Daemon down: status reads the pinned maps and says so.
    lab.kill_dsr();
    let (ok, out) = lab.dsr(&["status"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("daemon down (data path still pinned and forwarding)"),
        "{out}"
    );
    assert!(out.contains("udp-53"), "{out}");
    // Its health columns say that nobody checks now.
    assert!(
        out.contains("nobody checks the backends now") && out.contains("(stale"),
        "{out}"
    );
    let down = lab.status();
    assert_eq!(down.daemon, dsr::control::DaemonState::Down);
    assert!(down.data_path_pinned && down.pid.is_none());
    assert!(
        down.vips
            .iter()
            .flat_map(|v| &v.backends)
            .all(|b| !b.health_live)
    );
}

/// A reload that cannot apply completely (here: no backend ids left, since removed
/// backends' ids wait out the flow idle timeout) is refused and changes nothing.
#[test]
fn reload_that_cannot_fully_apply_changes_nothing() {
    let mut lab = Lab::new("reloadids", &[1, 1]);
    // Two VIPs x two backends use all four ids.
    let config = lab
        .config()
        .replace("max_backends = 64", "max_backends = 4");
    lab.start_dsr_with(&config, false)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let before = lab.state_of();
    // Backend .12 of the TCP VIP is replaced by .13: .13 needs a fifth id.
    let (head, udp) = config.split_at(config.find("name = \"udp").unwrap());
    let changed = head.replacen("198.18.0.12", "198.18.0.13", 1) + udp;
    assert_ne!(changed, config);
    std::fs::write(lab.config_path(), &changed).unwrap();
    let (ok, out) = lab.dsr(&["reload"]);
    assert!(!ok, "reload succeeded: {out}");
    assert!(out.contains("out of backend ids"), "{out}");
    assert!(out.contains("nothing was changed"), "{out}");
    assert_eq!(before, lab.state_of(), "a refused reload changed the state");
}

/// A config edited while the daemon was down is exactly what runs after the restart: the
/// writer diffs against what the adopted maps hold, so a removed VIP stops forwarding
/// (checked with real traffic) and vanishes from status.
#[test]
fn config_edited_while_down_is_what_runs_after_restart() {
    let mut lab = Lab::new("editdown", &[1, 1]);
    lab.start_dsr(false).unwrap_or_else(|e| panic!("{e:#}"));
    lab.udp_request(5000).expect("the UDP VIP answers");
    lab.tcp_request(5001, 1).expect("the TCP VIP answers");
    // SIGTERM: the data path keeps forwarding, for both VIPs, while the daemon is down.
    lab.stop_dsr();
    lab.udp_request(5002)
        .expect("the UDP VIP answers while dsr is down");
    let config = lab.config();
    let cut = config
        .find("\n[[vip]]\nname = \"udp")
        .expect("the UDP VIP in the config");
    std::fs::write(lab.config_path(), &config[..cut]).unwrap();
    lab.restart_dsr(false).unwrap_or_else(|e| panic!("{e:#}"));
    for sport in 5003..5008 {
        assert!(
            lab.udp_request(sport).is_err(),
            "the removed UDP VIP still forwards after the restart"
        );
    }
    lab.tcp_request(5010, 1).expect("the TCP VIP still answers");
    let status = lab.status();
    let names: Vec<&str> = status.vips.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["tcp-80"], "status after the restart");
    let (ok, out) = lab.dsr(&["stats"]);
    assert!(ok && !out.contains("udp-"), "{out}");
}

/// One daemon per instance: a second `dsr run` exits before it touches any map, pin or state
/// file. Commands find the running daemon from `--instance` alone, although its socket is not
/// the default one; an unknown instance and a caller without root get errors, not "down".
#[test]
fn a_second_daemon_changes_nothing_and_commands_find_the_first() {
    let mut lab = Lab::new("twice", &[1, 1]);
    lab.start_dsr(false).unwrap_or_else(|e| panic!("{e:#}"));
    let (ok, out) = lab.dsr(&["backend", "weight", "udp-53", "198.18.0.11", "3"]);
    assert!(ok, "{out}");
    let before = lab.state_of();
    let saved = std::fs::read(lab.dir.join("state/state.json")).unwrap();
    let pid = lab.status().pid.expect("a running daemon has a pid");

    // The second daemon's config differs, so a write of its own would show.
    let other = lab.dir.join("other.toml");
    std::fs::write(&other, lab.config().replace("weight = 1", "weight = 5")).unwrap();
    let second = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", lab.lb_ns))
        .arg(dsr_lab::lab::dsr_bin())
        .args(["run", "--config"])
        .arg(&other)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "a second daemon started:\n{err}");
    assert!(
        err.contains("already running") && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(
        lab.state_of(),
        before,
        "the second daemon changed the state"
    );
    assert_eq!(
        std::fs::read(lab.dir.join("state/state.json")).unwrap(),
        saved
    );
    assert_eq!(lab.status().pid, Some(pid));

    let cli = |args: &[&str]| {
        std::process::Command::new(dsr_lab::lab::dsr_bin())
            .args(args)
            .output()
            .unwrap()
    };
    let found = cli(&["status", "--json", "--instance", &lab.tag]);
    assert!(
        found.status.success(),
        "{}",
        String::from_utf8_lossy(&found.stderr)
    );
    let status: dsr::control::Status = serde_json::from_slice(&found.stdout).unwrap();
    assert_eq!((status.pid, status.vips.len()), (Some(pid), 2));

    let unknown = cli(&["status", "--instance", "no-such-dsr-instance"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no dsr instance"));

    // Not root: the socket (0600) refuses the caller, which must hear so.
    let nobody = std::process::Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(dsr_lab::lab::dsr_bin())
        .args(["status", "--config"])
        .arg(lab.config_path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&nobody.stderr);
    assert!(
        !nobody.status.success(),
        "status as nobody succeeded: {}",
        String::from_utf8_lossy(&nobody.stdout)
    );
    assert!(err.contains("permission denied"), "{err}");
}

/// The control socket under abuse: a request never finished is answered "malformed" after
/// the read timeout and closed; a flood of idle connections gets "busy" beyond the limit,
/// never a hang, and the daemon answers again once they time out; the data path and the
/// daemon's state are untouched.
#[test]
fn control_socket_survives_idle_floods_and_unfinished_requests() {
    let mut lab = Lab::new("sockflood", &[1, 1]);
    lab.start_dsr(false).unwrap_or_else(|e| panic!("{e:#}"));
    let before = lab.state_of();

    let mut partial = UnixStream::connect(lab.socket()).unwrap();
    partial.write_all(b"{\"cmd\":\"sta").unwrap();
    let started = std::time::Instant::now();
    let mut answer = String::new();
    BufReader::new(partial.try_clone().unwrap())
        .read_line(&mut answer)
        .unwrap();
    assert!(answer.contains("no complete request line"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(15));

    let idle: Vec<UnixStream> = (0..dsr::control::MAX_CONNECTIONS)
        .map(|_| UnixStream::connect(lab.socket()).unwrap())
        .collect();
    // Let the daemon accept them all.
    std::thread::sleep(Duration::from_millis(300));
    let (ok, out) = lab.dsr(&["status"]);
    assert!(!ok && out.contains("busy"), "{out}");
    // The data path does not care.
    lab.udp_request(47000)
        .expect("forwarding while the socket is flooded");
    lab.wait_for(
        "the idle connections time out",
        Duration::from_secs(10),
        || lab.dsr(&["status"]).0,
    );
    drop(idle);
    assert_eq!(before, lab.state_of());
}

/// Hundreds of checks to black-holed backends under a small file-descriptor limit: checks
/// run at most a budget at once, so the daemon never runs out of descriptors, the control
/// socket keeps answering (also while the VIPs' tables of 4 million slots are rebuilt, off the
/// daemon's loop), the black-holed backends are found down and the real one keeps serving.
#[test]
fn many_black_holed_checks_do_not_starve_the_daemon() {
    let mut lab = Lab::new("fdlimit", &[1]);
    let real = lab.backends[0].ip;
    let mut config = lab
        .header()
        .replace("max_backends = 64", "max_backends = 1024");
    for (name, port, proto) in [("udp-53", UDP_PORT, "udp"), ("tcp-80", 80, "tcp")] {
        config += &format!(
            "\n[[vip]]\nname = \"{name}\"\naddress = \"{VIP}\"\nport = {port}\nprotocol = \"{proto}\"\n[vip.check]\ntype = \"tcp\"\nport = 80\ninterval = \"500ms\"\ntimeout = \"500ms\"\nrise = 1\nfall = 1\n  [[vip.backend]]\n  address = \"{real}\"\n"
        );
        // Addresses on the lab's segment that nobody holds: a check waits out its timeout.
        for last in (30..100u8).chain(101..231) {
            config += &format!(
                "  [[vip.backend]]\n  address = \"198.18.0.{last}\"\n  mac = \"02:00:00:00:aa:{last:02x}\"\n"
            );
        }
    }
    lab.wrapper = vec!["prlimit".into(), "--nofile=256:256".into(), "--".into()];
    lab.start_dsr_with(&config, false)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        lab.dsr_log().contains("at most 48 at once"),
        "{}",
        lab.dsr_log()
    );
    let pid = lab.status().pid.unwrap();
    let fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    // All 400 black-holed backends are found down, while status keeps answering (each
    // `lab.status()` waits at most its 30 s for an answer), and their tables are written.
    let mut building_seen = false;
    lab.wait_for(
        "the black-holed backends to be down and out of the tables",
        Duration::from_secs(60),
        || {
            let st = lab.status();
            assert!(fds() < 256, "{} file descriptors open", fds());
            building_seen |= st.map_tables_building > 0;
            st.map_tables_building == 0
                && st
                    .vips
                    .iter()
                    .flat_map(|v| &v.backends)
                    .filter(|b| b.address != real)
                    .all(|b| b.health == dsr::control::HealthState::Down)
        },
    );
    assert!(
        building_seen,
        "status was never answered during a table build"
    );
    let st = lab.status();
    for v in &st.vips {
        let b = v.backends.iter().find(|b| b.address == real).unwrap();
        assert!(b.health.is_up() && b.in_table, "{b:?}");
        assert!(
            b.last_check.as_ref().is_some_and(|c| c.ok),
            "the real backend was never checked: {b:?}"
        );
    }
    assert_eq!(lab.udp_request(47500).unwrap(), "backend-1");
    assert!(
        !lab.dsr_log().contains("Too many open files"),
        "{}",
        lab.dsr_log()
    );
}
