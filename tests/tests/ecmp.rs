//! Two dsr nodes announcing the VIP over eBGP (bird2) to a router that spreads flows over
//! both by ECMP, with BFD at 50 ms x 3. Each node's `dsr announce-watch` enables or disables
//! the bird protocol holding the VIP's route. Ten long-lived TCP connections (spread over
//! both nodes by the router's L4 hash) and a stream of new connections run through: a drain,
//! a node's link going down behind the switch (only BFD sees it), a node's bird killed, and a
//! node's dsr gone past the grace. Every flow is placed alike by both nodes, so none may
//! break; the gaps are measured and printed, never asserted.

use std::{
    process::{Child, Command},
    time::{Duration, Instant},
};

use dsr_lab::lab::{Bird, LB_IP, LB2_IP, Lab, Options, Traffic, VIP, dsr_bin, sh, write_sysctl};

const ROUTER: &str = "198.18.0.254";
const GRACE: &str = "2s";

/// `DSR_ECMP_BFD=off` measures without BFD: the BGP hold time (3 s) finds a silent node.
fn bfd() -> bool {
    std::env::var("DSR_ECMP_BFD").map_or(true, |v| v != "off")
}

const BFD: &str = r#"protocol bfd {
    interface "eth0" {
        min rx interval 50 ms;
        min tx interval 50 ms;
        multiplier 3;
    };
}
"#;

fn router_config() -> String {
    format!(
        r#"router id {ROUTER};
protocol device {{ scan time 1; }}
protocol kernel {{
    ipv4 {{ import none; export all; }};
    merge paths on;
}}
{BFD}
template bgp lbs {{
    local {ROUTER} as 65000;
    ipv4 {{ import all; export none; }};
    connect delay time 1;
    connect retry time 1;
    error wait time 1, 5;
    hold time 3;
    keepalive time 1;
    bfd {bfd};
}}
protocol bgp lb1 from lbs {{ neighbor {LB_IP} as 65001; }}
protocol bgp lb2 from lbs {{ neighbor {LB2_IP} as 65002; }}
"#,
        bfd = if bfd() { "on" } else { "off" }
    )
}

fn node_config(ip: std::net::Ipv4Addr, asn: u32) -> String {
    format!(
        r#"router id {ip};
protocol device {{ scan time 1; }}
protocol static dsr_vips {{
    ipv4;
    route {VIP}/32 blackhole;
}}
{BFD}
protocol bgp upstream {{
    local {ip} as {asn};
    neighbor {ROUTER} as 65000;
    ipv4 {{ import none; export where proto = "dsr_vips"; }};
    connect delay time 1;
    connect retry time 1;
    error wait time 1, 5;
    hold time 3;
    keepalive time 1;
    bfd {bfd};
}}
"#,
        bfd = if bfd() { "on" } else { "off" }
    )
}

/// `dsr announce-watch` of a node's group file, driving its bird's `dsr_vips`.
struct Watch(Child);

impl Watch {
    fn start(lab: &Lab, state: &str, bird: &Bird, name: &str) -> Watch {
        let birdc = |what: &str| format!("birdc -s {} {what} dsr_vips", bird.socket.display());
        let child = Command::new(dsr_bin())
            .arg("announce-watch")
            .arg(lab.dir.join(state).join("announce/groups/VI_1"))
            .args(["--grace", GRACE, "--interval", "200ms"])
            .args(["--on-announce", &birdc("enable")])
            .args(["--on-withdraw", &birdc("disable")])
            .stderr(std::fs::File::create(lab.dir.join(format!("watch-{name}.log"))).unwrap())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Watch(child)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The router's next hops for the VIP.
fn next_hops(lab: &Lab) -> Vec<String> {
    let out = sh(&[
        "ip",
        "-n",
        &lab.router_ns,
        "route",
        "show",
        &format!("{VIP}/32"),
    ])
    .unwrap_or_default();
    let mut hops: Vec<String> = out
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "via")
        .map(|w| w[1].to_owned())
        .collect();
    hops.sort();
    hops
}

fn wait_hops(lab: &Lab, want: &[std::net::Ipv4Addr], what: &str, deadline: Duration) -> Duration {
    let want: Vec<String> = want.iter().map(|a| a.to_string()).collect();
    let start = Instant::now();
    while next_hops(lab) != want {
        if start.elapsed() > deadline {
            panic!(
                "{what}: the router's next hops for the VIP are {:?}, not {want:?}",
                next_hops(lab)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

/// Waits for the route to go to `to` only; reports the gap after a second more traffic.
fn failover(
    lab: &Lab,
    traffic: &Traffic,
    what: &str,
    from: Instant,
    to: std::net::Ipv4Addr,
    deadline: Duration,
) {
    let took = wait_hops(lab, &[to], what, deadline);
    std::thread::sleep(Duration::from_secs(1));
    let (long, fresh, broken) = traffic.since(from);
    eprintln!(
        "{what}: route withdrawn after {took:?}; longest gap: long-lived {long:?}, new connections {fresh:?}; {broken} long-lived broke"
    );
    assert_eq!(broken, 0, "{what}: long-lived connections broke");
}

#[test]
fn an_ecmp_pair_keeps_every_connection_through_each_failure() {
    let mut lab = Lab::with(
        "ecmp",
        &[1, 1, 1],
        Options {
            pair: true,
            routed_client_mtu: Some(1500),
            ..Options::default()
        },
    );
    write_sysctl(&lab.router_ns, "net.ipv4.fib_multipath_hash_policy", "1").unwrap();
    // A retransmission timeout would otherwise re-roll the flow's hash (and its path).
    let _ = write_sysctl(&lab.client_ns, "net.core.txrehash", "0");
    let config =
        lab.config() + "\n[[announce]]\nname = \"VI_1\"\nvips = [\"tcp-80\", \"udp-53\"]\n";
    lab.start_dsr_with(&config, false)
        .unwrap_or_else(|e| panic!("{e:#}"));
    lab.start_dsr2().unwrap_or_else(|e| panic!("{e:#}"));
    lab.assert_same_tables();

    let _router = Bird::start(&lab.router_ns, &lab.dir, "rtr", &router_config());
    let mut bird1 = Bird::start(&lab.lb_ns, &lab.dir, "lb1", &node_config(LB_IP, 65001));
    let bird2 = Bird::start(&lab.lb2_ns, &lab.dir, "lb2", &node_config(LB2_IP, 65002));
    let _w1 = Watch::start(&lab, "state", &bird1, "lb1");
    let _w2 = Watch::start(&lab, "state2", &bird2, "lb2");
    wait_hops(
        &lab,
        &[LB_IP, LB2_IP],
        "both nodes announce",
        Duration::from_secs(15),
    );

    let traffic = Traffic::start(&lab);
    std::thread::sleep(Duration::from_secs(1));
    // The router spreads the flows: both nodes carry some (else a failover moves nothing).
    let packets = |st: dsr::control::Status| {
        st.vips
            .iter()
            .find(|v| v.name == "tcp-80")
            .unwrap()
            .traffic
            .packets
    };
    let (ok, out) = lab.dsr2(&["status", "--json"]);
    assert!(ok, "{out}");
    let (p1, p2) = (
        packets(lab.status()),
        packets(serde_json::from_str(&out).unwrap()),
    );
    eprintln!("tcp-80 packets: lb1 {p1}, lb2 {p2}");
    assert!(p1 > 0 && p2 > 0, "ECMP: lb1 {p1}, lb2 {p2} packets");

    // 1. `dsr vip drain` on lb1: its watcher disables the route, and its flows move to lb2.
    let t = Instant::now();
    let (ok, out) = lab.dsr(&["vip", "drain", "tcp-80"]);
    assert!(ok, "{out}");
    failover(
        &lab,
        &traffic,
        "lb1 dsr vip drain",
        t,
        LB2_IP,
        Duration::from_secs(2),
    );
    let (ok, out) = lab.dsr(&["vip", "undrain", "tcp-80"]);
    assert!(ok, "{out}");
    wait_hops(
        &lab,
        &[LB_IP, LB2_IP],
        "lb1 undrained",
        Duration::from_secs(5),
    );
    std::thread::sleep(Duration::from_secs(1));
    let (_, _, broken) = traffic.since(t);
    assert_eq!(broken, 0, "flows moving back to lb1 broke");

    // 2. lb1's link down behind the switch: the router's link stays up, only BFD (or the
    //    hold time) notices.
    let t = Instant::now();
    sh(&["ip", "-n", &lab.switch_ns, "link", "set", "port-lb", "down"]).unwrap();
    let (what, deadline) = if bfd() {
        ("lb1 link down (BFD 50 ms x 3)", Duration::from_secs(2))
    } else {
        (
            "lb1 link down (no BFD, hold time 3 s)",
            Duration::from_secs(5),
        )
    };
    failover(&lab, &traffic, what, t, LB2_IP, deadline);
    sh(&["ip", "-n", &lab.switch_ns, "link", "set", "port-lb", "up"]).unwrap();
    wait_hops(
        &lab,
        &[LB_IP, LB2_IP],
        "lb1's link back",
        Duration::from_secs(15),
    );
    std::thread::sleep(Duration::from_secs(1));

    // 3. lb1's bird killed.
    let t = Instant::now();
    bird1.signal(libc::SIGKILL);
    failover(
        &lab,
        &traffic,
        "lb1 bird SIGKILL",
        t,
        LB2_IP,
        Duration::from_secs(2),
    );
    drop(_w1);
    let mut bird1 = Bird::start(&lab.lb_ns, &lab.dir, "lb1", &node_config(LB_IP, 65001));
    let _w1 = Watch::start(&lab, "state", &bird1, "lb1");
    wait_hops(
        &lab,
        &[LB_IP, LB2_IP],
        "lb1's bird back",
        Duration::from_secs(15),
    );
    std::thread::sleep(Duration::from_secs(1));

    // 4. lb1's bird stopped cleanly (SIGTERM): it closes its sessions.
    let t = Instant::now();
    bird1.signal(libc::SIGTERM);
    failover(
        &lab,
        &traffic,
        "lb1 bird stop",
        t,
        LB2_IP,
        Duration::from_secs(2),
    );
    drop(_w1);
    let bird1 = Bird::start(&lab.lb_ns, &lab.dir, "lb1", &node_config(LB_IP, 65001));
    let _w1 = Watch::start(&lab, "state", &bird1, "lb1");
    wait_hops(
        &lab,
        &[LB_IP, LB2_IP],
        "lb1's bird back again",
        Duration::from_secs(15),
    );
    std::thread::sleep(Duration::from_secs(1));

    // 5. lb2's dsr killed: its pinned data path forwards on, and after the grace its
    //    watcher withdraws the route.
    let t = Instant::now();
    lab.kill_dsr2();
    failover(
        &lab,
        &traffic,
        "lb2 dsr kill -9 (grace 2 s)",
        t,
        LB_IP,
        Duration::from_secs(5),
    );

    let kept = traffic.stop();
    assert_eq!(
        kept,
        dsr_lab::lab::LONG_LIVED,
        "connections kept on their first backend"
    );
}
