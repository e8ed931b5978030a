//! VLAN tags on a real interface: where a tag crosses as metadata (a veth whose sending peer
//! has tx-vlan offload on, a NIC's rx-vlan-hw-parse), XDP sees the frame untagged. dsr
//! refuses `vlan` VIPs where it cannot be sure of the tags, turns off the RX stripping it can
//! (and `dsr stop` turns it back on), and, with the tags in band, forwards tagged frames with
//! their tags.

use dsr::datapath::{ethtool, offload::RX_PARSE};
use dsr_lab::{
    frames::{self, ETH_P_IPV4, TCP, UDP},
    lab::{CLIENT_IP, CLIENT_MAC, Capture, LB_MAC, Lab, TCP_PORT, UDP_PORT, VIP, in_netns, sh},
};

const IFACE: &str = "eth0";
const PEER_OF_LB: &str = "port-lb";
const TPID_8021Q: u16 = 0x8100;
const TPID_8021AD: u16 = 0x88a8;

/// `(active, fixed)` of the LB interface's RX tag stripping, read by dsr's ethtool module.
fn rx_parse(lab: &Lab) -> Vec<(String, bool)> {
    in_netns(&lab.lb_ns, || ethtool::features(IFACE, &RX_PARSE))
        .expect("reading the LB's features")
        .into_iter()
        .map(|f| (f.name, f.active))
        .collect()
}

/// The same, as `ethtool -k` prints it (rx-vlan-hw-parse is shown as rx-vlan-offload).
fn ethtool_k(ns: &str, iface: &str) -> String {
    sh(&["ip", "netns", "exec", ns, "ethtool", "-k", iface]).expect("ethtool -k")
}

fn shows(k: &str, name: &str, on: bool) -> bool {
    let want = format!("{name}: {}", if on { "on" } else { "off" });
    k.lines().any(|l| l.trim().starts_with(&want))
}

fn both(on: bool) -> Vec<(String, bool)> {
    RX_PARSE.iter().map(|n| (n.to_string(), on)).collect()
}

fn udp_vip(vlan: Option<u16>, backends: &Lab) -> String {
    let mut c = format!(
        "\n[[vip]]\nname = \"udp\"\naddress = \"{VIP}\"\nport = {UDP_PORT}\nprotocol = \"udp\"\n"
    );
    if let Some(v) = vlan {
        c += &format!("vlan = {v}\n");
    }
    for b in &backends.backends {
        c += &format!("  [[vip.backend]]\n  address = \"{}\"\n", b.ip);
    }
    c
}

fn xdp_attached(lab: &Lab) -> bool {
    sh(&["ip", "-n", &lab.lb_ns, "link", "show", IFACE])
        .expect("ip link show")
        .contains("xdp")
}

/// (a) On a lab veth whose bridge-side peer keeps its tx-VLAN offload (the default), a
/// `vlan` VIP is refused at start: dsr exits non-zero naming the interface and the remedy,
/// and nothing is pinned, attached or changed. Without a `vlan` VIP it starts and warns once.
#[test]
fn vlan_vip_refused_where_tags_arrive_out_of_band() {
    let mut lab = Lab::new("vlanrefuse", &[1]);
    let config = lab.header() + &udp_vip(Some(100), &lab);
    let before = rx_parse(&lab);
    let err = match lab.start_dsr_with(&config, false) {
        Ok(()) => panic!(
            "dsr started with a vlan VIP on a veth whose peer hands tags over out of band:\n{}",
            lab.dsr_log()
        ),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("dsr exited with exit status: ") && !err.contains("exit status: 0"),
        "dsr should exit non-zero: {err}"
    );
    let log = lab.dsr_log();
    for needle in [
        "refusing to start",
        "eth0 is a veth",
        "ethtool -K PEER tx-vlan-hw-insert off tx-vlan-stag-hw-insert off",
        "vlan_tags = \"in-band\"",
    ] {
        assert!(
            log.contains(needle),
            "the refusal should say {needle:?}:\n{log}"
        );
    }
    assert!(
        !dsr::datapath::pin_dir(&lab.tag).exists(),
        "a refused start pinned {}",
        dsr::datapath::pin_dir(&lab.tag).display()
    );
    assert!(!xdp_attached(&lab), "a refused start attached XDP");
    assert_eq!(rx_parse(&lab), before, "a refused start changed offloads");
    assert!(!lab.dir.join("state/offload.json").exists());

    // No vlan VIP: it starts, warning once that tagged frames would lose their tags.
    let config = lab.header() + &udp_vip(None, &lab);
    lab.start_dsr_with(&config, false)
        .unwrap_or_else(|e| panic!("without a vlan VIP dsr should start: {e:#}"));
    assert!(xdp_attached(&lab));
    let log = lab.dsr_log();
    let warnings = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("VLAN tags may not reach XDP on eth0"))
        .count();
    assert_eq!(warnings, 1, "one warning about the veth's tags:\n{log}");

    // Nor can one come in later: `dsr vip add ...@vlanN` and a reload adding one are refused.
    let (ok, out) = lab.dsr(&["vip", "add", &format!("{VIP}:5353/udp@vlan100")]);
    assert!(
        !ok && out.contains("refused") && out.contains("tx-vlan-hw-insert off"),
        "{out}"
    );
    std::fs::write(lab.config_path(), lab.header() + &udp_vip(Some(100), &lab)).unwrap();
    let (ok, out) = lab.dsr(&["reload"]);
    assert!(
        !ok && out.contains("refused") && out.contains("vlan_tags"),
        "{out}"
    );
    let (ok, out) = lab.dsr(&["status"]);
    assert!(ok && !out.contains("vlan100"), "a vlan VIP got in:\n{out}");
}

/// (b) dsr turns RX tag stripping off on the interface it attaches to and remembers what it
/// was: SIGTERM and a restart leave it off (the data path keeps running), `dsr stop` puts the
/// original values back. Read back both with dsr's ethtool module and with `ethtool -k`.
#[test]
fn rx_vlan_parse_turned_off_and_restored_by_stop() {
    let mut lab = Lab::new("vlanparse", &[1]);
    sh(&[
        "ip",
        "netns",
        "exec",
        &lab.lb_ns,
        "ethtool",
        "-K",
        IFACE,
        "rx-vlan-hw-parse",
        "on",
        "rx-vlan-stag-hw-parse",
        "on",
    ])
    .expect("turning RX VLAN parsing on");
    assert_eq!(rx_parse(&lab), both(true));
    let k = ethtool_k(&lab.lb_ns, IFACE);
    assert!(shows(&k, "rx-vlan-offload", true) && shows(&k, "rx-vlan-stag-hw-parse", true));

    lab.start_dsr(false).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        rx_parse(&lab),
        both(false),
        "dsr should turn RX VLAN parsing off"
    );
    let k = ethtool_k(&lab.lb_ns, IFACE);
    assert!(
        shows(&k, "rx-vlan-offload", false) && shows(&k, "rx-vlan-stag-hw-parse", false),
        "{k}"
    );
    assert!(
        lab.dsr_log()
            .contains("turned off rx-vlan-hw-parse, rx-vlan-stag-hw-parse on eth0"),
        "{}",
        lab.dsr_log()
    );
    // With parsing off, tagged frames reach XDP with their tags and leave with them.
    peer_sends_tags_in_band(&lab);
    send_and_check(
        &lab,
        &[(
            "802.1Q VID 100 with parsing turned off",
            tagged_frame(TCP, 40011, b"parsed", &[(TPID_8021Q, 100)]),
            true,
        )],
    );

    // SIGTERM: the data path keeps forwarding, and needs the tags still.
    let status = lab.stop_dsr().expect("dsr was running");
    assert!(status.success(), "{status}\n{}", lab.dsr_log());
    assert_eq!(rx_parse(&lab), both(false), "SIGTERM must not restore");

    // A restart finds them off (its own doing): the saved originals must stay "on".
    lab.restart_dsr(false).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(rx_parse(&lab), both(false));
    let saved = std::fs::read_to_string(lab.dir.join("state/offload.json")).expect("saved");
    let saved: serde_json::Value = serde_json::from_str(&saved).unwrap();
    for name in RX_PARSE {
        assert_eq!(
            saved["eth0"][name],
            serde_json::Value::Bool(true),
            "{saved}"
        );
    }

    let (ok, out) = lab.dsr(&["stop"]);
    assert!(ok, "dsr stop: {out}");
    lab.stop_dsr();
    assert_eq!(rx_parse(&lab), both(true), "dsr stop should restore them");
    let k = ethtool_k(&lab.lb_ns, IFACE);
    assert!(
        shows(&k, "rx-vlan-offload", true) && shows(&k, "rx-vlan-stag-hw-parse", true),
        "{k}"
    );
    assert!(!lab.dir.join("state/offload.json").exists());
}

/// Turns off the tx-vlan offloads of the LB's peer, so that tags cross the veth in band.
fn peer_sends_tags_in_band(lab: &Lab) {
    sh(&[
        "ip",
        "netns",
        "exec",
        &lab.switch_ns,
        "ethtool",
        "-K",
        PEER_OF_LB,
        "tx-vlan-hw-insert",
        "off",
        "tx-vlan-stag-hw-insert",
        "off",
    ])
    .expect("turning off the peer's tx-vlan offload");
}

/// A UDP (or TCP) frame from the client to the VIP with `tags` (outermost first).
fn tagged_frame(proto: u8, sport: u16, marker: &[u8], tags: &[(u16, u16)]) -> Vec<u8> {
    let seg = if proto == UDP {
        frames::udp(sport, UDP_PORT, marker)
    } else {
        frames::tcp(sport, TCP_PORT, marker)
    };
    let ip = frames::ipv4(CLIENT_IP, VIP, proto, &[], &seg);
    let mut f = frames::ethernet(LB_MAC, CLIENT_MAC, ETH_P_IPV4, &ip);
    for &(tpid, vid) in tags.iter().rev() {
        f = frames::tagged(&f, tpid, vid);
    }
    f
}

/// (c) With the LB's peer sending tags in band (its tx-vlan offloads off) and the operator
/// vouching for it (`vlan_tags = "in-band"`), 802.1Q (VID 100, VID 0) and QinQ (802.1ad
/// outer, 802.1Q inner) frames reach the backend with the same tags, addressed from the LB
/// to the backend, the rest of the frame unchanged; a `vlan = 100` VIP does not take VID 200.
#[test]
fn tags_kept_in_band_reach_the_backend() {
    let mut lab = Lab::new("vlantags", &[1]);
    peer_sends_tags_in_band(&lab);
    // UDP only on VLAN 100; TCP on any VLAN (for the priority-tagged VID 0 frame).
    let mut config = format!("vlan_tags = \"in-band\"\n{}", lab.header());
    config += &udp_vip(Some(100), &lab);
    config += &format!(
        "\n[[vip]]\nname = \"tcp\"\naddress = \"{VIP}\"\nport = {TCP_PORT}\nprotocol = \"tcp\"\n  [[vip.backend]]\n  address = \"{}\"\n",
        lab.backends[0].ip
    );
    lab.start_dsr_with(&config, false)
        .unwrap_or_else(|e| panic!("{e:#}"));

    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        (
            "802.1Q VID 100",
            tagged_frame(UDP, 40001, b"vid100", &[(TPID_8021Q, 100)]),
            true,
        ),
        (
            "802.1Q VID 0 (priority tag)",
            tagged_frame(TCP, 40002, b"vid0", &[(TPID_8021Q, 0)]),
            true,
        ),
        (
            "QinQ 802.1ad 100 / 802.1Q 7",
            tagged_frame(UDP, 40003, b"qinq", &[(TPID_8021AD, 100), (TPID_8021Q, 7)]),
            true,
        ),
        (
            "802.1Q VID 200 (no VIP)",
            tagged_frame(UDP, 40004, b"vid200", &[(TPID_8021Q, 200)]),
            false,
        ),
    ];
    send_and_check(&lab, &cases);
}

/// Sends each case's frame from the client and checks that backend 0 got it from the LB with
/// its tags unchanged (`true`), or not at all.
fn send_and_check(lab: &Lab, cases: &[(&str, Vec<u8>, bool)]) {
    let backend = (lab.backends[0].ns.clone(), lab.backends[0].mac);
    let cap = Capture::start_tagged(&backend.0, IFACE);
    for (what, frame, _) in cases {
        dsr_lab::lab::send_frame(&lab.client_ns, IFACE, frame.clone())
            .unwrap_or_else(|e| panic!("sending {what}: {e:#}"));
    }
    let got = cap.stop();
    let from_lb: Vec<&Vec<u8>> = got.iter().filter(|f| f[6..12] == LB_MAC).collect();
    for (what, frame, forwarded) in cases {
        let mut want = frame.clone();
        want[0..6].copy_from_slice(&backend.1);
        want[6..12].copy_from_slice(&LB_MAC);
        let n = from_lb.iter().filter(|f| ***f == want).count();
        if *forwarded {
            assert_eq!(
                n,
                1,
                "{what}: expected exactly one frame at the backend, from the LB, with the \
                 same tags; frames from the LB:\n{}\n{}",
                hex_all(&from_lb),
                lab.dsr_log()
            );
        } else {
            // The marker ends the frame ("vid200").
            let payload = &frame[frame.len() - 6..];
            let leaked = from_lb.iter().filter(|f| f.ends_with(payload)).count();
            assert_eq!(leaked, 0, "{what} was forwarded:\n{}", hex_all(&from_lb));
        }
    }
}

fn hex_all(frames: &[&Vec<u8>]) -> String {
    frames
        .iter()
        .map(|f| {
            f.iter()
                .take(64)
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("\n")
}
