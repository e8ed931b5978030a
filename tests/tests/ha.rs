//! Two dsr nodes as a keepalived VRRP pair (both `state BACKUP`, `nopreempt`, VRRPv3 with
//! 50 ms adverts), each holding the VIP only while its dsr announces the instance's group.
//! Ten long-lived TCP connections and a stream of new connections run through every
//! failover: the master's link going down, `dsr vip drain` on the master, the master's dsr
//! killed past the announcement grace, the master's keepalived stopped, and SIGKILLed. The two nodes
//! place every flow alike (same seed, same tables), so no connection may break; the longest
//! gap of each failover is measured and printed, never asserted. With `use_vmac`, only the
//! live master receives for the virtual MAC.

use std::time::{Duration, Instant};

use dsr_lab::lab::{Keepalived, Lab, Options, Traffic, VIP, dsr_bin, holds_address};

const GRACE: &str = "2s";
/// VRRPv3 advertisement interval in seconds: a master is declared dead after about 3.4 of
/// them. `DSR_HA_ADVERT=1` measures keepalived's default.
fn advert() -> f64 {
    std::env::var("DSR_HA_ADVERT")
        .ok()
        .and_then(|a| a.parse().ok())
        .unwrap_or(0.05)
}

fn keepalived_config(lab: &Lab, state: &str, priority: u8) -> String {
    format!(
        r#"global_defs {{
    vrrp_version 3
}}
vrrp_script dsr_vi1 {{
    script "{dsr} announce-check {dir}/{state}/announce/groups/VI_1 --grace {GRACE}"
    interval 1
    fall 1
    rise 1
}}
vrrp_instance VI_1 {{
    state BACKUP
    nopreempt
    interface eth0
    virtual_router_id 51
    priority {priority}
    advert_int {advert}
    virtual_ipaddress {{
        {VIP}/32 dev eth0
    }}
    track_script {{
        dsr_vi1
    }}
}}
"#,
        dsr = dsr_bin().display(),
        dir = lab.dir.display(),
        advert = advert(),
    )
}

/// Waits (at most 2 s past `from`) until `ns` holds the VIP and the other does not; then
/// lets traffic run on for a second and reports the failover.
fn failover(lab: &Lab, traffic: &Traffic, what: &str, from: Instant, to_ns: &str, grace: Duration) {
    let deadline = from + grace + Duration::from_secs(2) + Duration::from_secs_f64(4.0 * advert());
    let other = if to_ns == lab.lb_ns {
        &lab.lb2_ns
    } else {
        &lab.lb_ns
    };
    let moved =
        || holds_address(to_ns, &VIP.to_string()) && !holds_address(other, &VIP.to_string());
    while !moved() {
        if Instant::now() > deadline {
            panic!(
                "{what}: {to_ns} did not take the VIP over by the deadline\n{}\n{}",
                std::fs::read_to_string(lab.dir.join("keepalived-lb1.log")).unwrap_or_default(),
                std::fs::read_to_string(lab.dir.join("keepalived-lb2.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let took = from.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let (long, fresh, broken) = traffic.since(from);
    eprintln!(
        "{what}: VIP moved after {took:?}; longest gap: long-lived {long:?}, new connections {fresh:?}; {broken} long-lived broke"
    );
    assert_eq!(broken, 0, "{what}: long-lived connections broke");
}

/// Waits until keepalived on `ns` is MASTER (holds the VIP).
fn wait_master(ns: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !holds_address(ns, &VIP.to_string()) {
        assert!(
            Instant::now() < deadline,
            "{what}: {ns} never became MASTER"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_vrrp_pair_keeps_every_connection_through_each_failover() {
    let mut lab = Lab::with(
        "vrrp2",
        &[1, 1, 1],
        Options {
            pair: true,
            ..Options::default()
        },
    );
    let config =
        lab.config() + "\n[[announce]]\nname = \"VI_1\"\nvips = [\"tcp-80\", \"udp-53\"]\n";
    lab.start_dsr_with(&config, false)
        .unwrap_or_else(|e| panic!("{e:#}"));
    lab.start_dsr2().unwrap_or_else(|e| panic!("{e:#}"));
    // Both nodes must place every flow alike.
    lab.assert_same_tables();
    // A frame for a MAC nobody has is flooded to both nodes: neither may forward it (the
    // backend would get it twice), both count it as not theirs.
    let not_ours = |st: dsr::control::Status| {
        st.reasons
            .iter()
            .find(|r| r.reason == "not_our_mac")
            .map_or(0, |r| r.packets)
    };
    let status2 = |lab: &Lab| -> dsr::control::Status {
        let (ok, out) = lab.dsr2(&["status", "--json"]);
        assert!(ok, "{out}");
        serde_json::from_str(&out).unwrap()
    };
    let vip_packets =
        |st: &dsr::control::Status| -> u64 { st.vips.iter().map(|v| v.traffic.packets).sum() };
    let (s1, s2) = (lab.status(), status2(&lab));
    let before = (
        vip_packets(&s1),
        vip_packets(&s2),
        not_ours(s1),
        not_ours(s2),
    );
    for sport in 47000..47010u16 {
        let frame = dsr_lab::frames::flow_frame(
            [0x02, 0, 0, 0, 0, 0x99],
            dsr_lab::lab::CLIENT_MAC,
            lab.client_ip.into(),
            sport,
            VIP.into(),
            80,
            6,
        );
        dsr_lab::lab::send_frame(&lab.client_ns, "eth0", frame).unwrap();
    }
    lab.wait_for(
        "both nodes to count the flooded frames",
        Duration::from_secs(2),
        || {
            let (s1, s2) = (lab.status(), status2(&lab));
            not_ours(s1) >= before.2 + 10 && not_ours(s2) >= before.3 + 10
        },
    );
    let (s1, s2) = (lab.status(), status2(&lab));
    assert_eq!(
        (vip_packets(&s1), vip_packets(&s2)),
        (before.0, before.1),
        "a node forwarded a frame addressed to another MAC"
    );

    let (lb1, lb2) = (lab.lb_ns.clone(), lab.lb2_ns.clone());
    let mut k1 = Keepalived::start(
        &lb1,
        &lab.dir,
        "lb1",
        &keepalived_config(&lab, "state", 100),
    );
    wait_master(&lb1, "start");
    let mut k2 = Keepalived::start(
        &lb2,
        &lab.dir,
        "lb2",
        &keepalived_config(&lab, "state2", 90),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        holds_address(&lb1, &VIP.to_string()) && !holds_address(&lb2, &VIP.to_string()),
        "nopreempt: lb1 stays MASTER"
    );
    let traffic = Traffic::start(&lab);
    std::thread::sleep(Duration::from_secs(1));

    // 1. The master's link goes down.
    let t = Instant::now();
    dsr_lab::lab::sh(&["ip", "-n", &lab.switch_ns, "link", "set", "port-lb", "down"]).unwrap();
    failover(&lab, &traffic, "lb1 link down", t, &lb2, Duration::ZERO);
    dsr_lab::lab::sh(&["ip", "-n", &lab.switch_ns, "link", "set", "port-lb", "up"]).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        holds_address(&lb2, &VIP.to_string()) && !holds_address(&lb1, &VIP.to_string()),
        "nopreempt: lb2 stays MASTER after lb1's link returns"
    );

    // 2. `dsr vip drain` on the master withdraws its group.
    let t = Instant::now();
    let (ok, out) = lab.dsr2(&["vip", "drain", "tcp-80"]);
    assert!(ok, "{out}");
    failover(&lab, &traffic, "lb2 dsr vip drain", t, &lb1, Duration::ZERO);
    let (ok, out) = lab.dsr2(&["vip", "undrain", "tcp-80"]);
    assert!(ok, "{out}");

    // 3. The master's dsr killed: its pinned data path forwards on; after the grace the
    //    stale announcement hands the VIP over.
    let t = Instant::now();
    lab.kill_dsr();
    failover(
        &lab,
        &traffic,
        "lb1 dsr kill -9 (grace 2 s)",
        t,
        &lb2,
        Duration::from_secs(2),
    );
    lab.restart_dsr(false).unwrap_or_else(|e| panic!("{e:#}"));
    std::thread::sleep(Duration::from_secs(2));

    // 4. The master's keepalived stopped cleanly (SIGTERM): it hands over at once.
    let t = Instant::now();
    k2.signal(libc::SIGTERM);
    failover(
        &lab,
        &traffic,
        "lb2 keepalived stop",
        t,
        &lb1,
        Duration::ZERO,
    );
    let _k2 = Keepalived::start(
        &lb2,
        &lab.dir,
        "lb2",
        &keepalived_config(&lab, "state2", 90),
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        holds_address(&lb1, &VIP.to_string()) && !holds_address(&lb2, &VIP.to_string()),
        "nopreempt: lb1 stays MASTER while lb2's keepalived returns"
    );

    // 5. The master's keepalived SIGKILLed: its VIP address stays behind, but the other
    //    node becomes MASTER and its gratuitous ARP moves the client.
    let t = Instant::now();
    k1.signal(libc::SIGKILL);
    let deadline =
        Instant::now() + Duration::from_secs(2) + Duration::from_secs_f64(4.0 * advert());
    while !holds_address(&lb2, &VIP.to_string()) {
        assert!(
            Instant::now() < deadline,
            "lb2 did not take over from a dead keepalived"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!("lb1 keepalived SIGKILL: lb2 MASTER after {:?}", t.elapsed());
    assert!(
        holds_address(&lb1, &VIP.to_string()),
        "a killed keepalived leaves its address behind"
    );
    // lb1 still holds the address, but lb2's gratuitous ARP moved the client to it.
    let neigh = dsr_lab::lab::sh(&[
        "ip",
        "-n",
        &lab.client_ns,
        "neigh",
        "show",
        &VIP.to_string(),
    ])
    .unwrap();
    assert!(
        neigh.contains(&dsr_lab::lab::mac_str(dsr_lab::lab::LB2_MAC)),
        "the client still sends to {neigh}"
    );
    std::thread::sleep(Duration::from_secs(1));
    let (long, fresh, broken) = traffic.since(t);
    eprintln!(
        "lb1 keepalived SIGKILL: longest gap: long-lived {long:?}, new connections {fresh:?}; {broken} long-lived broke"
    );
    assert_eq!(
        broken, 0,
        "keepalived SIGKILL: long-lived connections broke"
    );

    let kept = traffic.stop();
    assert_eq!(
        kept,
        dsr_lab::lab::LONG_LIVED,
        "connections kept on their first backend"
    );
    k1.signal(libc::SIGTERM);
}

const VMAC: [u8; 6] = [0x00, 0x00, 0x5e, 0x00, 0x01, 51];

fn keepalived_vmac_config(lab: &Lab, toml: &str, priority: u8) -> String {
    format!(
        r#"global_defs {{
    vrrp_version 3
}}
vrrp_instance VI_1 {{
    state BACKUP
    nopreempt
    interface eth0
    use_vmac
    virtual_router_id 51
    priority {priority}
    advert_int {advert}
    virtual_ipaddress {{
        {VIP}/32
    }}
    notify "{dsr} vrrp-notify --config {config}"
}}
"#,
        dsr = dsr_bin().display(),
        config = lab.dir.join(toml).display(),
        advert = advert(),
    )
}

/// Whether the node in `ns` holds the VIP on its vmac interface (keepalived is MASTER).
fn holds_on_vmac(ns: &str) -> bool {
    let out = std::process::Command::new("ip")
        .args(["-n", ns, "-4", "addr", "show", "dev", "vrrp.51"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains(&format!("inet {VIP}/"))
}

/// The group's VRRP view in a node's status.
fn vrrp_of(out: &str) -> (bool, String) {
    let st: dsr::control::Status = serde_json::from_str(out).unwrap();
    let g = &st.announce_groups[0];
    (g.vrrp_master, g.vrrp.clone().unwrap_or_default())
}

/// Frames a node dropped as addressed to the vmac of an instance it is not master of.
fn not_master(out: &str) -> u64 {
    let st: dsr::control::Status = serde_json::from_str(out).unwrap();
    st.reasons
        .iter()
        .find(|r| r.reason == "not_vrrp_master")
        .map_or(0, |r| r.packets)
}

/// Sends `n` frames to the VIP addressed to the vmac straight into a node's interface (from
/// its switch port), as a flooding switch would.
fn vmac_frames_into(lab: &Lab, port: &str, n: u16) {
    for sport in 47100..47100 + n {
        let frame = dsr_lab::frames::flow_frame(
            VMAC,
            dsr_lab::lab::CLIENT_MAC,
            lab.client_ip.into(),
            sport,
            VIP.into(),
            80,
            6,
        );
        dsr_lab::lab::send_frame(&lab.switch_ns, port, frame).unwrap();
    }
}

/// Frames to the vmac sent into a node that is not master are dropped (counted as
/// `not_vrrp_master`): tried for up to 2 s, since the node acts on keepalived's death at its
/// next second.
fn assert_drops_vmac_frames(lab: &Lab, node: &str) {
    let status = |lab: &Lab| {
        let (ok, out) = if node == "lb1" {
            lab.dsr(&["status", "--json"])
        } else {
            lab.dsr2(&["status", "--json"])
        };
        assert!(ok, "{out}");
        out
    };
    let port = if node == "lb1" { "port-lb" } else { "port-lb2" };
    let before = not_master(&status(lab));
    lab.wait_for(
        &format!("{node} to drop frames to the vmac"),
        Duration::from_secs(2),
        || {
            vmac_frames_into(lab, port, 5);
            std::thread::sleep(Duration::from_millis(50));
            not_master(&status(lab)) >= before + 5
        },
    );
}

#[test]
fn the_vrrp_virtual_mac_is_received_only_by_the_live_master() {
    let mut lab = Lab::with(
        "vmac",
        &[1, 1, 1],
        Options {
            pair: true,
            ..Options::default()
        },
    );
    // The VIP lives on keepalived's vmac interface: eth0 must not answer ARP for it with
    // its own MAC.
    for ns in [&lab.lb_ns, &lab.lb2_ns] {
        dsr_lab::lab::write_sysctl(ns, "net.ipv4.conf.eth0.arp_ignore", "1").unwrap();
    }
    let config = lab.config()
        + "\n[[announce]]\nname = \"VI_1\"\nvips = [\"tcp-80\", \"udp-53\"]\nvmac_vrid = 51\n";
    lab.start_dsr_with(&config, false)
        .unwrap_or_else(|e| panic!("{e:#}"));
    lab.start_dsr2().unwrap_or_else(|e| panic!("{e:#}"));
    let (lb1, lb2) = (lab.lb_ns.clone(), lab.lb2_ns.clone());
    let _k1 = Keepalived::start(
        &lb1,
        &lab.dir,
        "lb1",
        &keepalived_vmac_config(&lab, "dsr.toml", 100),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !holds_on_vmac(&lb1) {
        assert!(Instant::now() < deadline, "lb1 never became MASTER");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut k2 = Keepalived::start(
        &lb2,
        &lab.dir,
        "lb2",
        &keepalived_vmac_config(&lab, "dsr2.toml", 90),
    );
    let status2 = |lab: &Lab| {
        let (ok, out) = lab.dsr2(&["status", "--json"]);
        assert!(ok, "{out}");
        out
    };
    let status1 = |lab: &Lab| {
        let (ok, out) = lab.dsr(&["status", "--json"]);
        assert!(ok, "{out}");
        out
    };
    lab.wait_for(
        "lb1 master and lb2 backup in dsr",
        Duration::from_secs(5),
        || vrrp_of(&status1(&lab)).0 && vrrp_of(&status2(&lab)).1.contains("BACKUP"),
    );
    assert!(!vrrp_of(&status2(&lab)).0);

    // The client reaches the VIP at the virtual MAC, through lb1.
    let traffic = Traffic::start(&lab);
    std::thread::sleep(Duration::from_millis(500));
    let neigh = dsr_lab::lab::sh(&[
        "ip",
        "-n",
        &lab.client_ns,
        "neigh",
        "show",
        &VIP.to_string(),
    ])
    .unwrap();
    assert!(
        neigh.contains("00:00:5e:00:01:33"),
        "the client sends to {neigh}"
    );
    // The backup does not take frames for the vmac: it drops them (its kernel must not
    // answer for the VIP either).
    assert_drops_vmac_frames(&lab, "lb2");

    // 1. lb1's link down: lb2 becomes master and receives for the vmac.
    let t = Instant::now();
    dsr_lab::lab::sh(&["ip", "-n", &lab.switch_ns, "link", "set", "port-lb", "down"]).unwrap();
    lab.wait_for(
        "lb2 to receive for the vmac",
        Duration::from_secs(2),
        || vrrp_of(&status2(&lab)).0,
    );
    std::thread::sleep(Duration::from_secs(1));
    let (long, fresh, broken) = traffic.since(t);
    eprintln!(
        "vmac, lb1 link down: longest gap: long-lived {long:?}, new connections {fresh:?}; {broken} broke"
    );
    assert_eq!(broken, 0, "long-lived connections broke");
    dsr_lab::lab::sh(&["ip", "-n", &lab.switch_ns, "link", "set", "port-lb", "up"]).unwrap();
    lab.wait_for("lb1 to be backup again", Duration::from_secs(5), || {
        vrrp_of(&status1(&lab)).1.contains("BACKUP")
    });
    assert!(!vrrp_of(&status1(&lab)).0);

    // 2. lb2's keepalived killed: its vmac interface and address stay, but its dsr stops
    //    receiving for the vmac (keepalived is gone), and lb1 takes over.
    let t = Instant::now();
    k2.signal(libc::SIGKILL);
    lab.wait_for(
        "lb2's dsr to see keepalived gone",
        Duration::from_secs(3),
        || {
            let (m, why) = vrrp_of(&status2(&lab));
            !m && why.contains("gone")
        },
    );
    assert!(
        holds_on_vmac(&lb2),
        "a killed keepalived leaves its address behind"
    );
    lab.wait_for(
        "lb1 to receive for the vmac",
        Duration::from_secs(3),
        || vrrp_of(&status1(&lab)).0,
    );
    assert_drops_vmac_frames(&lab, "lb2");
    std::thread::sleep(Duration::from_secs(1));
    let (long, fresh, broken) = traffic.since(t);
    eprintln!(
        "vmac, lb2 keepalived SIGKILL: longest gap: long-lived {long:?}, new connections {fresh:?}; {broken} broke"
    );
    assert_eq!(broken, 0, "long-lived connections broke");
    assert_eq!(traffic.stop(), dsr_lab::lab::LONG_LIVED);
}
