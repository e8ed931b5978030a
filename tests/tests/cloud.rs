//! Cloud VIP moves by notify hooks, with stand-ins for the cloud CLIs (the shipped examples in
//! dist/notify/ call the real ones): each node's hook claims the VIP when the VIP turns
//! ANNOUNCED there, and hands it to the other node when it turns WITHDRAWN while held.
//! - a route's next hop switched (a router namespace plays the cloud's route table);
//! - a secondary IP reassigned and then added in the OS (the address moves between the two
//!   nodes' interfaces, with a gratuitous ARP playing the cloud fabric's update).
//!
//! Ten long-lived TCP connections and a new connection every 50 ms run through each move
//! (`dsr vip drain`, undrain, `dsr stop`); both nodes place every flow alike, so none may
//! break. Gaps are printed, never asserted.

use std::time::{Duration, Instant};

use dsr_lab::lab::{LB_IP, LB2_IP, Lab, Options, Traffic, VIP, sh};

/// The hook's own record of what it was told (a line per run), to check order and env.
fn hook_log(lab: &Lab) -> Vec<String> {
    std::fs::read_to_string(lab.dir.join("hook.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Writes the stand-in hook `name` into the lab directory: `claim` runs on ANNOUNCED,
/// `release` on WITHDRAWN, with `$me`/`$peer` the node's and the other node's namespaces
/// and `ip_of NS` a namespace's address.
fn hook(lab: &Lab, name: &str, claim: &str, release: &str) -> String {
    let path = lab.dir.join(name);
    let script = format!(
        r#"#!/bin/sh
# Stand-in for a cloud CLI: see dist/notify/ for the real calls.
[ "$1" = VIP ] || exit 2
ip_of() {{ ip -n "$1" -4 -o addr show dev eth0 | awk '{{print $4}}' | cut -d/ -f1 | head -1; }}
case "$DSR_INSTANCE" in
*-2) me={lb2}; peer={lb1} ;;
*) me={lb1}; peer={lb2} ;;
esac
echo "$DSR_INSTANCE $1 $2 $3 vip=$DSR_VIP address=$DSR_VIP_ADDRESS usable=$DSR_USABLE_BACKENDS time=$DSR_EVENT_TIME" >> {log}
case "$3" in
ANNOUNCED) {claim} ;;
WITHDRAWN) {release} ;;
esac
"#,
        lb1 = lab.lb_ns,
        lb2 = lab.lb2_ns,
        log = lab.dir.join("hook.log").display(),
    );
    std::fs::write(&path, script).unwrap();
    sh(&["chmod", "755", &path.display().to_string()]).unwrap();
    path.display().to_string()
}

/// Both nodes' config: the lab's, with the hook as every VIP's notify command. Only the
/// TCP VIP carries the hook (the UDP one has `notify = ""`), so one VIP moves.
fn config_with(lab: &Lab, hook: &str) -> String {
    let c = format!("notify = \"{hook}\"\nnotify_timeout = \"5s\"\n") + &lab.config();
    c.replacen(
        "protocol = \"udp\"\n",
        "protocol = \"udp\"\nnotify = \"\"\n",
        1,
    )
}

/// The node the router sends the VIP to now.
fn route_via(lab: &Lab) -> Option<String> {
    let out = std::process::Command::new("ip")
        .args([
            "-n",
            &lab.router_ns,
            "-4",
            "route",
            "show",
            &format!("{VIP}/32"),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "via")
        .nth(1)
        .map(str::to_owned)
}

/// Which node's interface holds the VIP.
fn holder(lab: &Lab) -> Option<&'static str> {
    let holds = |ns: &str| dsr_lab::lab::holds_address(ns, &VIP.to_string());
    match (holds(&lab.lb_ns), holds(&lab.lb2_ns)) {
        (true, false) => Some("lb1"),
        (false, true) => Some("lb2"),
        (false, false) => None,
        (true, true) => Some("both"),
    }
}

fn wait(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < deadline,
            "{what}: not within {deadline:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

/// After a move started at `from`: the long-lived connections all alive and on their
/// backends, the gaps printed.
fn survived(traffic: &Traffic, what: &str, from: Instant, moved_after: Duration) {
    std::thread::sleep(Duration::from_secs(1));
    let (long, fresh, broken) = traffic.since(from);
    eprintln!(
        "{what}: VIP moved after {moved_after:?}; longest gap: long-lived {long:?}, new \
         connections {fresh:?}; {broken} long-lived broke"
    );
    assert_eq!(broken, 0, "{what}: long-lived connections broke");
}

/// Starts lb2 first (its hook claims the VIP), then lb1 (which claims it last): the VIP is
/// lb1's, with both nodes announcing.
fn start_pair(lab: &mut Lab, config: &str, is_lb1: impl Fn(&Lab) -> bool) {
    lab.write_config(config).unwrap();
    lab.start_dsr2().unwrap_or_else(|e| panic!("{e:#}"));
    wait("lb2 claims the VIP", Duration::from_secs(10), || {
        hook_log(lab)
            .iter()
            .any(|l| l.contains("-2 VIP tcp-80 ANNOUNCED"))
    });
    lab.start_dsr_with(config, false)
        .unwrap_or_else(|e| panic!("{e:#}"));
    wait("lb1 claims the VIP", Duration::from_secs(10), || {
        is_lb1(lab)
    });
    lab.assert_same_tables();
}

/// The moves both patterns go through: lb1 drained (its hook hands the VIP to lb2), lb1
/// undrained (it claims it back), lb1 stopped by `dsr stop` (handed over before it exits).
fn moves(lab: &Lab, on_lb: impl Fn(&Lab, &str) -> bool) {
    let traffic = Traffic::start(lab);
    std::thread::sleep(Duration::from_millis(500));

    let t = Instant::now();
    let (ok, out) = lab.dsr(&["vip", "drain", "tcp-80"]);
    assert!(ok, "{out}");
    let took = wait("the VIP moves to lb2", Duration::from_secs(5), || {
        on_lb(lab, "lb2")
    });
    survived(&traffic, "lb1 drained", t, took);

    let t = Instant::now();
    let (ok, out) = lab.dsr(&["vip", "undrain", "tcp-80"]);
    assert!(ok, "{out}");
    let took = wait("the VIP moves back to lb1", Duration::from_secs(5), || {
        on_lb(lab, "lb1")
    });
    survived(&traffic, "lb1 undrained", t, took);

    let t = Instant::now();
    let (ok, out) = lab.dsr(&["stop"]);
    assert!(ok, "{out}");
    // `dsr stop` answers once the data path is gone, after the WITHDRAWN hook ran.
    assert!(
        on_lb(lab, "lb2"),
        "the VIP is not lb2's when `dsr stop` returned"
    );
    survived(&traffic, "lb1 dsr stop", t, t.elapsed());
    let kept = traffic.stop();
    assert_eq!(
        kept,
        dsr_lab::lab::LONG_LIVED,
        "long-lived connections kept to the end"
    );

    // What the hooks were told, in order, with their environment.
    let log = hook_log(lab);
    let lb1: Vec<&str> = log
        .iter()
        .filter(|l| !l.contains("-2 VIP"))
        .filter_map(|l| l.split_whitespace().nth(3))
        .collect();
    assert_eq!(
        lb1,
        ["USABLE", "ANNOUNCED", "WITHDRAWN", "ANNOUNCED", "WITHDRAWN"],
        "lb1's hook runs:\n{}",
        log.join("\n")
    );
    assert!(
        log.iter().all(|l| l.contains(&format!("address={VIP} "))
            && l.contains("vip=tcp-80")
            && l.contains("usable=3")),
        "{}",
        log.join("\n")
    );
    assert!(
        !log.iter().any(|l| l.contains("udp-53")),
        "notify = \"\" still ran the top-level hook"
    );
}

/// Pattern 1: the VIP's route in the cloud's route table points at the node that serves it
/// (AWS `aws ec2 replace-route`, GCP routes with a next-hop instance, Azure UDRs).
#[test]
fn a_route_next_hop_follows_the_announced_node_and_connections_survive() {
    let mut lab = Lab::with(
        "cloudrt",
        &[1, 1, 1],
        Options {
            pair: true,
            routed_client_mtu: Some(1500),
            ..Options::default()
        },
    );
    let router = lab.router_ns.clone();
    let hook = hook(
        &lab,
        "route-hook",
        &format!("ip -n {router} route replace \"$DSR_VIP_ADDRESS/32\" via $(ip_of $me)"),
        &format!(
            "ip -n {router} route show \"$DSR_VIP_ADDRESS/32\" | grep -q \"via $(ip_of $me) \" && \
             ip -n {router} route replace \"$DSR_VIP_ADDRESS/32\" via $(ip_of $peer)"
        ),
    );
    let config = config_with(&lab, &hook);
    start_pair(&mut lab, &config, |lab| {
        route_via(lab) == Some(LB_IP.to_string())
    });
    moves(&lab, |lab, node| {
        route_via(lab)
            == Some(match node {
                "lb1" => LB_IP.to_string(),
                _ => LB2_IP.to_string(),
            })
    });
    // The hook's last run shows in status (lb2's: lb1 is stopped).
    let (ok, out) = lab.dsr2(&["status", "--json"]);
    assert!(ok, "{out}");
    let st: dsr::control::Status = serde_json::from_str(&out).unwrap();
    let tcp = st.vips.iter().find(|v| v.name == "tcp-80").unwrap();
    let hookst = tcp.notify.as_ref().expect("the hook in status");
    assert_eq!(hookst.command, hook);
    let last = hookst.last.as_ref().expect("a last run");
    assert!(last.ok && last.outcome == "exit 0", "{last:?}");
    assert!(
        st.vips
            .iter()
            .find(|v| v.name == "udp-53")
            .unwrap()
            .notify
            .is_none(),
        "udp-53 has notify = \"\""
    );
}

/// Pattern 2: the VIP is a secondary private IP reassigned to the node that serves it, then
/// added in the OS (AWS `assign-private-ip-addresses --allow-reassignment`, Azure ipconfig
/// updates, GCP alias IPs); here the address moves between the nodes' interfaces and a
/// gratuitous ARP plays the fabric's update.
#[test]
fn a_secondary_ip_moves_to_the_announced_node_and_connections_survive() {
    let mut lab = Lab::with(
        "cloudip",
        &[1, 1, 1],
        Options {
            pair: true,
            ..Options::default()
        },
    );
    let take = |ns: &str, other: &str| {
        format!(
            "ip -n {other} addr del \"$DSR_VIP_ADDRESS/32\" dev eth0 2>/dev/null; \
             ip -n {ns} addr replace \"$DSR_VIP_ADDRESS/32\" dev eth0 && \
             ip netns exec {ns} arping -q -U -c 2 -w 1 -I eth0 \"$DSR_VIP_ADDRESS\" || true"
        )
    };
    let hook = hook(
        &lab,
        "ip-hook",
        &take("$me", "$peer"),
        &format!(
            "ip -n $me -4 -o addr show dev eth0 | grep -q \" $DSR_VIP_ADDRESS/32 \" && {{ {}; }}",
            take("$peer", "$me")
        ),
    );
    let config = config_with(&lab, &hook);
    start_pair(&mut lab, &config, |lab| holder(lab) == Some("lb1"));
    moves(&lab, |lab, node| holder(lab) == Some(node));
}

/// A pair behind a router (lb1 serves, its route set directly), with a fourth backend in the
/// lab but not in the config, and `[sync]` on or off. Opens ten long-lived connections, of
/// which exactly three are placed (by the shared hash) on a different backend once the
/// fourth joins; adds it on both nodes; keeps them talking through lb1 for longer than the
/// flow idle timeout; then fails lb1 (the route moves to lb2, as a cloud health check would
/// move it; lb1 gets no traffic any more). Returns how many of the ten broke or changed
/// backend.
fn backend_change_then_failover(tag: &str, sync: bool) -> usize {
    let mut lab = Lab::with(
        tag,
        &[1, 1, 1, 1],
        Options {
            pair: true,
            routed_client_mtu: Some(1500),
            ..Options::default()
        },
    );
    let fourth = lab.backends[3].ip.to_string();
    let block = format!("  [[vip.backend]]\n  address = \"{fourth}\"\n  weight = 1\n");
    // A short idle timeout, outlived before the failover: the peer's copies must be kept
    // fresh while lb1 carries the flows.
    let mut config = format!(
        "flow_idle_timeout = \"3s\"\n{}",
        lab.config().replace(&block, "")
    );
    if sync {
        let key = lab.dir.join("sync.key");
        std::fs::write(&key, "lab sync key: 32 bytes or so....\n").unwrap();
        config += &format!(
            "\n[sync]\npeers = [\"{LB2_IP}:7947\"]\nkey_file = \"{}\"\ninterval = \"200ms\"\n",
            key.display()
        );
    }
    lab.start_dsr_with(&config, false)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let config2 = lab
        .config2()
        .replace(&format!("{LB2_IP}:7947"), &format!("{LB_IP}:7947"));
    lab.start_dsr2_with(&config2)
        .unwrap_or_else(|e| panic!("{e:#}"));
    lab.assert_same_tables();
    sh(&[
        "ip",
        "-n",
        &lab.router_ns,
        "route",
        "replace",
        &format!("{VIP}/32"),
        "via",
        &LB_IP.to_string(),
    ])
    .unwrap();

    // Ten client ports: the first three the fourth backend's arrival moves, then seven it
    // does not, by the tables both nodes build (the fourth configured backend also resizes
    // the table: most new flows move).
    let before = [1, 1, 1, 0];
    let after = [1, 1, 1, 1];
    let sizes = (
        lab.table_size_of(80),
        dsr::plan::sizing::default_size(
            4,
            dsr_common::TABLE_SLOTS_PER_BACKEND,
            dsr_common::DEFAULT_MAX_TABLE_SLOTS,
        ),
    );
    let moves = |p: u16| {
        lab.predict_sized(6, p, &before, sizes.0) != lab.predict_sized(6, p, &after, sizes.1)
    };
    let mut ports: Vec<u16> = (46000..).filter(|&p| moves(p)).take(3).collect();
    ports.extend((46000..).filter(|&p| !moves(p)).take(7));
    let mut conns: Vec<(u16, dsr_lab::lab::Conn, String)> = ports
        .iter()
        .map(|&p| {
            let mut c = lab.tcp_connect(p).expect("a connection");
            c.set_timeout(Duration::from_secs(2)).unwrap();
            let who = c.ask().expect("an answer");
            assert_eq!(lab.index_of(&who), lab.predict_weights(6, p, &before));
            (p, c, who)
        })
        .collect();

    for (ok, out) in [
        lab.dsr(&["backend", "add", "tcp-80", &fourth]),
        lab.dsr2(&["backend", "add", "tcp-80", &fourth]),
    ] {
        assert!(ok, "{out}");
    }
    lab.assert_same_tables();
    // The connections still ask through lb1 (its flow table keeps them on their backends);
    // with sync, lb2 learns their entries meanwhile.
    // Longer than the idle timeout, the connections talking through lb1 all along.
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        for (p, c, who) in conns.iter_mut() {
            assert_eq!(
                &c.ask().expect("an answer"),
                who,
                "port {p} before the failover"
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    if sync {
        let (ok, out) = lab.dsr2(&["status", "--json"]);
        assert!(ok, "{out}");
        let st: dsr::control::Status = serde_json::from_str(&out).unwrap();
        let s = st.sync.expect("lb2's sync status");
        eprintln!("lb2 sync: {s:?}");
        assert!(s.adopted_flows >= 10, "{s:?}");
        assert_eq!(s.refused_datagrams, 0, "{s:?}");
    }

    // lb1 fails: the route goes to lb2.
    sh(&[
        "ip",
        "-n",
        &lab.router_ns,
        "route",
        "replace",
        &format!("{VIP}/32"),
        "via",
        &LB2_IP.to_string(),
    ])
    .unwrap();
    let mut broken = 0;
    for (_, c, who) in conns.iter_mut() {
        if c.ask().ok().as_ref() != Some(who) {
            broken += 1;
        }
    }
    eprintln!(
        "sync {}: {broken} of 10 long-lived connections broke after a backend was added and \
         lb1 failed (3 are placed elsewhere by the new table)",
        if sync { "on" } else { "off" }
    );
    broken
}

/// The gap measured: without the exchange, the three flows the new backend's arrival moves
/// in the table live only in the failed node's flow table, and break.
#[test]
fn without_sync_flows_placed_before_a_backend_change_break_on_failover() {
    assert_eq!(backend_change_then_failover("nosync", false), 3);
}

/// With `[sync]`, the survivor holds every flow's entry: none breaks.
#[test]
fn with_sync_every_connection_survives_a_backend_change_and_a_failover() {
    assert_eq!(backend_change_then_failover("sync", true), 0);
}
