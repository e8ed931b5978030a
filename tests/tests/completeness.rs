//! Data-path completeness with real traffic: fragmented datagrams, path-MTU discovery
//! through dsr, and backends behind the load balancer's second interface.

use dsr_lab::lab::{Lab, Options, UDP_PORT, VIP};

fn reason(lab: &Lab, name: &str) -> u64 {
    lab.status()
        .reasons
        .iter()
        .find(|r| r.reason == name)
        .map_or(0, |r| r.packets)
}

fn udp_vip(lab: &Lab, extra: &str) -> String {
    let mut c = lab.header();
    c += &format!(
        "\n[[vip]]\nname = \"udp\"\naddress = \"{VIP}\"\nport = {UDP_PORT}\nprotocol = \"udp\"\n{extra}\n"
    );
    for b in &lab.backends {
        c += &format!("  [[vip.backend]]\n  address = \"{}\"\n", b.ip);
    }
    c +=
        &format!("\n[[vip]]\nname = \"tcp\"\naddress = \"{VIP}\"\nport = 80\nprotocol = \"tcp\"\n");
    for b in &lab.backends {
        c += &format!("  [[vip.backend]]\n  address = \"{}\"\n", b.ip);
    }
    c
}

/// A UDP datagram the client's kernel splits into fragments reaches one backend whole (its
/// server sees all 4000 bytes); without `fragments = true` the fragments are not forwarded.
#[test]
fn fragmented_datagrams_reach_one_backend() {
    let mut lab = Lab::new("frag", &[1, 1, 1]);
    let config = udp_vip(&lab, "fragments = true");
    lab.start_dsr_with(&config, false)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let before = reason(&lab, "forwarded_fragment");
    let mut who = std::collections::HashSet::new();
    for sport in 33000..33010u16 {
        let answer = lab.udp_big_request(sport, 4000).unwrap_or_else(|e| {
            panic!("fragmented datagram from {sport}: {e:#}\n{}", lab.dsr_log())
        });
        let (name, size) = answer.split_once(' ').expect("name and size");
        assert_eq!(size, "4000", "the backend did not get the whole datagram");
        who.insert(name.to_owned());
    }
    // The VIP hashes on addresses only: one client, one backend.
    assert_eq!(who.len(), 1, "one client's datagrams spread over {who:?}");
    // 4000 bytes over a 1500-byte MTU: three fragments each.
    assert!(
        reason(&lab, "forwarded_fragment") >= before + 30,
        "fragments not counted"
    );
    // Small datagrams of that VIP still work and go to the same backend.
    assert!(who.contains(&lab.udp_request(33100).unwrap()));

    // The same datagram to a VIP that does not accept fragments is not forwarded.
    lab.stop_dsr();
    let (ok, out) = lab.dsr(&["stop"]);
    assert!(ok, "{out}");
    let config = udp_vip(&lab, "");
    lab.start_dsr_with(&config, false)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let before = reason(&lab, "fragment");
    assert!(
        lab.udp_big_request(33200, 4000).is_err(),
        "fragments forwarded without fragments = true"
    );
    assert!(reason(&lab, "fragment") >= before + 3);
    assert!(lab.udp_request(33201).is_ok());
}

/// A backend's large answer crosses a link with a smaller MTU: the router's "fragmentation
/// needed" goes to the VIP, dsr hands it to the backend, which lowers its path MTU and the
/// transfer completes.
#[test]
fn path_mtu_discovery_works_through_dsr() {
    let mut lab = Lab::with(
        "pmtu",
        &[1, 1],
        Options {
            routed_client_mtu: Some(1400),
            ..Options::default()
        },
    );
    let config = udp_vip(&lab, "");
    lab.start_dsr_with(&config, false)
        .unwrap_or_else(|e| panic!("{e:#}"));
    for sport in [34000u16, 34001, 34002] {
        let got = lab
            .tcp_download(sport, 300_000)
            .unwrap_or_else(|e| panic!("download from {sport}: {e:#}\n{}", lab.dsr_log()));
        assert_eq!(got, 300_000);
    }
    assert!(
        reason(&lab, "forwarded_icmp") >= 1,
        "no ICMP reached a backend through dsr"
    );
}

/// Backends behind the load balancer's second interface get their frames by XDP_REDIRECT
/// (source MAC = that interface's), found through the routing table.
#[test]
fn backends_behind_a_second_interface() {
    let mut lab = Lab::with(
        "redir",
        &[1, 1],
        Options {
            second_segment: 1,
            ..Options::default()
        },
    );
    let config = udp_vip(&lab, "");
    lab.start_dsr_with(&config, false)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let answers = lab.udp_requests((35000..35100).collect());
    let mut count = [0usize; 2];
    for (i, a) in answers.iter().enumerate() {
        let who = a
            .as_ref()
            .unwrap_or_else(|e| panic!("flow {i}: {e:#}\n{}", lab.dsr_log()));
        count[lab.index_of(who)] += 1;
    }
    assert!(count[1] > 20, "the backend behind eth1 answered {count:?}");
    for sport in 35200..35220u16 {
        lab.tcp_request(sport, 3)
            .unwrap_or_else(|e| panic!("TCP {sport}: {e:#}"));
    }
    let log = lab.dsr_log();
    assert!(log.contains("is reached through interface"), "{log}");
}

/// An egress interface deleted and created again (a new index): while it is gone, its
/// backend gets no flows (they go to the other backend, and the status is not degraded by
/// writes that cannot succeed); once it is back, dsr follows it by name and the backend
/// answers again.
#[test]
fn a_recreated_egress_interface_is_followed() {
    let mut lab = Lab::with(
        "recreate",
        &[1, 1],
        Options {
            second_segment: 1,
            ..Options::default()
        },
    );
    let config = udp_vip(&lab, "");
    lab.start_dsr_with(&config, false)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let remote: Vec<u16> = (36000..37000u16)
        .filter(|&p| lab.predict(17, p) == 1)
        .take(10)
        .collect();
    let (first, later) = remote.split_at(5);
    let backend = |lab: &Lab| lab.status().vips[0].backends[1].clone();
    let before = backend(&lab).via.expect("backend 2 is behind eth1");
    for (i, a) in lab.udp_requests(first.to_vec()).iter().enumerate() {
        let who = a
            .as_ref()
            .unwrap_or_else(|e| panic!("flow {i} before: {e:#}\n{}", lab.dsr_log()));
        assert_eq!(lab.index_of(who), 1);
    }

    lab.delete_second_interface().unwrap();
    lab.wait_for(
        "dsr sees eth1 gone",
        std::time::Duration::from_secs(5),
        || {
            let b = backend(&lab);
            !b.in_table && !b.keeps_flows
        },
    );
    // Its flows, established or new, go to the backend that is left.
    for (i, a) in lab.udp_requests(first.to_vec()).iter().enumerate() {
        let who = a
            .as_ref()
            .unwrap_or_else(|e| panic!("flow {i} while gone: {e:#}\n{}", lab.dsr_log()));
        assert_eq!(lab.index_of(who), 0);
    }
    assert_eq!(lab.status().map_writes_pending, 0, "{}", lab.dsr_log());

    lab.create_second_interface().unwrap();
    lab.wait_for(
        "dsr follows the new eth1",
        std::time::Duration::from_secs(5),
        || {
            backend(&lab)
                .via
                .is_some_and(|v| v.ifindex != before.ifindex)
        },
    );
    for (i, a) in lab.udp_requests(later.to_vec()).iter().enumerate() {
        let who = a
            .as_ref()
            .unwrap_or_else(|e| panic!("flow {i} after: {e:#}\n{}", lab.dsr_log()));
        assert_eq!(lab.index_of(who), 1);
    }
    let st = lab.status();
    assert_eq!((st.map_writes_pending, st.map_write_failures), (0, 0));
    assert!(lab.dsr_log().contains("is back as index"));
}

/// The load balancer's own interface deleted and created again: nothing is forwarded while
/// it is gone; once it is back (a new index), dsr attaches to it anew and says so, and the
/// VIP answers again.
#[test]
fn a_recreated_receiving_interface_is_attached_again() {
    let mut lab = Lab::new("reattach", &[1, 1]);
    let config = udp_vip(&lab, "");
    lab.start_dsr_with(&config, false)
        .unwrap_or_else(|e| panic!("{e:#}"));
    lab.udp_request(38000).expect("answered before");
    lab.delete_main_interface().unwrap();
    lab.wait_for(
        "dsr to see eth0 gone",
        std::time::Duration::from_secs(5),
        || lab.dsr_log().contains("interface eth0 is gone"),
    );
    lab.create_main_interface().unwrap();
    lab.wait_for(
        "dsr to re-attach",
        std::time::Duration::from_secs(5),
        || lab.dsr_log().contains("re-attached the data path"),
    );
    for sport in 38001..38011u16 {
        let who = lab.udp_request(sport).unwrap_or_else(|e| {
            panic!("flow {sport} after the re-attach: {e:#}\n{}", lab.dsr_log())
        });
        assert_eq!(lab.index_of(&who), lab.predict(17, sport), "flow {sport}");
    }
    // A restart adopts the data path on the new interface.
    lab.stop_dsr();
    lab.restart_dsr(false).unwrap_or_else(|e| panic!("{e:#}"));
    lab.udp_request(38020).expect("answered after a restart");
}
