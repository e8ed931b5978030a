//! End to end through the namespace lab: real TCP and UDP clients, the real `dsr` binary on
//! the load balancer, servers on the backends that answer with their name.

use std::collections::HashMap;

use dsr_lab::lab::{Capture, LB_MAC, Lab, VIP, ipv4_src};

const TCP: u8 = 6;
const UDP: u8 = 17;

fn started(tag: &str, weights: &[u32]) -> Lab {
    let mut lab = Lab::new(tag, weights);
    if let Err(e) = lab.start_dsr(false) {
        panic!("{e:#}");
    }
    lab
}

/// (a) requests are answered, (b) the answers come straight from the backends: every reply
/// frame the client receives carries a backend's MAC as source, and the load balancer's
/// interface never sees one.
#[test]
fn answered_directly_by_backends() {
    let mut lab = started("direct", &[1, 1, 1]);
    let client_cap = Capture::start(&lab.client_ns, "eth0");
    let lb_cap = Capture::start(&lab.lb_ns, "eth0");
    let mut answered_by = HashMap::<String, usize>::new();
    for i in 0..30u16 {
        let tcp = lab
            .tcp_request(41000 + i, 1)
            .unwrap_or_else(|e| panic!("TCP request {i}: {e:#}\n{}", lab.dsr_log()));
        *answered_by.entry(tcp[0].clone()).or_default() += 1;
        let udp = lab
            .udp_request(42000 + i)
            .unwrap_or_else(|e| panic!("UDP request {i}: {e:#}\n{}", lab.dsr_log()));
        *answered_by.entry(udp).or_default() += 1;
    }
    let client_frames = client_cap.stop();
    let lb_frames = lb_cap.stop();

    assert_eq!(answered_by.values().sum::<usize>(), 60);
    assert_eq!(
        answered_by.len(),
        3,
        "all three backends should answer some of 60 flows: {answered_by:?}"
    );

    let backend_macs: Vec<[u8; 6]> = lab.backends.iter().map(|b| b.mac).collect();
    let replies: Vec<&Vec<u8>> = client_frames
        .iter()
        .filter(|f| ipv4_src(f) == Some(VIP))
        .collect();
    assert!(
        replies.len() >= 60,
        "client saw only {} frames from the VIP",
        replies.len()
    );
    for f in &replies {
        let src: [u8; 6] = f[6..12].try_into().unwrap();
        assert!(
            backend_macs.contains(&src),
            "reply from the VIP with source MAC {src:02x?}, not a backend's"
        );
        assert_ne!(src, LB_MAC, "a reply came through the load balancer");
    }
    let through_lb = lb_frames
        .iter()
        .filter(|f| ipv4_src(f) == Some(VIP))
        .count();
    assert_eq!(
        through_lb, 0,
        "the load balancer's interface carried {through_lb} reply frames"
    );

    // SIGTERM: dsr exits cleanly, reports what it forwarded, and leaves the data path
    // forwarding; `dsr stop` then removes it.
    let status = lab.stop_dsr().expect("dsr was running");
    let log = lab.dsr_log();
    assert!(status.success(), "dsr exited with {status}:\n{log}");
    assert!(
        log.contains("forwarded="),
        "dsr did not report forwarded packets:\n{log}"
    );
    assert!(xdp_attached(&lab), "SIGTERM removed the data path");
    assert!(
        lab.udp_request(42999).is_ok(),
        "no forwarding while the daemon is down"
    );
    let (ok, out) = lab.dsr(&["stop"]);
    assert!(ok, "{out}");
    assert!(
        !xdp_attached(&lab),
        "XDP still attached after `dsr stop`: {out}"
    );
    assert!(
        lab.udp_request(42998).is_err(),
        "still forwarded after `dsr stop`"
    );
}

fn xdp_attached(lab: &Lab) -> bool {
    dsr_lab::lab::sh(&["ip", "-n", &lab.lb_ns, "link", "show", "eth0"])
        .unwrap()
        .contains("xdp")
}

/// (c) the split across backends follows the weights, and every flow lands exactly on the
/// backend that the hash and Maglev table predict.
#[test]
fn split_follows_weights() {
    let lab = started("weights", &[1, 2, 3]);
    const FLOWS: u16 = 1200;
    let mut counts = [0usize; 3];
    for i in 0..FLOWS {
        let sport = 20000 + i;
        let who = lab
            .udp_request(sport)
            .unwrap_or_else(|e| panic!("UDP flow {i}: {e:#}\n{}", lab.dsr_log()));
        let idx = lab
            .backends
            .iter()
            .position(|b| b.name == who)
            .expect("unknown answer");
        assert_eq!(
            idx,
            lab.predict(UDP, sport),
            "flow from port {sport} answered by {who}"
        );
        counts[idx] += 1;
    }
    // Tolerance: flows are a sample, so each backend's count must be within 4 binomial
    // standard deviations of its weight's share (200 +- 52, 400 +- 65, 600 +- 69 of 1200).
    for (i, &n) in counts.iter().enumerate() {
        let p = (i + 1) as f64 / 6.0;
        let want = FLOWS as f64 * p;
        let tolerance = 4.0 * (FLOWS as f64 * p * (1.0 - p)).sqrt();
        assert!(
            (n as f64 - want).abs() <= tolerance,
            "backend {} got {n} of {FLOWS} flows, expected {want} +- {tolerance:.0}: {counts:?}",
            i + 1
        );
    }
    for i in 0..60u16 {
        let sport = 30000 + i;
        let who = lab
            .tcp_request(sport, 1)
            .unwrap_or_else(|e| panic!("TCP flow {i}: {e:#}"));
        let idx = lab.backends.iter().position(|b| b.name == who[0]).unwrap();
        assert_eq!(idx, lab.predict(TCP, sport), "TCP flow from port {sport}");
    }
}

/// (d) one flow always lands on the same backend: the segments of a long TCP connection and
/// repeated datagrams of one UDP flow.
#[test]
fn one_flow_one_backend() {
    let lab = started("sticky", &[1, 1, 1, 1]);
    for c in 0..8u16 {
        let answers = lab
            .tcp_request(43000 + c, 25)
            .unwrap_or_else(|e| panic!("connection {c}: {e:#}\n{}", lab.dsr_log()));
        assert_eq!(answers.len(), 25);
        assert!(
            answers.iter().all(|a| *a == answers[0]),
            "connection {c} answered by {answers:?}"
        );
    }
    for f in 0..8u16 {
        let sport = 44000 + f;
        let first = lab.udp_request(sport).unwrap();
        for _ in 0..10 {
            assert_eq!(
                lab.udp_request(sport).unwrap(),
                first,
                "UDP flow from port {sport} moved"
            );
        }
    }
}

/// The same DSR path over IPv6: TCP and UDP to an IPv6 VIP are answered directly by the
/// backends (whose MACs dsr learns by neighbour solicitation), each flow by the backend the
/// hash and table predict.
#[test]
fn ipv6_flows_answered_by_predicted_backends() {
    use dsr_lab::lab::{CLIENT6, VIP6, v6_of};
    use std::net::IpAddr;

    let mut lab = Lab::new("ipv6", &[1, 1, 1]);
    let mut config = lab.header();
    for (port, proto) in [(80, "tcp"), (53, "udp")] {
        config += &format!(
            "\n[[vip]]\nname = \"v6-{proto}\"\naddress = \"{VIP6}\"\nport = {port}\nprotocol = \"{proto}\"\n"
        );
        for b in &lab.backends {
            config += &format!("  [[vip.backend]]\n  address = \"{}\"\n", v6_of(b.ip));
        }
    }
    lab.start_dsr_with(&config, false)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let entries: Vec<dsr::plan::maglev::Entry> = lab
        .backends
        .iter()
        .enumerate()
        .map(|(i, b)| dsr::plan::maglev::Entry {
            address: IpAddr::V6(v6_of(b.ip)),
            id: i as u32,
            weight: 1,
        })
        .collect();
    // Both VIPs have all the lab's backends: the default size for that many.
    let size = dsr::plan::sizing::default_size(
        lab.backends.len(),
        dsr_common::TABLE_SLOTS_PER_BACKEND,
        dsr_common::DEFAULT_MAX_TABLE_SLOTS,
    );
    let table = dsr::plan::maglev::build(&entries, size);
    let predict = |sport: u16, dport: u16, proto: u8| {
        let key = dsr_common::FlowKey::new(CLIENT6.into(), sport, VIP6.into(), dport, proto);
        table[(dsr_common::flow_hash(&key, dsr_common::DEFAULT_HASH_SEED) % table.len() as u32)
            as usize] as usize
    };
    let client_cap = Capture::start(&lab.client_ns, "eth0");
    let mut seen = std::collections::HashSet::new();
    for sport in 36000..36150u16 {
        let who = lab.udp6_request(sport).unwrap_or_else(|e| {
            panic!(
                "UDP over IPv6 from {sport}: {e:#}\n{}\n{}",
                lab.dsr(&["stats"]).1,
                lab.dsr_log()
            )
        });
        assert_eq!(
            lab.index_of(&who),
            predict(sport, 53, UDP),
            "UDP flow {sport}"
        );
        seen.insert(who);
    }
    assert_eq!(
        seen.len(),
        3,
        "150 IPv6 flows should reach all three backends"
    );
    for _ in 0..30 {
        let answer = lab
            .tcp6_request(0)
            .unwrap_or_else(|e| panic!("TCP over IPv6: {e:#}\n{}", lab.dsr_log()));
        let (who, port) = answer.rsplit_once(' ').unwrap();
        assert_eq!(
            lab.index_of(who),
            predict(port.parse().unwrap(), 80, TCP),
            "TCP from port {port}"
        );
    }
    // Replies come straight from the backends' MACs (IPv6 source = VIP6).
    let frames = client_cap.stop();
    let replies: Vec<&Vec<u8>> = frames
        .iter()
        .filter(|f| f.len() >= 54 && f[12..14] == [0x86, 0xdd] && f[22..38] == VIP6.octets())
        .collect();
    assert!(
        replies.len() >= 150,
        "only {} IPv6 replies seen",
        replies.len()
    );
    let macs: Vec<[u8; 6]> = lab.backends.iter().map(|b| b.mac).collect();
    assert!(
        replies.iter().all(|f| macs.iter().any(|m| f[6..12] == *m)),
        "an IPv6 reply did not come from a backend"
    );
}

/// Two source-hashed VIPs on one address, with disjoint backends: TCP :80 -> backend-1 only,
/// UDP :53 -> backend-2 and backend-3. A client's TCP connection to :80 leaves a flow entry
/// keyed by its address; its datagrams to :53 must still be answered by :53's backends
/// (they were all answered by backend-1 when flow entries did not carry the VIP).
#[test]
fn source_hashed_vips_keep_their_own_backends() {
    let mut lab = Lab::new("srcvips", &[1, 1, 1]);
    let ip = |i: usize| lab.backends[i].ip;
    let config = format!(
        "{}\n[[vip]]\nname = \"web\"\naddress = \"{VIP}\"\nport = 80\nprotocol = \"tcp\"\nhash = \"source\"\n  [[vip.backend]]\n  address = \"{}\"\n\n[[vip]]\nname = \"dns\"\naddress = \"{VIP}\"\nport = 53\nprotocol = \"udp\"\nhash = \"source\"\n  [[vip.backend]]\n  address = \"{}\"\n  [[vip.backend]]\n  address = \"{}\"\n",
        lab.header(),
        ip(0),
        ip(1),
        ip(2)
    );
    lab.start_dsr_with(&config, false)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let tcp = lab
        .tcp_request(43000, 1)
        .unwrap_or_else(|e| panic!("TCP request: {e:#}\n{}", lab.dsr_log()));
    assert_eq!(tcp[0], "backend-1");
    for sport in 43100..43105 {
        let answer = lab
            .udp_request(sport)
            .unwrap_or_else(|e| panic!("UDP request {sport}: {e:#}\n{}", lab.dsr_log()));
        assert!(
            answer == "backend-2" || answer == "backend-3",
            "datagram from port {sport} to :53 answered by {answer}"
        );
    }
}
