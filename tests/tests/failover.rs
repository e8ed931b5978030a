//! What a backend state change does to real traffic: failure, inhibit_on_failure, drain,
//! backups, sorry servers, losing the last backend, and a backend whose address moves to
//! another host. Each test runs the real `dsr` with real clients in the namespace lab.

use std::time::{Duration, Instant};

use dsr_lab::lab::{HEALTH_PORT, Lab, UDP_PORT, VIP};

const TCP: u8 = 6;
const UDP: u8 = 17;

/// A lab config with one UDP VIP ("udp") and one TCP VIP ("tcp") over the lab's backends.
/// `check` is the VIPs' [vip.check] body; `extra[i]` is added to backend i's section.
fn config(lab: &Lab, check: &str, extra: &[&str]) -> String {
    let mut c = lab.header();
    for (name, port, proto) in [("udp", UDP_PORT, "udp"), ("tcp", 80, "tcp")] {
        c += &format!(
            "\n[[vip]]\nname = \"{name}\"\naddress = \"{VIP}\"\nport = {port}\nprotocol = \"{proto}\"\n"
        );
        if !check.is_empty() {
            c += &format!("[vip.check]\n{check}\n");
        }
        for (i, b) in lab.backends.iter().enumerate() {
            c += &format!(
                "  [[vip.backend]]\n  address = \"{}\"\n  weight = {}\n{}\n",
                b.ip,
                b.weight,
                extra.get(i).unwrap_or(&"")
            );
        }
    }
    c
}

/// A check on the backends' health endpoint (tests turn it off to fail a backend while its
/// service still answers, so that where traffic goes stays observable).
fn health_check(fall: u32) -> String {
    format!(
        "type = \"http\"\nport = {HEALTH_PORT}\npath = \"/health\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\nrise = 1\nfall = {fall}"
    )
}

fn started(tag: &str, weights: &[u32], check: &str, extra: &[&str]) -> Lab {
    let mut lab = Lab::new(tag, weights);
    let cfg = config(&lab, check, extra);
    lab.start_dsr_with(&cfg, false)
        .unwrap_or_else(|e| panic!("{e:#}"));
    lab
}

fn answers(lab: &Lab, sports: impl IntoIterator<Item = u16>) -> Vec<(u16, Option<usize>)> {
    let sports: Vec<u16> = sports.into_iter().collect();
    let results = lab.udp_requests(sports.clone());
    sports
        .into_iter()
        .zip(results)
        .map(|(p, r)| (p, r.ok().map(|who| lab.index_of(&who))))
        .collect()
}

fn wait_health(lab: &Lab, vip: &str, i: usize, want: &str) -> Duration {
    lab.wait_for(
        &format!("{vip} backend {} to be {want}", i + 1),
        Duration::from_secs(5),
        || lab.health_of(vip, i) == want,
    )
}

/// A backend whose server dies leaves the table: only its flows move, to the backend the
/// new table gives them; the others keep theirs. When it returns, flows do not move back.
#[test]
fn failed_backend_only_its_flows_move() {
    // A TCP check on the service port itself: killing the server fails it.
    let check =
        "type = \"tcp\"\nport = 80\ninterval = \"100ms\"\ntimeout = \"100ms\"\nrise = 1\nfall = 2";
    let mut lab = started("fail", &[1, 1, 1], check, &[]);
    for i in 0..3 {
        wait_health(&lab, "udp", i, "up");
    }
    let before = answers(&lab, 21000..21150);
    assert!(
        before.iter().all(|(_, who)| who.is_some()),
        "all flows answered: {before:?}"
    );
    assert!(before.iter().any(|(_, who)| *who == Some(1)));

    lab.stop_service(1);
    let took = wait_health(&lab, "udp", 1, "down");
    eprintln!("backend-2 marked down {took:?} after its server stopped (interval 100ms, fall 2)");

    let after = answers(&lab, 21000..21150);
    for ((port, was), (_, now)) in before.iter().zip(&after) {
        if *was == Some(1) {
            // Backend 2 stands by: only its slots are lent, to the others by weight.
            let owner = lab.predict_around(UDP, *port, &[1, 1, 1], &[1]);
            assert_eq!(
                *now,
                Some(owner),
                "flow {port} of the failed backend went elsewhere than its new owner"
            );
        } else {
            assert_eq!(
                now, was,
                "flow {port} moved although its backend is healthy"
            );
        }
    }

    lab.start_service(1);
    wait_health(&lab, "udp", 1, "up");
    let back = answers(&lab, 21000..21150);
    assert_eq!(back, after, "flows moved again when the backend came back");
    // New flows reach it again.
    let fresh = answers(&lab, 22000..22100);
    assert!(
        fresh.iter().any(|(_, who)| *who == Some(1)),
        "no new flow reached the recovered backend"
    );
}

/// inhibit_on_failure: a failed backend stays with weight 0: its established flows stay,
/// no new flow reaches it.
#[test]
fn inhibit_on_failure_keeps_established_flows() {
    let mut lab = started(
        "inhibit",
        &[1, 1, 1],
        &health_check(2),
        &["", "  inhibit_on_failure = true", ""],
    );
    for i in 0..3 {
        wait_health(&lab, "udp", i, "up");
    }
    let before = answers(&lab, 23000..23100);
    let on_two: Vec<u16> = before
        .iter()
        .filter(|(_, w)| *w == Some(1))
        .map(|(p, _)| *p)
        .collect();
    assert!(!on_two.is_empty());

    lab.set_health(1, false);
    wait_health(&lab, "udp", 1, "down");
    for (p, who) in answers(&lab, on_two.clone()) {
        assert_eq!(
            who,
            Some(1),
            "established flow {p} left an inhibited backend"
        );
    }
    for (p, who) in answers(&lab, 24000..24200) {
        assert!(
            who.is_some() && who != Some(1),
            "new flow {p} went to an inhibited backend ({who:?})"
        );
    }
    let st = lab.status();
    let b = &st.vips.iter().find(|v| v.name == "udp").unwrap().backends[1];
    assert_eq!(
        (b.effective_weight, b.in_table, b.keeps_flows),
        (0.0, false, true),
        "{b:?}"
    );
}

/// Drain (weight 0 / `dsr backend drain`): open TCP connections on the backend keep working,
/// no new connection goes there; `enable` lets new flows in again.
#[test]
fn drain_keeps_open_connections() {
    let lab = started("drain", &[1, 1, 1], "", &[]);
    let mut held = Vec::new();
    for sport in 25000..25100u16 {
        if lab.predict(TCP, sport) == 1 {
            let mut c = lab.tcp_connect(sport).unwrap();
            assert_eq!(c.ask().unwrap(), "backend-2");
            held.push(c);
            if held.len() == 4 {
                break;
            }
        }
    }
    let (ok, out) = lab.dsr(&["backend", "drain", "tcp", "198.18.0.12"]);
    assert!(ok, "{out}");
    assert!(out.contains("draining"), "{out}");
    for c in held.iter_mut() {
        for _ in 0..5 {
            assert_eq!(
                c.ask().unwrap(),
                "backend-2",
                "a drained backend lost an open connection"
            );
        }
    }
    for sport in 26000..26060u16 {
        let who = lab.tcp_request(sport, 1).unwrap().remove(0);
        assert_ne!(
            who, "backend-2",
            "new connection from {sport} sent to a draining backend"
        );
    }
    let st = lab.status();
    let b = &st.vips.iter().find(|v| v.name == "tcp").unwrap().backends[1];
    assert!(
        b.drained && b.keeps_flows && !b.in_table && b.runtime,
        "{b:?}"
    );

    let (ok, out) = lab.dsr(&["backend", "enable", "tcp", "198.18.0.12"]);
    assert!(ok, "{out}");
    let back = (27000..27060u16)
        .filter(|&p| lab.predict(TCP, p) == 1)
        .take(3);
    for sport in back {
        assert_eq!(lab.tcp_request(sport, 1).unwrap()[0], "backend-2");
    }
}

/// Primaries, then backups, then the sorry server, then drop; and back.
#[test]
fn backups_sorry_and_drop() {
    let extra = [
        "",
        "  backup = true",
        // A sorry server is checked only with a check of its own.
        &format!("  sorry = true\n  [vip.backend.check]\n{}", health_check(2)),
    ];
    let mut lab = started("roles", &[1, 1, 1], &health_check(2), &extra);
    for i in 0..3 {
        wait_health(&lab, "udp", i, "up");
    }
    // 40 new flows from `from`: all answered by backend `want` (None: all dropped).
    let all_by = |lab: &Lab, from: u16, want: Option<usize>, why: &str| {
        let got = answers(lab, from..from + 40);
        assert!(got.iter().all(|(_, w)| *w == want), "{why}: {got:?}");
    };
    // Backend `i`'s check turns `up` or down, and dsr has seen it.
    let flip = |lab: &mut Lab, i: usize, up: bool| {
        lab.set_health(i, up);
        wait_health(lab, "udp", i, if up { "up" } else { "down" });
    };
    all_by(&lab, 30000, Some(0), "primaries serve first");
    flip(&mut lab, 0, false);
    all_by(&lab, 30100, Some(1), "backup serves when no primary is up");
    flip(&mut lab, 1, false);
    all_by(
        &lab,
        30200,
        Some(2),
        "sorry server serves when no primary or backup is up",
    );
    flip(&mut lab, 2, false);
    let dropped_before = no_backend_drops(&lab);
    all_by(
        &lab,
        30300,
        None,
        "a VIP without usable backend must drop, not answer",
    );
    assert!(
        no_backend_drops(&lab) >= dropped_before + 40,
        "drops were not counted"
    );
    assert_eq!(lab.status().vips[0].serving, None);

    flip(&mut lab, 1, true);
    all_by(&lab, 30400, Some(1), "traffic resumes on the backup");
    flip(&mut lab, 0, true);
    all_by(&lab, 30500, Some(0), "new flows go back to the primary");
    // Each switch was logged once, in order, for both VIPs (TCP and UDP share the backends).
    let log = lab.dsr_log();
    let (announcements, switches): (Vec<&str>, Vec<&str>) = log
        .lines()
        .filter_map(|l| l.split_once("VIP udp: ").map(|(_, m)| m))
        .partition(|m| m.starts_with("announced") || m.starts_with("withdrawn"));
    // Announced at start, withdrawn while nothing is usable, announced again.
    assert_eq!(
        announcements,
        [
            "announced",
            "withdrawn (0 usable backends, min_usable 1)",
            "announced"
        ],
        "{log}"
    );
    assert_eq!(
        switches,
        [
            "new flows now go to its backups (no primary is usable)",
            "new flows now go to its sorry servers (no primary or backup is usable)",
            "NO USABLE BACKEND: its packets are dropped",
            "new flows now go to its backups (no primary is usable)",
            "new flows now go to its primaries",
        ],
        "{log}"
    );
}

fn no_backend_drops(lab: &Lab) -> u64 {
    lab.status()
        .reasons
        .iter()
        .find(|r| r.reason == "no_backend")
        .map_or(0, |r| r.packets)
}

/// A backend's address moves to another host, which announces it with a gratuitous ARP (as
/// cloud secondary-IP failover does): dsr follows the new MAC within a second.
#[test]
fn mac_follows_a_moved_address() {
    let mut lab = started("moved", &[1], "", &[]);
    assert_eq!(lab.udp_request(31000).unwrap(), "backend-1");
    // ARP updates inside the locktime (1 s) of the last one are ignored by the kernel.
    std::thread::sleep(Duration::from_millis(1100));
    let new_mac = lab.move_backend_address(0, "backend-moved", true);
    let moved_at = Instant::now();
    let took = lab.wait_for("answers from the new host", Duration::from_secs(1), || {
        lab.udp_request(31001 + moved_at.elapsed().as_millis() as u16 % 1000)
            .is_ok_and(|w| w == "backend-moved")
    });
    eprintln!("data path followed the move to {new_mac} {took:?} after the gratuitous ARP");
    let st = lab.status();
    assert_eq!(st.vips[0].backends[0].mac.map(|m| m.0), Some(new_mac.0));
}

/// The address moves without a gratuitous ARP: the load balancer's neighbour entry still
/// names the old host, so checks fail; dsr then forgets the entry and solicits it afresh
/// (a broadcast ARP), learns the new host's MAC, the checks pass and traffic follows. The
/// kernel alone would keep the stale entry for tens of seconds (reachable time plus
/// unicast probes to the old MAC).
#[test]
fn failed_check_reprobes_a_silently_moved_address() {
    let check =
        "type = \"tcp\"\nport = 80\ninterval = \"300ms\"\ntimeout = \"300ms\"\nrise = 1\nfall = 2";
    let mut lab = started("reprobe", &[1], check, &[]);
    wait_health(&lab, "udp", 0, "up");
    assert_eq!(lab.udp_request(37000).unwrap(), "backend-1");
    let new_mac = lab.move_backend_address(0, "backend-moved", false);
    let moved = Instant::now();
    let mut port = 37001u16;
    let took = lab.wait_for(
        "answers from the new host without a gratuitous ARP",
        Duration::from_secs(5),
        || {
            port += 1;
            lab.udp_request(port).is_ok_and(|w| w == "backend-moved")
        },
    );
    eprintln!(
        "re-probing found the moved address ({new_mac}) {took:?} after the move ({:?} since)",
        moved.elapsed()
    );
    assert!(
        lab.dsr_log().contains("is DOWN"),
        "the move should have failed a check first"
    );
}

/// A backend whose health check flaps faster than its thresholds: with fall 3 (each failing
/// check waits out its 300 ms timeout) a half-second outage never takes it down, so nothing
/// changes and nothing is logged; a two-second outage takes it down once and brings it back
/// once (one line each per VIP checking it), while the other backend serves throughout.
#[test]
fn a_flapping_backend_changes_state_boundedly_and_quietly() {
    let check = format!(
        "type = \"http\"\nport = {HEALTH_PORT}\npath = \"/health\"\ninterval = \"300ms\"\ntimeout = \"300ms\"\nrise = 3\nfall = 3"
    );
    let lab = started("flap", &[1, 1], &check, &[]);
    wait_health(&lab, "udp", 0, "up");
    wait_health(&lab, "udp", 1, "up");
    // The health endpoint flaps by a drop rule on backend 1 (restarting its server is
    // slower than the flap).
    let ns = lab.backends[0].ns.clone();
    let nft = |args: &str| {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &ns, "nft"])
            .args(args.split(' '))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "nft {args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    nft("add table inet flap");
    nft("add chain inet flap input { type filter hook input priority 0 ; }");
    let drop_rule = format!("add rule inet flap input tcp dport {HEALTH_PORT} drop");
    let state_lines = |log: &str, what: &str| {
        log.lines()
            .filter(|l| l.contains("backend 198.18.0.11 is") && l.contains(what))
            .count()
    };

    let before = lab.dsr_log().len();
    for i in 0..10 {
        nft(&drop_rule);
        std::thread::sleep(Duration::from_millis(250));
        nft("flush chain inet flap input");
        std::thread::sleep(Duration::from_millis(250));
        let who = lab
            .udp_request(33000 + i * 7)
            .expect("served while the other flaps");
        assert!(who.starts_with("backend-"), "{who}");
    }
    let log = lab.dsr_log()[before..].to_owned();
    assert_eq!(
        state_lines(&log, "DOWN"),
        0,
        "a flap shorter than fall x timeout:\n{log}"
    );
    assert!(!log.contains("table rebuilt"), "the table changed:\n{log}");
    assert_eq!(lab.health_of("udp", 0), "up");

    let before = lab.dsr_log().len();
    nft(&drop_rule);
    // Both VIPs' checks must see the outage (their checks run out of phase).
    wait_health(&lab, "udp", 0, "down");
    wait_health(&lab, "tcp", 0, "down");
    nft("flush chain inet flap input");
    wait_health(&lab, "udp", 0, "up");
    wait_health(&lab, "tcp", 0, "up");
    let log = lab.dsr_log()[before..].to_owned();
    // Two VIPs check this backend: one DOWN and one UP line each.
    assert_eq!(
        (state_lines(&log, "DOWN"), state_lines(&log, "UP")),
        (2, 2),
        "{log}"
    );
    assert!(log.lines().count() <= 12, "{log}");
}

/// Backend `i` of the VIP named `vip` as `dsr status` shows it.
fn vip_backend(lab: &Lab, vip: &str, i: usize) -> dsr::control::status::BackendStatus {
    let st = lab.status();
    let v = st
        .vips
        .iter()
        .find(|v| v.name == vip)
        .unwrap_or_else(|| panic!("the {vip} VIP"));
    v.backends[i].clone()
}

fn load_step(lab: &Lab, vip: &str, i: usize) -> Option<u32> {
    vip_backend(lab, vip, i).load.map(|l| l.step)
}

/// Checks that every new flow from `sports` went to the backend the table of these table
/// weights (configured weight x load step) gives it, and returns how many each backend got.
/// `standing_by`: backends (indices) that take no new flows now; their slots are lent.
fn flows_follow(
    lab: &Lab,
    sports: std::ops::Range<u16>,
    table_weights: &[u32],
    standing_by: &[usize],
) -> Vec<usize> {
    let mut got = vec![0; table_weights.len()];
    for (p, who) in answers(lab, sports) {
        let want = lab.predict_around(UDP, p, table_weights, standing_by);
        assert_eq!(
            who,
            Some(want),
            "new flow {p}: the table of weights {table_weights:?} gives backend {}",
            want + 1
        );
        got[want] += 1;
    }
    got
}

/// Load-aware weights with HAProxy's agent protocol: a backend whose agent reports 50% steps
/// down one eighth per weight_interval to half its weight, and then every new flow goes
/// where the table of the effective weights sends it (predicted per flow with the shared
/// hash, not sampled), so it gets fewer than its share; "drain" takes it out at once while its
/// flows stay; "ready 100%" steps it back up to its share. Status shows the step, the reason
/// and both digests.
#[test]
fn agent_reported_load_moves_new_flows_and_back() {
    let mut lab = Lab::new("agent", &[1, 1, 1]);
    for i in 0..3 {
        lab.start_agent(i, "100%");
    }
    let load = format!(
        "[vip.load]\nagent_port = {}\nagent_interval = \"100ms\"\nagent_timeout = \"100ms\"\n\
         weight_interval = \"200ms\"\nmin_weight = 25\n",
        dsr_lab::lab::AGENT_PORT
    );
    let cfg = config(&lab, "", &[]).replacen(
        "protocol = \"udp\"\n",
        &format!("protocol = \"udp\"\n{load}"),
        1,
    );
    lab.start_dsr_with(&cfg, false)
        .unwrap_or_else(|e| panic!("{e:#}"));
    lab.wait_for("every agent to be asked", Duration::from_secs(5), || {
        (0..3).all(|i| {
            vip_backend(&lab, "udp", i)
                .load
                .and_then(|l| l.agent)
                .is_some_and(|a| a.last_line.as_deref() == Some("100%"))
        })
    });
    let at_full = flows_follow(&lab, 30000..30300, &[8, 8, 8], &[]);
    let vip = |lab: &Lab| {
        lab.status()
            .vips
            .into_iter()
            .find(|v| v.name == "udp")
            .unwrap()
    };
    let v = vip(&lab);
    assert_eq!(
        v.configured_digest, v.table_digest,
        "no load adjustment yet"
    );

    // Overloaded: 8/8 -> 4/8 in four steps, one per 200 ms.
    lab.set_agent(1, "50%");
    let started = Instant::now();
    lab.wait_for(
        "backend 2 to step down to 4/8",
        Duration::from_secs(5),
        || load_step(&lab, "udp", 1) == Some(4),
    );
    assert!(
        started.elapsed() >= Duration::from_millis(550),
        "four steps cannot take less than three weight_intervals ({:?})",
        started.elapsed()
    );
    let b = vip_backend(&lab, "udp", 1);
    let l = b.load.clone().unwrap();
    assert_eq!((l.step, l.target), (4, 4), "{l:?}");
    assert_eq!(
        l.next_step_unix_ms, None,
        "at its target: no next step {l:?}"
    );
    assert!(l.reason.contains("agent says 50%"), "{l:?}");
    assert_eq!(b.effective_weight, 0.5, "{b:?}");
    let v = vip(&lab);
    assert_ne!(
        v.configured_digest, v.table_digest,
        "the active table follows the load, the configured one does not"
    );
    let (ok, text) = lab.dsr(&["status"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("weight 4/8 of configured (agent says 50%)")
            && text.contains("load-aware weights differ"),
        "{text}"
    );
    // The VIP's own settings, in the config's terms.
    let settings = format!(
        "load-aware weights: agent on port {} every 100ms (timeout 100ms); one step per 200ms, \
         within 25%..100% of configured",
        dsr_lab::lab::AGENT_PORT
    );
    assert!(text.contains(&settings), "{settings:?} in\n{text}");
    let s = v.load.clone().expect("the VIP's load settings");
    assert_eq!(
        (
            s.agent_port,
            s.min_weight,
            s.max_weight,
            s.weight_interval_ms
        ),
        (Some(dsr_lab::lab::AGENT_PORT), 25.0, 100.0, 200),
        "{s:?}"
    );
    // The prediction must be able to fail: the new weights move some flows.
    let moved = (30300..30600)
        .filter(|&p| {
            lab.predict_weights(UDP, p, &[8, 4, 8]) != lab.predict_weights(UDP, p, &[1, 1, 1])
        })
        .count();
    assert!(moved > 0);
    let loaded = flows_follow(&lab, 30300..30600, &[8, 4, 8], &[]);
    assert!(
        loaded[1] < loaded[0] && loaded[1] < loaded[2] && loaded[1] < 100,
        "the loaded backend gets fewer new flows: {loaded:?} (at full weight {at_full:?})"
    );

    // "drain": out of the table at once; flows it holds stay (keeps flows).
    lab.set_agent(1, "drain");
    lab.wait_for(
        "backend 2 to be drained by its agent",
        Duration::from_secs(3),
        || {
            let b = vip_backend(&lab, "udp", 1);
            !b.in_table && b.keeps_flows
        },
    );
    let l = vip_backend(&lab, "udp", 1).load.unwrap();
    assert!(
        l.reason.starts_with("agent says drain: no new flows"),
        "status must say why it takes no new flows: {l:?}"
    );
    // Out of the table means its slots are lent (from the table of its full weight: its
    // load step is this node's own), the others' stay.
    let drained = flows_follow(&lab, 30600..30700, &[8, 8, 8], &[1]);
    assert_eq!(
        drained[1], 0,
        "new flows reached the drained backend: {drained:?}"
    );
    // Status shows each backend's share of the active table: the drained one's is lent.
    let v = vip(&lab);
    let slots: Vec<u32> = v.backends.iter().map(|b| b.table_slots.unwrap()).collect();
    assert_eq!(slots[1], 0, "{slots:?}");
    assert_eq!(slots.iter().sum::<u32>(), v.table_size, "{slots:?}");
    // `enable` undoes an operator's drain, not the agent's: it says so.
    let addr = lab.backends[1].ip.to_string();
    let (ok, out) = lab.dsr(&["backend", "enable", "udp", &addr]);
    assert!(
        ok && out.contains("still takes no new flows: its agent says drain"),
        "{out}"
    );

    // "down" counts as a failed health check: HEALTH says whose word it is.
    lab.set_agent(1, "down");
    lab.wait_for(
        "backend 2 to be down by its agent",
        Duration::from_secs(3),
        || {
            let b = vip_backend(&lab, "udp", 1);
            b.health == dsr::control::HealthState::AgentDown && !b.keeps_flows
        },
    );
    let (ok, text) = lab.dsr(&["status"]);
    assert!(ok && text.contains("down (agent)"), "{text}");

    // Recovered: back to its share, step by step (each word stays until replaced: "up"
    // ends "down", "ready" ends "drain").
    lab.set_agent(1, "up ready 100%");
    lab.wait_for(
        "backend 2 to step back to 8/8",
        Duration::from_secs(5),
        || load_step(&lab, "udp", 1) == Some(8) && vip_backend(&lab, "udp", 1).in_table,
    );
    let v = vip(&lab);
    assert_eq!(
        v.configured_digest, v.table_digest,
        "back to the configured table"
    );
    let back = flows_follow(&lab, 30700..31000, &[1, 1, 1], &[]);
    eprintln!(
        "new flows per backend: at full weight {at_full:?}, backend 2 at 4/8 {loaded:?}, \
         recovered {back:?}"
    );
    assert!(back[1] > loaded[1], "{back:?} after {loaded:?}");
}

/// Every new TCP flow from `sports` goes to the backend the table of these table weights
/// gives it.
fn tcp_flows_follow(lab: &Lab, sports: std::ops::Range<u16>, table_weights: &[u32]) {
    for p in sports {
        let who = lab.tcp_request(p, 1).expect("an answer");
        let want = lab.predict_weights(TCP, p, table_weights);
        assert_eq!(
            lab.index_of(&who[0]),
            want,
            "new TCP flow {p}: the table of weights {table_weights:?} gives backend {}",
            want + 1
        );
    }
}

/// Load-aware weights from the flow table ("least connection" under DSR): a backend holding
/// long connections, far more than its share of the VIP's active flows, steps down to
/// min_weight and new flows go where the table of the effective weights sends them; when
/// those connections close (the client's FIN seen inbound marks their entries closing, no
/// longer active, while they still forward), it steps back up to its share.
#[test]
fn a_backend_holding_many_long_flows_gets_fewer_new_ones_until_they_close() {
    let mut lab = Lab::new("lc", &[1, 1, 1]);
    let load = "[vip.load]\nflows = true\nweight_interval = \"200ms\"\nmin_weight = 75\n";
    let header = lab.header();
    let cfg = config(&lab, "", &[])
        .replacen(
            &header,
            &format!("{header}flow_count_interval = \"1s\"\n"),
            1,
        )
        .replacen(
            "protocol = \"tcp\"\n",
            &format!("protocol = \"tcp\"\n{load}"),
            1,
        );
    lab.start_dsr_with(&cfg, false)
        .unwrap_or_else(|e| panic!("{e:#}"));
    // 30 long connections that the configured table gives to backend 2.
    let ports: Vec<u16> = (40000..)
        .filter(|&p| lab.predict_weights(TCP, p, &[1, 1, 1]) == 1)
        .take(30)
        .collect();
    let mut conns = Vec::new();
    for &p in &ports {
        let mut c = lab.tcp_connect(p).expect("a connection");
        c.set_timeout(Duration::from_secs(2)).unwrap();
        assert_eq!(lab.index_of(&c.ask().expect("an answer")), 1, "port {p}");
        conns.push(c);
    }
    lab.wait_for(
        "backend 2 to step down to min_weight (6/8)",
        Duration::from_secs(10),
        || load_step(&lab, "tcp", 1) == Some(6),
    );
    let l = vip_backend(&lab, "tcp", 1).load.unwrap();
    assert!(
        l.reason.contains("its share of active flows") && l.flow_share.unwrap() > 1.25,
        "{l:?}"
    );
    assert_eq!(
        vip_backend(&lab, "tcp", 0).load.unwrap().step,
        8,
        "the others stay"
    );
    tcp_flows_follow(&lab, 41000..41060, &[8, 6, 8]);

    drop(conns);
    lab.wait_for(
        "the closed connections to count as closing",
        Duration::from_secs(5),
        || {
            vip_backend(&lab, "tcp", 1)
                .closing_flows
                .is_some_and(|n| n >= 30)
        },
    );
    // `dsr flows` shows them closing, still on their backend.
    let (ok, out) = lab.dsr(&["flows", "tcp", "--json", "--limit", "1000"]);
    assert!(ok, "{out}");
    let flows: Vec<dsr::control::status::FlowStatus> = serde_json::from_str(&out).unwrap();
    let long: Vec<_> = flows
        .iter()
        .filter(|f| f.client_port.is_some_and(|p| ports.contains(&p)))
        .collect();
    assert_eq!(long.len(), 30, "{out}");
    assert!(
        long.iter()
            .all(|f| f.closing && f.backend == Some(lab.backends[1].ip.into())),
        "{out}"
    );
    lab.wait_for(
        "backend 2 to step back up to 8/8",
        Duration::from_secs(10),
        || load_step(&lab, "tcp", 1) == Some(8),
    );
    tcp_flows_follow(&lab, 41060..41120, &[1, 1, 1]);
}

/// Load-aware weights set from the command line (`dsr vip add --agent-port ...`, `dsr backend
/// add --agent-port`) work as the file's `[vip.load]` does: each backend's agent is asked on
/// its own port where it names one, else on the VIP's, and what it says steps its weight; a
/// VIP with flow counting only gets the agent settings when a backend brings its own port.
#[test]
fn load_aware_weights_from_the_command_line_ask_each_backends_agent() {
    let mut lab = Lab::new("cliload", &[1, 1]);
    lab.start_agent(0, "50%");
    lab.start_dsr(false).unwrap_or_else(|e| panic!("{e:#}"));
    let agent = dsr_lab::lab::AGENT_PORT.to_string();
    let b1 = lab.backends[0].ip.to_string();
    let b2 = lab.backends[1].ip.to_string();
    for args in [
        vec![
            "vip",
            "add",
            "198.18.0.100:5353/udp",
            "--name",
            "loaded",
            "--agent-port",
            "6000",
            "--agent-interval",
            "100ms",
            "--agent-timeout",
            "100ms",
            "--weight-interval",
            "100ms",
            "--min-weight",
            "50",
        ],
        vec!["backend", "add", "loaded", &b1, "--agent-port", &agent],
        vec!["backend", "add", "loaded", &b2],
        vec![
            "vip",
            "add",
            "198.18.0.100:5354/udp",
            "--name",
            "counted",
            "--load-flows",
        ],
        vec!["backend", "add", "counted", &b1, "--agent-port", &agent],
    ] {
        let (ok, out) = lab.dsr(&args);
        assert!(ok, "{args:?}: {out}");
    }
    let agent_of = |vip: &str, i: usize| vip_backend(&lab, vip, i).load.and_then(|l| l.agent);
    lab.wait_for(
        "backend 1's own agent port to be asked, backend 2's VIP-wide one to fail",
        Duration::from_secs(5),
        || {
            agent_of("loaded", 0).is_some_and(|a| a.last_line.as_deref() == Some("50%"))
                && agent_of("loaded", 1).is_some_and(|a| a.error.is_some())
        },
    );
    lab.wait_for(
        "backend 1 to step down to its 50% floor",
        Duration::from_secs(5),
        || load_step(&lab, "loaded", 0) == Some(4),
    );
    let l = vip_backend(&lab, "loaded", 0).load.unwrap();
    assert!(l.reason.contains("agent says 50%"), "{l:?}");
    lab.wait_for(
        "the flow-counting VIP's backend to be asked on its own port",
        Duration::from_secs(5),
        || agent_of("counted", 0).is_some_and(|a| a.last_line.as_deref() == Some("50%")),
    );
    // A flag without what it needs is refused, naming the flag, and changes nothing (the
    // VIPs and their backends; the agents' readings move on meanwhile).
    let shape = |lab: &Lab| {
        let st = lab.status();
        let vips: Vec<(String, Vec<std::net::IpAddr>)> = st
            .vips
            .iter()
            .map(|v| {
                (
                    v.name.clone(),
                    v.backends.iter().map(|b| b.address).collect(),
                )
            })
            .collect();
        (st.runtime_changes, vips)
    };
    let before = shape(&lab);
    for (args, words) in [
        (
            vec![
                "vip",
                "add",
                "198.18.0.100:5355/udp",
                "--agent-interval",
                "1s",
            ],
            "--agent-interval: load.agent_interval needs an agent port",
        ),
        (
            vec![
                "vip",
                "add",
                "198.18.0.100:5355/udp",
                "--load-flows",
                "--max-weight",
                "300",
            ],
            "--max-weight: load.max_weight 300 is not 1..=200",
        ),
        (
            vec![
                "vip",
                "add",
                "198.18.0.100:5355/udp",
                "--load-flows",
                "--no-conntrack",
            ],
            "load.flows counts the VIP's tracked flows",
        ),
        (
            vec![
                "vip",
                "add",
                "198.18.0.100:5355/udp",
                "--load-flows",
                "--no-conntrack",
            ],
            "on the command line, load.flows is --load-flows",
        ),
        (
            vec![
                "vip",
                "add",
                "198.18.0.100:5355/udp",
                "--load-flows",
                "--min-weight",
                "5",
                "--max-weight",
                "4",
            ],
            "--min-weight: load.min_weight 5% is above load.max_weight 4%",
        ),
        (
            vec![
                "vip",
                "add",
                "198.18.0.100:5355/udp",
                "--agent-port",
                "6000",
                "--agent-timeout",
                "0.5ms",
            ],
            "for '--agent-timeout <AGENT_TIMEOUT>': \"0.5ms\": durations are whole milliseconds",
        ),
        (
            vec![
                "backend",
                "add",
                "udp-53",
                "198.18.0.50",
                "--agent-port",
                "7000",
            ],
            "agent_port needs [vip.load]",
        ),
    ] {
        let (ok, out) = lab.dsr(&args);
        assert!(!ok, "{args:?} succeeded: {out}");
        assert!(
            out.contains(words),
            "{args:?}: {out:?} does not say {words:?}"
        );
    }
    assert_eq!(before, shape(&lab), "a refused request changed the state");
}
