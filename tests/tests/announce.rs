//! The announcement files a VRRP or routing daemon follows: `0` while a VIP is announced
//! (not drained, at least `min_usable` backends take new flows), `1` when withdrawn; refreshed
//! every second, so `dsr announce-check --grace` fails once dsr is gone; `dsr stop` withdraws
//! at once, SIGTERM does not.

use std::{process::Command, time::Duration};

use dsr_lab::lab::{HEALTH_PORT, Keepalived, Lab, dsr_bin, holds_address};

fn announce_check(lab: &Lab, vip: &str, grace: &str) -> (bool, String) {
    let file = lab.dir.join("state/announce").join(vip);
    let out = Command::new(dsr_bin())
        .args(["announce-check", "--grace", grace])
        .arg(&file)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn file(lab: &Lab, vip: &str) -> String {
    std::fs::read_to_string(lab.dir.join("state/announce").join(vip))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

#[test]
fn announcement_files_follow_usability_drain_and_the_daemon() {
    let mut lab = Lab::new("announce", &[1, 1]);
    let check = format!(
        "[vip.check]\ntype = \"http\"\nport = {HEALTH_PORT}\npath = \"/health\"\ninterval = \"300ms\"\ntimeout = \"300ms\"\nrise = 1\nfall = 1\n"
    );
    // udp-53 needs both backends; tcp-80 one.
    let config = lab
        .config()
        .replacen(
            "protocol = \"udp\"\n",
            &format!("protocol = \"udp\"\nmin_usable = 2\n{check}"),
            1,
        )
        .replacen(
            "protocol = \"tcp\"\n",
            &format!("protocol = \"tcp\"\n{check}"),
            1,
        )
        .replacen(
            "flow_table_size",
            "metrics = \"127.0.0.1:9464\"\nflow_table_size",
            1,
        )
        + "\n[[announce]]\nname = \"VI_1\"\nvips = [\"udp-53\", \"tcp-80\"]\n\n[[announce]]\nname = \"either\"\nvips = [\"udp-53\", \"tcp-80\"]\nrequire = \"any\"\n";
    lab.start_dsr_with(&config, false)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let wait = |lab: &Lab, vip: &str, want: &str| {
        lab.wait_for(
            &format!("{vip} to be {want}"),
            Duration::from_secs(5),
            || file(lab, vip) == want,
        );
    };
    wait(&lab, "udp-53", "0");
    wait(&lab, "tcp-80", "0");
    assert!(announce_check(&lab, "udp-53", "3s").0);

    // One backend down: below udp-53's min_usable, still enough for tcp-80.
    lab.set_health(0, false);
    wait(&lab, "udp-53", "1");
    assert_eq!(file(&lab, "tcp-80"), "0");
    let (ok, why) = announce_check(&lab, "udp-53", "3s");
    assert!(!ok && why.contains("withdrawn"), "{why}");
    // A group needing all its VIPs follows; one needing any does not.
    assert_eq!(file(&lab, "groups/VI_1"), "1");
    assert_eq!(file(&lab, "groups/either"), "0");
    let st = lab.status();
    let udp = st.vips.iter().find(|v| v.name == "udp-53").unwrap();
    assert!(!udp.announced && udp.min_usable == 2, "{udp:?}");
    let groups: Vec<(&str, bool)> = st
        .announce_groups
        .iter()
        .map(|g| (g.name.as_str(), g.announced))
        .collect();
    assert_eq!(groups, [("VI_1", false), ("either", true)]);
    let (_, view) = lab.dsr(&["status"]);
    assert!(
        view.contains("announce group VI_1 (all of udp-53, tcp-80): WITHDRAWN")
            && view.contains("announce group either (any of udp-53, tcp-80): announced"),
        "{view}"
    );
    let metrics = {
        use std::io::{Read, Write};
        dsr_lab::lab::in_netns(&lab.lb_ns, || {
            let mut s = std::net::TcpStream::connect("127.0.0.1:9464").expect("metrics endpoint");
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        })
    };
    assert!(
        metrics.contains("dsr_announce_group_announced{group=\"VI_1\"} 0"),
        "{metrics}"
    );
    lab.set_health(0, true);
    wait(&lab, "udp-53", "0");
    wait(&lab, "groups/VI_1", "0");

    // Drained: withdrawn at once, and still forwarding what arrives.
    let (ok, out) = lab.dsr(&["vip", "drain", "tcp-80"]);
    assert!(ok, "{out}");
    assert_eq!(file(&lab, "tcp-80"), "1", "drain withdraws at once");
    lab.tcp_request(44500, 1)
        .expect("a drained VIP still forwards");
    let (ok, out) = lab.dsr(&["vip", "undrain", "tcp-80"]);
    assert!(ok, "{out}");
    assert_eq!(file(&lab, "tcp-80"), "0");

    // SIGTERM: the files stay as they were, and go stale after the grace.
    lab.stop_dsr();
    assert_eq!(file(&lab, "udp-53"), "0");
    std::thread::sleep(Duration::from_millis(2500));
    let (ok, why) = announce_check(&lab, "udp-53", "2s");
    assert!(!ok && why.contains("not refreshed"), "{why}");
    // A restart refreshes them.
    lab.restart_dsr(false).unwrap_or_else(|e| panic!("{e:#}"));
    lab.wait_for("the heartbeat", Duration::from_secs(5), || {
        announce_check(&lab, "udp-53", "2s").0
    });
    // dsr stop withdraws everything at once.
    let (ok, out) = lab.dsr(&["stop"]);
    assert!(ok, "{out}");
    assert_eq!(
        (file(&lab, "udp-53").as_str(), file(&lab, "tcp-80").as_str()),
        ("1", "1")
    );
}

/// Waits until keepalived holds the address (`want`) or not, and says how long it took.
fn wait_held(lab: &Lab, addr: &str, what: &str, secs: u64, want: bool) -> Duration {
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        if holds(lab, addr) == want {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = std::fs::read_to_string(lab.dir.join("keepalived-lb.log")).unwrap_or_default();
    panic!("timed out after {secs} s waiting for {what}\n{log}");
}

/// Whether keepalived holds the instance's address, i.e. is MASTER.
fn holds(lab: &Lab, addr: &str) -> bool {
    holds_address(&lab.lb_ns, addr)
}

#[test]
fn keepalived_holds_the_vip_only_while_dsr_announces_it() {
    // The README's track_script, with a short grace so the test is quick.
    let mut lab = Lab::new("vrrp", &[1, 1]);
    lab.start_dsr(false).unwrap_or_else(|e| panic!("{e:#}"));
    let addr = "198.18.0.101";
    let announce = lab.dir.join("state/announce/tcp-80");
    let config = format!(
        r#"vrrp_script dsr_web {{
    script "{dsr} announce-check {file} --grace 2s"
    interval 1
    fall 1
    rise 1
}}
vrrp_instance VI_1 {{
    state BACKUP
    nopreempt
    interface eth0
    virtual_router_id 51
    priority 100
    advert_int 1
    virtual_ipaddress {{
        {addr}/32 dev eth0
    }}
    track_script {{
        dsr_web
    }}
}}
"#,
        dsr = dsr_bin().display(),
        file = announce.display(),
    );
    let keepalived = Keepalived::start(&lab.lb_ns, &lab.dir, "lb", &config);
    // Alone on the segment, BACKUP becomes MASTER after the master-down interval (~3.6 s).
    wait_held(&lab, addr, "keepalived to become MASTER", 10, true);

    // Drained: the script fails at its next run, and keepalived gives the address up.
    let (ok, out) = lab.dsr(&["vip", "drain", "tcp-80"]);
    assert!(ok, "{out}");
    let took = wait_held(
        &lab,
        addr,
        "keepalived to leave MASTER after the drain",
        4,
        false,
    );
    eprintln!("withdrawn {took:?} after dsr vip drain");
    let (ok, out) = lab.dsr(&["vip", "undrain", "tcp-80"]);
    assert!(ok, "{out}");
    wait_held(
        &lab,
        addr,
        "keepalived to be MASTER again after the undrain",
        10,
        true,
    );

    // dsr killed: nothing refreshes the file, and once the grace is over keepalived withdraws.
    lab.kill_dsr();
    let took = wait_held(
        &lab,
        addr,
        "keepalived to withdraw after the grace",
        8,
        false,
    );
    eprintln!("withdrawn {took:?} after kill -9 (grace 2 s)");
    // A restart over the pinned data path announces again.
    lab.restart_dsr(false).unwrap_or_else(|e| panic!("{e:#}"));
    wait_held(
        &lab,
        addr,
        "keepalived to be MASTER after dsr's restart",
        10,
        true,
    );
    drop(keepalived);
}

#[test]
fn announce_watch_runs_the_commands_of_each_change() {
    // What a bird2 node runs: `--on-announce "birdc enable vips" --on-withdraw "birdc disable
    // vips"`; here the commands append to a file, so each run is seen.
    let mut lab = Lab::new("watch", &[1, 1]);
    lab.start_dsr(false).unwrap_or_else(|e| panic!("{e:#}"));
    let runs = lab.dir.join("runs");
    let file = lab.dir.join("state/announce/tcp-80");
    lab.wait_for("the announcement file", Duration::from_secs(5), || {
        file.exists()
    });
    let mut watch = Command::new(dsr_bin())
        .arg("announce-watch")
        .arg(&file)
        .args(["--grace", "2s", "--interval", "200ms"])
        .args(["--on-announce", &format!("echo up >> {}", runs.display())])
        // The first withdrawal fails, and is run again at the next read.
        .args([
            "--on-withdraw",
            &format!(
                "if [ -e {once} ]; then echo down >> {runs}; else touch {once}; exit 1; fi",
                once = lab.dir.join("failed-once").display(),
                runs = runs.display()
            ),
        ])
        .stderr(std::fs::File::create(lab.dir.join("watch.log")).unwrap())
        .spawn()
        .unwrap();
    let seen = |want: &[&str]| {
        let text = std::fs::read_to_string(&runs).unwrap_or_default();
        text.lines().collect::<Vec<_>>() == want
    };
    lab.wait_for("up at start", Duration::from_secs(2), || seen(&["up"]));
    let (ok, out) = lab.dsr(&["vip", "drain", "tcp-80"]);
    assert!(ok, "{out}");
    lab.wait_for("down after the drain", Duration::from_secs(2), || {
        seen(&["up", "down"])
    });
    let (ok, out) = lab.dsr(&["vip", "undrain", "tcp-80"]);
    assert!(ok, "{out}");
    lab.wait_for("up after the undrain", Duration::from_secs(2), || {
        seen(&["up", "down", "up"])
    });
    // Only changes run a command: nothing more while the state holds.
    std::thread::sleep(Duration::from_millis(600));
    assert!(seen(&["up", "down", "up"]));
    // dsr killed: withdrawn once the grace is over, by the watcher alone.
    lab.kill_dsr();
    lab.wait_for("down after the grace", Duration::from_secs(5), || {
        seen(&["up", "down", "up", "down"])
    });
    let _ = watch.kill();
    let _ = watch.wait();
    let log = std::fs::read_to_string(lab.dir.join("watch.log")).unwrap();
    assert!(
        log.contains("not refreshed") && log.contains("failed"),
        "{log}"
    );
}
