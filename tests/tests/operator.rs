//! Operator tools around the daemon: `dsr realserver` on a backend, and the Prometheus
//! endpoint.

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::Command,
    time::Duration,
};

use dsr_lab::lab::{Lab, VIP, dsr_bin, in_netns, sh};

fn in_ns(ns: &str, args: &[&str]) -> (bool, String) {
    let bin = dsr_bin();
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(&bin)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn sysctls(ns: &str) -> Vec<String> {
    ["arp_ignore", "arp_announce", "rp_filter"]
        .iter()
        .map(|k| {
            sh(&[
                "ip",
                "netns",
                "exec",
                ns,
                "cat",
                &format!("/proc/sys/net/ipv4/conf/all/{k}"),
            ])
            .unwrap()
            .trim()
            .to_owned()
        })
        .collect()
}

struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.0]);
    }
}

/// setup adds exactly what is missing, check reports it, teardown restores exactly what was
/// there (including a VIP the operator had added by hand, which stays).
#[test]
fn realserver_setup_check_teardown() {
    let ns = Netns(format!("rs-{}", std::process::id()));
    let _ = sh(&["ip", "netns", "del", &ns.0]);
    sh(&["ip", "netns", "add", &ns.0]).unwrap();
    sh(&["ip", "-n", &ns.0, "link", "set", "lo", "up"]).unwrap();
    // Start from a strict rp_filter, as many distributions ship.
    sh(&[
        "ip",
        "netns",
        "exec",
        &ns.0,
        "sh",
        "-c",
        "echo 1 > /proc/sys/net/ipv4/conf/all/rp_filter",
    ])
    .unwrap();
    let before = sysctls(&ns.0);
    let record = std::env::temp_dir().join(format!("dsr-rs-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&record);
    let vip = "198.18.9.9";
    // `dsr realserver ACTION` for this VIP and record, inside the namespace.
    let rs = |action: &str| {
        let record = record.to_string_lossy();
        in_ns(
            &ns.0,
            &["realserver", action, "--vip", vip, "--state", &record],
        )
    };

    let (ok, out) = in_ns(&ns.0, &["realserver", "check", "--vip", vip]);
    assert!(!ok, "check passed on a bare host: {out}");
    assert!(
        out.contains("MISSING") && out.contains("198.18.9.9 on lo"),
        "{out}"
    );

    let (ok, out) = rs("setup");
    assert!(ok, "{out}");
    assert!(out.contains("added 198.18.9.9/32 to lo"), "{out}");
    assert_eq!(sysctls(&ns.0), ["1", "2", "2"]);
    let addrs = sh(&["ip", "-n", &ns.0, "addr", "show", "dev", "lo"]).unwrap();
    assert!(addrs.contains("198.18.9.9/32"), "{addrs}");
    let (ok, out) = in_ns(&ns.0, &["realserver", "check", "--vip", vip]);
    assert!(ok && !out.contains("MISSING"), "{out}");
    // Running it again changes nothing.
    let (ok, out) = rs("setup");
    assert!(ok && out.contains("nothing to do"), "{out}");

    let (ok, out) = rs("teardown");
    assert!(ok, "{out}");
    assert_eq!(
        sysctls(&ns.0),
        before,
        "teardown did not restore the sysctls"
    );
    let addrs = sh(&["ip", "-n", &ns.0, "addr", "show", "dev", "lo"]).unwrap();
    assert!(!addrs.contains("198.18.9.9"), "{addrs}");

    // A VIP the operator put there stays after teardown.
    sh(&[
        "ip",
        "-n",
        &ns.0,
        "addr",
        "add",
        "198.18.9.9/32",
        "dev",
        "lo",
    ])
    .unwrap();
    let (ok, out) = rs("setup");
    assert!(ok && !out.contains("added"), "{out}");
    let (ok, out) = rs("teardown");
    assert!(ok, "{out}");
    let addrs = sh(&["ip", "-n", &ns.0, "addr", "show", "dev", "lo"]).unwrap();
    assert!(
        addrs.contains("198.18.9.9/32"),
        "teardown removed an address it had not added: {addrs}"
    );
    let (ok, out) = rs("teardown");
    assert!(!ok && out.contains("nothing to undo"), "{out}");
}

fn get(lab: &Lab, path: &str) -> String {
    let path = path.to_owned();
    in_netns(&lab.lb_ns, move || {
        let mut s = TcpStream::connect("127.0.0.1:9464").expect("metrics endpoint");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    })
}

fn sample(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {prefix} in:\n{text}"))
}

#[test]
fn prometheus_endpoint_reports_traffic_health_and_verdicts() {
    let mut lab = Lab::new("metrics", &[1, 1]);
    let config = lab.config().replace(
        "flow_table_size",
        "metrics = \"127.0.0.1:9464\"\nflow_count_interval = \"1s\"\nflow_table_size",
    );
    lab.start_dsr_with(&config, false)
        .unwrap_or_else(|e| panic!("{e:#}"));
    for p in 48000..48040u16 {
        lab.udp_request(p).unwrap();
    }
    lab.wait_for("the flow count", Duration::from_secs(5), || {
        lab.status().flow_table.is_some_and(|t| t.live == 40)
    });
    let text = get(&lab, "/metrics");
    assert_eq!(sample(&text, "dsr_flow_table_capacity "), 65536.0);
    assert_eq!(
        sample(&text, "dsr_flow_table_entries{state=\"live\"}"),
        40.0
    );
    assert_eq!(
        sample(&text, "dsr_vip_tracked_flows{vip=\"udp-53\""),
        40.0,
        "{text}"
    );
    let tracked: f64 = ["198.18.0.11", "198.18.0.12"]
        .iter()
        .map(|b| {
            sample(
                &text,
                &format!(
                    "dsr_backend_tracked_flows{{vip=\"udp-53\",address=\"{VIP}:53/udp\",backend=\"{b}\""
                ),
            )
        })
        .sum();
    assert_eq!(tracked, 40.0, "{text}");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("# TYPE dsr_vip_packets counter"), "{text}");
    let vip = format!("dsr_vip_packets_total{{vip=\"udp-53\",address=\"{VIP}:53/udp\"}}");
    assert!(sample(&text, &vip) >= 40.0);
    assert_eq!(sample(&text, "dsr_vip_flows_total{vip=\"udp-53\""), 40.0);
    let per_backend: f64 = ["198.18.0.11", "198.18.0.12"]
        .iter()
        .map(|b| {
            sample(
                &text,
                &format!(
                    "dsr_backend_packets_total{{vip=\"udp-53\",address=\"{VIP}:53/udp\",backend=\"{b}\""
                ),
            )
        })
        .sum();
    assert!(per_backend >= 40.0, "{text}");
    assert_eq!(
        sample(
            &text,
            &format!(
                "dsr_backend_up{{vip=\"udp-53\",address=\"{VIP}:53/udp\",backend=\"198.18.0.11\"}}"
            )
        ),
        1.0
    );
    assert!(
        sample(
            &text,
            "dsr_verdict_packets_total{reason=\"forwarded\",verdict=\"forward\"}"
        ) >= 40.0
    );
    // The daemon's own families.
    assert_eq!(sample(&text, "dsr_up "), 1.0);
    assert!(text.contains("dsr_build_info{version="), "{text}");
    assert!(
        text.contains("dsr_reloads_total{result=\"applied\"} 0"),
        "{text}"
    );
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    assert!(get(&lab, "/").starts_with("HTTP/1.1 404"));
}

fn explain(lab: &Lab, source: &str, destination: &str) -> dsr::control::explain::Explained {
    let (ok, out) = lab.dsr(&["explain", source, destination, "--json"]);
    assert!(ok, "dsr explain {source} {destination}: {out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("explain JSON: {e}: {out}"))
}

/// `dsr explain` says which backend a flow gets and why, read from the running maps, and
/// agrees with the data path: an open connection is explained by its flow entry and its
/// answering backend; a flow never seen by the table slot, and the real request is then
/// answered by that backend. Table digests are in status, and `dsr compare` finds a VIP whose
/// tables differ between two nodes' status.
#[test]
fn explain_agrees_with_the_data_path_and_digests_compare_nodes() {
    use dsr::control::explain::ChosenBy;
    let mut lab = Lab::new("explain", &[1, 1, 1]);
    // A VLAN VIP is added below; only explained, never sent tagged traffic.
    let config = format!("vlan_tags = \"in-band\"\n{}", lab.config());
    lab.start_dsr_with(&config, false)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let client = lab.client_ip;
    let vip = format!("{VIP}:80/tcp");

    let mut conn = lab.tcp_connect(44000).unwrap();
    let who = lab.index_of(&conn.ask().unwrap());
    let e = explain(&lab, &format!("{client}:44000"), &vip);
    assert_eq!(e.chosen_by, Some(ChosenBy::FlowEntry), "{e:?}");
    assert_eq!(
        (e.verdict.as_str(), e.backend),
        ("forward", Some(lab.backends[who].ip.into()))
    );

    for sport in 44100..44110u16 {
        let e = explain(&lab, &format!("{client}:{sport}"), &vip);
        assert_eq!(e.chosen_by, Some(ChosenBy::Table), "{e:?}");
        let predicted = lab.predict(6, sport);
        assert_eq!(e.backend, Some(lab.backends[predicted].ip.into()), "{e:?}");
        let answered = lab.tcp_request(sport, 1).unwrap();
        assert_eq!(lab.index_of(&answered[0]), predicted, "flow {sport}");
    }
    // The text view, as an operator reads it.
    let (ok, text) = lab.dsr(&["explain", &format!("{client}:44100"), &vip]);
    assert!(ok && text.contains("=> forward to 198.18.0."), "{text}");
    println!("{text}");
    let e = explain(&lab, &format!("{client}:1"), &format!("{VIP}:81/tcp"));
    assert_eq!((e.verdict.as_str(), e.vip), ("pass", None));

    // Two "nodes": this status and a copy whose UDP table differs.
    let status = lab.status();
    assert!(status.vips.iter().all(|v| v.table_digest.is_some()));
    let a = lab.dir.join("a.json");
    let b = lab.dir.join("b.json");
    std::fs::write(&a, serde_json::to_string(&status).unwrap()).unwrap();
    let mut other = status.clone();
    other.vips[1].table_digest = Some("0123456789abcdef".into());
    std::fs::write(&b, serde_json::to_string(&other).unwrap()).unwrap();
    let cmp = |x: &std::path::Path, y: &std::path::Path| {
        let out = Command::new(dsr_bin())
            .arg("compare")
            .arg(x)
            .arg(y)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (same, out) = cmp(&a, &a);
    assert!(same && out.contains("the same tables"), "{out}");
    let (same, out) = cmp(&a, &b);
    assert!(
        !same && out.contains(&status.vips[1].name) && out.contains("tables differ"),
        "{out}"
    );
    assert!(
        !out.contains(&format!("VIP {} ", status.vips[0].name)),
        "{out}"
    );

    // An all-ports VIP on VLAN 5 beside the port-80 VIP of any VLAN, on one address: a VLAN-5
    // frame to port 80 is the former's (the data path tries this VLAN before any VLAN, then
    // the exact port before all ports); an untagged one stays the latter's.
    let port80 = explain(&lab, &format!("{client}:44200"), &vip).vip;
    assert!(port80.is_some());
    let (ok, out) = lab.dsr(&[
        "vip",
        "add",
        &format!("{VIP}:*/tcp@vlan5"),
        "--name",
        "all-ports-vlan5",
    ]);
    assert!(ok, "dsr vip add: {out}");
    let (ok, out) = lab.dsr(&[
        "explain",
        &format!("{client}:44200"),
        &vip,
        "--vlan",
        "5",
        "--json",
    ]);
    assert!(ok, "dsr explain --vlan 5: {out}");
    let tagged: dsr::control::explain::Explained = serde_json::from_str(&out).unwrap();
    assert_eq!(tagged.vip.as_deref(), Some("all-ports-vlan5"), "{tagged:?}");
    let untagged = explain(&lab, &format!("{client}:44200"), &vip);
    assert_eq!(untagged.vip, port80, "{untagged:?}");
    drop(conn);
}

/// The ipvsadm-like views: `dsr list` (a line per VIP and backend, at most 100 columns, with
/// --rate and --stats), `dsr flows` (the tracked flows, bounded) and `status --watch`.
#[test]
fn list_flows_and_watch_views() {
    let mut lab = Lab::new("views", &[1, 1]);
    let config = format!("flow_count_interval = \"1s\"\n{}", lab.config());
    lab.start_dsr_with(&config, false)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut answered = std::collections::HashMap::new();
    for sport in 45000..45010u16 {
        let who = lab.udp_request(sport).unwrap();
        answered.insert(sport, lab.index_of(&who));
    }
    // The flow table's count: per VIP and backend, what the clients saw (ipvsadm's
    // active connections), and the table's fill.
    lab.wait_for(
        "a flow count with the 10 flows",
        Duration::from_secs(5),
        || {
            lab.status()
                .flow_table
                .is_some_and(|t| t.live == 10 && t.capacity == 65536)
        },
    );
    let status = lab.status();
    let udp = status.vips.iter().find(|v| v.name == "udp-53").unwrap();
    assert_eq!(udp.tracked_flows, Some(10));
    for (i, b) in udp.backends.iter().enumerate() {
        let want = answered.values().filter(|&&w| w == i).count() as u64;
        assert_eq!(b.tracked_flows, Some(want), "backend {i}: {b:?}");
    }
    let (ok, text) = lab.dsr(&["status"]);
    assert!(
        ok && text.contains("flow table: 10 live + 0 expired of 65536 entries"),
        "{text}"
    );
    for args in [
        vec!["list"],
        vec!["list", "--rate"],
        vec!["list", "--stats"],
    ] {
        let (ok, out) = lab.dsr(&args);
        assert!(ok, "{args:?}: {out}");
        let lines: Vec<&str> = out.lines().collect();
        // A header, then per VIP its line and one per backend.
        assert_eq!(lines.len(), 1 + 2 * 3, "{args:?}:\n{out}");
        assert!(
            lines.iter().all(|l| l.chars().count() <= 100),
            "{args:?}:\n{out}"
        );
    }
    let (_, stats) = lab.dsr(&["list", "--stats"]);
    assert!(stats.contains("UDP 198.18.0.100:53"), "{stats}");

    let (ok, out) = lab.dsr(&["flows", "udp-53", "--json"]);
    assert!(ok, "{out}");
    let flows: Vec<dsr::control::status::FlowStatus> = serde_json::from_str(&out).unwrap();
    assert_eq!(flows.len(), 10, "{out}");
    for f in &flows {
        assert_eq!(f.client, Some(lab.client_ip.into()));
        let sport = f.client_port.expect("the 5-tuple keeps the port");
        assert_eq!(
            f.backend,
            Some(lab.backends[answered[&sport]].ip.into()),
            "{f:?}"
        );
    }
    let (ok, out) = lab.dsr(&["flows", "--limit", "3"]);
    assert!(ok && out.contains("3 flows"), "{out}");

    let mut watch = Command::new(dsr_bin())
        .args(["status", "--watch", "0.5", "--config"])
        .arg(lab.config_path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1800));
    watch.kill().unwrap();
    watch.wait().unwrap();
    let mut out = String::new();
    watch
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(out.matches("\x1b[H\x1b[2J").count() >= 2, "{out:?}");
    assert!(out.matches("dsr instance").count() >= 2, "{out:?}");
}

fn plan(lab: &Lab, args: &[&str]) -> dsr::control::planning::PlanReport {
    let mut all = vec!["plan"];
    all.extend_from_slice(args);
    all.push("--json");
    let (ok, out) = lab.dsr(&all);
    assert!(ok, "dsr {all:?}: {out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("plan JSON: {e}: {out}"))
}

/// `dsr plan` says what a change would move before it is made, and changes nothing: a
/// drained backend's slots (a third of the table) move but its open connections stay; a
/// removed backend's open connections move, and with one configured backend fewer the table
/// is resized (2 of 3 new flows go elsewhere, which the plan says); a config adding a fourth
/// backend resizes it too (3 of 4 move).
#[test]
fn plan_shows_what_a_change_would_move_and_changes_nothing() {
    let mut lab = Lab::new("plan", &[1, 1, 1]);
    lab.start_dsr(false).unwrap_or_else(|e| panic!("{e:#}"));
    let first = lab.backends[0].ip.to_string();
    // Open connections, some of them on the first backend.
    let conns: Vec<_> = (46000..46012u16)
        .map(|p| {
            let mut c = lab.tcp_connect(p).unwrap();
            let who = lab.index_of(&c.ask().unwrap());
            (c, who)
        })
        .collect();
    let on_first = conns.iter().filter(|(_, w)| *w == 0).count() as u64;
    assert!(on_first > 0, "no connection landed on the first backend");
    let before = lab.status();

    let vip_of = |p: &dsr::control::planning::PlanReport, name: &str| {
        p.vips.iter().find(|v| v.name == name).unwrap().clone()
    };
    let drained = vip_of(
        &plan(&lab, &["backend", "drain", "tcp-80", &first]),
        "tcp-80",
    );
    let third = drained.table_size as f64 / 3.0;
    assert!(
        (drained.slots_moved as f64 - third).abs() < third * 0.05,
        "{drained:?}"
    );
    let b = drained
        .backends
        .iter()
        .find(|b| b.address.to_string() == first)
        .unwrap();
    // Its own slots move, and (Maglev is not perfectly minimal) a few others. Drain keeps
    // the table's size (only the configured backends size it).
    assert_eq!(b.slots_after, 0, "{drained:?}");
    assert_eq!(drained.table_size, drained.table_size_before, "{drained:?}");
    assert_eq!(drained.table_size, lab.table_size_of(80), "{drained:?}");
    assert!(
        drained.slots_moved >= b.slots_before
            && (drained.slots_moved as f64) < b.slots_before as f64 * 1.03,
        "{drained:?}"
    );
    assert_eq!(drained.tracked_flows, 12, "{drained:?}");
    assert_eq!(
        drained.tracked_flows_moving, 0,
        "a drained backend keeps its flows"
    );

    let removed = vip_of(
        &plan(&lab, &["backend", "remove", "tcp-80", &first]),
        "tcp-80",
    );
    assert_eq!(removed.tracked_flows_moving, on_first, "{removed:?}");
    // One configured backend fewer: a smaller table, in which a new flow lands in an
    // unrelated slot (2 of 3 go to another backend than before), and the plan says so.
    assert!(
        removed.table_size < removed.table_size_before,
        "{removed:?}"
    );
    assert!(
        (removed.share_moved - 2.0 / 3.0).abs() < 0.05,
        "{removed:?}"
    );
    let (ok, text) = lab.dsr(&["plan", "backend", "remove", "tcp-80", &first]);
    assert!(ok && text.contains("table resized from"), "{text}");
    assert!(
        text.contains("198.18.0.100:80/tcp: changed;")
            && !text.contains("new backends are counted"),
        "lowercase change words, and the new-backend note only where one is added: {text}"
    );

    let config = lab.config().replacen(
        "  [[vip.backend]]\n",
        "  [[vip.backend]]\n  address = \"198.18.0.14\"\n  [[vip.backend]]\n",
        1,
    );
    let file = lab.dir.join("more.toml");
    std::fs::write(&file, config).unwrap();
    let grown = plan(&lab, &["config", file.to_str().unwrap()]);
    let tcp = vip_of(&grown, "tcp-80");
    // A fourth configured backend grows the table: 3 of 4 new flows go elsewhere.
    assert!(tcp.table_size > tcp.table_size_before, "{tcp:?}");
    assert!((tcp.share_moved - 0.75).abs() < 0.05, "{tcp:?}");
    assert!(
        tcp.backends
            .iter()
            .all(|b| b.new == (b.address.to_string() == "198.18.0.14")),
        "{tcp:?}"
    );
    let (ok, text) = lab.dsr(&["plan", "config", file.to_str().unwrap()]);
    assert!(ok && text.contains("new backends are counted"), "{text}");
    assert_eq!(vip_of(&grown, "udp-53").slots_moved, 0);

    // Nothing was applied.
    let after = lab.status();
    assert_eq!(after.runtime_changes, 0);
    for (x, y) in before.vips.iter().zip(&after.vips) {
        assert_eq!(x.table_digest, y.table_digest);
    }
    drop(conns);
}

/// Whether the data path's trace switch is on (SETTINGS.trace, read from the pins).
fn tracing_on(lab: &Lab) -> bool {
    let pin = dsr::datapath::pin_dir(&lab.tag).join(dsr_common::names::SETTINGS);
    let data = aya::maps::MapData::from_pin(pin).expect("pinned SETTINGS");
    let settings: aya::maps::Array<_, dsr_common::Settings> =
        aya::maps::Map::Array(data).try_into().unwrap();
    settings.get(&0, 0).unwrap().trace != 0
}

/// Starts `dsr trace ARGS --json` and waits until the data path traces.
fn start_trace(lab: &Lab, args: &[&str]) -> std::process::Child {
    let child = Command::new(dsr_bin())
        .arg("trace")
        .args(args)
        .arg("--json")
        .arg("--config")
        .arg(lab.config_path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    lab.wait_for("the trace switch to go on", Duration::from_secs(5), || {
        tracing_on(lab)
    });
    child
}

/// Waits for a `dsr trace` to end by itself; returns its success, events and summary.
fn end_of_trace(
    child: std::process::Child,
) -> (bool, Vec<dsr::control::trace::TraceEvent>, String) {
    let out = child.wait_with_output().unwrap();
    let events = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("trace JSON {e}: {l}")))
        .collect();
    (
        out.status.success(),
        events,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `dsr trace` shows the data path's decision for each frame of real traffic, live: a new
/// connection's SYN placed by the VIP's table (the slot the shared hash predicts) and
/// remembered, its later segments by the flow table, to the backend that answered; filters
/// by client and by VIP; stops at its count; and the switch is off again when no one traces.
#[test]
fn trace_shows_each_frame_decision_live() {
    use dsr_common::{DEFAULT_HASH_SEED, FlowKey, flow_hash};
    let mut lab = Lab::new("trace", &[1, 1, 1]);
    lab.start_dsr(false).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(!tracing_on(&lab), "tracing before anyone asked");
    let client = lab.client_ip.to_string();

    let trace = start_trace(&lab, &["--client", &client, "--count", "3", "--for", "20s"]);
    let sport = 45000;
    let answered = lab.tcp_request(sport, 1).unwrap();
    let (ok, events, summary) = end_of_trace(trace);
    assert!(ok && summary.contains("3 frames traced"), "{summary}");
    assert!(summary.contains("count reached"), "{summary}");
    let who = lab.index_of(&answered[0]);
    assert_eq!(who, lab.predict(6, sport));
    let backend = std::net::IpAddr::V4(lab.backends[who].ip);
    let flow = |e: &dsr::control::trace::TraceEvent| {
        (
            e.client.map(|c| c.to_string()),
            e.destination.map(|d| d.to_string()),
        )
    };
    for e in &events {
        assert_eq!(
            flow(e),
            (Some(format!("{client}:{sport}")), Some(format!("{VIP}:80"))),
            "{e:?}"
        );
        assert_eq!(
            (e.verdict.as_str(), e.reason.as_str(), e.vip.as_deref()),
            ("forward", "forwarded", Some("tcp-80"))
        );
        assert_eq!(e.backend, Some(backend), "{e:?}");
    }
    let syn = &events[0];
    let key = FlowKey::new(lab.client_ip.into(), sport, VIP.into(), 80, 6);
    assert_eq!(syn.tcp_flags.as_deref(), Some("S"), "{syn:?}");
    assert_eq!(syn.chosen_by.as_deref(), Some("table"));
    assert_eq!(
        syn.slot,
        Some(flow_hash(&key, DEFAULT_HASH_SEED) % lab.table_size_of(80))
    );
    assert!(syn.remembered);
    for e in &events[1..] {
        assert_eq!(e.chosen_by.as_deref(), Some("flow_table"), "{e:?}");
        assert_eq!(e.slot, None);
    }
    lab.wait_for(
        "the trace switch to go off with the last session",
        Duration::from_secs(5),
        || !tracing_on(&lab),
    );

    // By VIP: the UDP VIP's frame only, though TCP comes first.
    let trace = start_trace(&lab, &["--vip", "udp-53", "--count", "1", "--for", "20s"]);
    lab.tcp_request(45001, 1).unwrap();
    lab.udp_request(45002).unwrap();
    let (ok, events, summary) = end_of_trace(trace);
    assert!(ok, "{summary}");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        (events[0].vip.as_deref(), events[0].protocol.as_deref()),
        (Some("udp-53"), Some("udp"))
    );
    assert_eq!(
        events[0].client.map(|c| c.port()),
        Some(45002),
        "{events:?}"
    );

    // The time bound, with nothing to show; the text view.
    let started = std::time::Instant::now();
    let out = Command::new(dsr_bin())
        .args([
            "trace",
            "--client",
            "198.51.100.99",
            "--for",
            "300ms",
            "--config",
        ])
        .arg(lab.config_path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.contains("0 frames traced"),
        "{text}"
    );
    assert!(text.contains("time is up"), "{text}");
    println!("trace of nothing ended after {:?}", started.elapsed());
    let trace = Command::new(dsr_bin())
        .args([
            "trace", "--count", "1", "--for", "20s", "--client", &client, "--config",
        ])
        .arg(lab.config_path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    lab.wait_for("the trace switch to go on", Duration::from_secs(5), || {
        tracing_on(&lab)
    });
    lab.udp_request(45003).unwrap();
    let out = trace.wait_with_output().unwrap();
    let line = String::from_utf8_lossy(&out.stdout);
    println!("{line}");
    assert!(
        line.contains("forward forwarded")
            && line.contains(&format!("udp {client}:45003 > {VIP}:53 vip udp-53 -> ")),
        "{line}"
    );

    // Refusals name what is wrong.
    for (args, want) in [
        (vec!["--vip", "nope"], "no VIP named or addressed \"nope\""),
        (vec!["--count", "0"], "trace count 0 is out of range"),
        (vec!["--for", "2h"], "out of range: 1 ms to 3600 s"),
    ] {
        let (ok, out) = lab.dsr(&[&["trace"], &args[..]].concat());
        assert!(!ok && out.contains(want), "dsr trace {args:?}: {out}");
    }
    assert!(!tracing_on(&lab));
}
