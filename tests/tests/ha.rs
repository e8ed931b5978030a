//! Two dsr nodes as a keepalived VRRP pair (both `state BACKUP`, `nopreempt`, VRRPv3 with
//! 50 ms adverts), each holding the VIP only while its dsr announces the instance's group.
//! Ten long-lived TCP connections and a stream of new connections run through every
//! failover: the master's link going down, `dsr vip drain` on the master, the master's dsr
//! killed past the announcement grace, and the master's keepalived SIGKILLed. The two nodes
//! place every flow alike (same seed, same tables), so no connection may break; the longest
//! gap of each failover is measured and printed, never asserted.

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

    // 4. The master's keepalived SIGKILLed: its VIP address stays behind, but the other
    //    node becomes MASTER and its gratuitous ARP moves the client.
    assert!(
        holds_address(&lb2, &VIP.to_string()) && !holds_address(&lb1, &VIP.to_string()),
        "lb2 is MASTER before its keepalived dies"
    );
    let t = Instant::now();
    k2.signal(libc::SIGKILL);
    let deadline =
        Instant::now() + Duration::from_secs(2) + Duration::from_secs_f64(4.0 * advert());
    while !holds_address(&lb1, &VIP.to_string()) {
        assert!(
            Instant::now() < deadline,
            "lb1 did not take over from a dead keepalived"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!("lb2 keepalived SIGKILL: lb1 MASTER after {:?}", t.elapsed());
    // lb2 still holds the address, but lb1's gratuitous ARP moved the client to it.
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
        neigh.contains(&dsr_lab::lab::mac_str(dsr_lab::lab::LB_MAC)),
        "the client still sends to {neigh}"
    );
    std::thread::sleep(Duration::from_secs(1));
    let (long, fresh, broken) = traffic.since(t);
    eprintln!(
        "lb2 keepalived SIGKILL: longest gap: long-lived {long:?}, new connections {fresh:?}; {broken} long-lived broke"
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
