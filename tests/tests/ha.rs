//! Two dsr nodes as a keepalived VRRP pair (both `state BACKUP`, `nopreempt`, VRRPv3 with
//! 50 ms adverts), each holding the VIP only while its dsr announces the instance's group.
//! Ten long-lived TCP connections and a stream of new connections run through every
//! failover: the master's link going down, `dsr vip drain` on the master, the master's dsr
//! killed past the announcement grace, and the master's keepalived SIGKILLed. The two nodes
//! place every flow alike (same seed, same tables), so no connection may break; the longest
//! gap of each failover is measured and printed, never asserted.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use dsr_lab::lab::{
    Conn, Keepalived, Lab, Options, VIP, connect_with_timeout, dsr_bin, holds_address,
    in_netns_path,
};

const LONG_LIVED: usize = 10;
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

/// One sample: when, which stream (0..LONG_LIVED: a long-lived connection; LONG_LIVED: a
/// new connection), and whether it was answered.
type Sample = (Instant, usize, bool);

/// The client's traffic, in its namespace: each long-lived connection asks once per round,
/// then one new connection asks once; a round every 50 ms.
struct Traffic {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Option<String>>>>,
}

impl Traffic {
    fn start(lab: &Lab) -> Traffic {
        let conns: Vec<Conn> = (0..LONG_LIVED)
            .map(|i| {
                let conn = lab
                    .tcp_connect(45000 + i as u16)
                    .expect("a long-lived connection");
                // Longer than any failover (keepalived's default adverts take ~3.6 s).
                conn.set_timeout(Duration::from_secs(10)).unwrap();
                conn
            })
            .collect();
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ns, client) = (format!("/run/netns/{}", lab.client_ns), lab.client_ip);
        let (s, st) = (samples.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            in_netns_path(&ns);
            let mut conns: Vec<Option<Conn>> = conns.into_iter().map(Some).collect();
            // Who answered each connection first: a connection must stay on its backend.
            let mut first: Vec<Option<String>> = vec![None; LONG_LIVED];
            // Bounded: at most 3000 rounds (150 s), and new connections from 3000 ports.
            for round in 0..3000u16 {
                if st.load(Ordering::Relaxed) {
                    break;
                }
                for (i, slot) in conns.iter_mut().enumerate() {
                    let Some(conn) = slot else { continue };
                    let answer = conn.ask().ok();
                    let ok = answer.is_some() && (first[i].is_none() || first[i] == answer);
                    if first[i].is_none() {
                        first[i] = answer.clone();
                    }
                    if !ok {
                        eprintln!("connection {i}: {answer:?}, first {:?}", first[i]);
                        *slot = None;
                    }
                    s.lock().unwrap().push((Instant::now(), i, ok));
                }
                let fresh = connect_with_timeout(client, 46000 + round, Duration::from_secs(1))
                    .map(Conn::from)
                    .and_then(|mut c| c.ask());
                s.lock()
                    .unwrap()
                    .push((Instant::now(), LONG_LIVED, fresh.is_ok()));
                std::thread::sleep(Duration::from_millis(50));
            }
            conns
                .iter()
                .zip(first)
                .map(|(c, f)| c.as_ref().and(f))
                .collect()
        });
        Traffic {
            samples,
            stop,
            thread: Some(thread),
        }
    }

    /// Since `from`: the longest gap between answers of any long-lived connection, the
    /// longest of the new connections, and the long-lived connections that broke.
    fn since(&self, from: Instant) -> (Duration, Duration, usize) {
        let samples = self.samples.lock().unwrap();
        let mut last = [from; LONG_LIVED + 1];
        let mut gap = [Duration::ZERO; LONG_LIVED + 1];
        let mut broken = 0;
        for &(t, i, ok) in samples.iter().filter(|s| s.0 >= from) {
            if ok {
                gap[i] = gap[i].max(t - last[i]);
                last[i] = t;
            } else if i < LONG_LIVED {
                broken += 1;
            }
        }
        let long = gap[..LONG_LIVED].iter().max().copied().unwrap_or_default();
        (long, gap[LONG_LIVED], broken)
    }

    /// Stops the traffic; returns the long-lived connections still on their first backend.
    fn stop(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        let kept = self.thread.take().unwrap().join().unwrap();
        kept.iter().filter(|k| k.is_some()).count()
    }
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
    // Both nodes must place every flow alike: `dsr compare` of their status finds the same
    // table digests.
    let (a, b) = (lab.dir.join("lb1.json"), lab.dir.join("lb2.json"));
    for (path, (ok, out)) in [
        (&a, lab.dsr(&["status", "--json"])),
        (&b, lab.dsr2(&["status", "--json"])),
    ] {
        assert!(ok, "{out}");
        std::fs::write(path, out).unwrap();
    }
    let out = std::process::Command::new(dsr_bin())
        .arg("compare")
        .args([&a, &b])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the nodes' tables differ: {}",
        String::from_utf8_lossy(&out.stdout)
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
    assert_eq!(kept, LONG_LIVED, "connections kept on their first backend");
    k1.signal(libc::SIGTERM);
}
