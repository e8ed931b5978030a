//! What the `dsr` CLI prints: the status and stats views, as aligned text tables.

use std::{
    fmt::Write,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::control::status::{DaemonState, FlowStatus, Status, Traffic};

/// Left-aligned text columns.
struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&str]) -> Self {
        Table {
            rows: vec![header.iter().map(|h| h.to_string()).collect()],
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self, indent: &str) -> String {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..cols)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for r in &self.rows {
            let mut line = indent.to_owned();
            for (c, cell) in r.iter().enumerate() {
                let pad = widths[c] - cell.chars().count();
                line += cell;
                if c + 1 < r.len() {
                    line += &" ".repeat(pad + 2);
                }
            }
            out += line.trim_end();
            out.push('\n');
        }
        out
    }
}

pub fn si(v: f64, unit: &str) -> String {
    let (scaled, prefix) = if v >= 1e9 {
        (v / 1e9, "G")
    } else if v >= 1e6 {
        (v / 1e6, "M")
    } else if v >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    if prefix.is_empty() {
        format!("{scaled:.0}{unit}")
    } else {
        format!("{scaled:.1}{prefix}{unit}")
    }
}

fn ago(unix_ms: u64) -> String {
    let then = UNIX_EPOCH + Duration::from_millis(unix_ms);
    let secs = SystemTime::now()
        .duration_since(then)
        .unwrap_or_default()
        .as_secs();
    match secs {
        0..=119 => format!("{secs}s"),
        120..=7199 => format!("{}m", secs / 60),
        7200..=172_799 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}

fn rates(t: &Traffic) -> String {
    format!(
        "{} {} {}",
        si(t.packets_per_sec, "pps"),
        si(t.bits_per_sec, "bit/s"),
        si(t.flows_per_sec, " flows/s")
    )
}

fn totals(t: &Traffic) -> String {
    format!(
        "{} pkts {} {} flows",
        t.packets,
        si(t.bytes as f64, "B"),
        t.flows
    )
}

/// `dsr status`: VIPs and backends, like `ipvsadm -Ln` with health, roles and rates.
pub fn render_status(s: &Status) -> String {
    let mut out = String::new();
    let daemon = match (s.daemon, s.data_path_pinned) {
        (DaemonState::Running, _) => "running".to_owned(),
        (DaemonState::Down, true) => "down (data path still pinned and forwarding)".into(),
        (DaemonState::Down, false) => "down (no data path)".into(),
    };
    let _ = writeln!(
        out,
        "dsr instance {} on {}: daemon {daemon}{}; config {}; {} runtime change{}",
        s.instance,
        s.interface,
        s.pid.map_or(String::new(), |p| format!(" (pid {p})")),
        s.config.display(),
        s.runtime_changes,
        if s.runtime_changes == 1 { "" } else { "s" }
    );
    if s.map_writes_pending > 0 {
        let _ = writeln!(
            out,
            "DEGRADED: {} map writes pending (retried every second; {} failed since start): \
             the data path lags what is shown here",
            s.map_writes_pending, s.map_write_failures
        );
    }
    if s.map_tables_building > 0 {
        let _ = writeln!(
            out,
            "BUILDING: {} VIP table{} (the data path uses the old one until it is written)",
            s.map_tables_building,
            if s.map_tables_building == 1 { "" } else { "s" }
        );
    }
    if s.daemon == DaemonState::Down && !s.vips.is_empty() {
        out += "HEALTH is the last state the daemon saved: nobody checks the backends now.\n";
    }
    if let Some(t) = &s.tables {
        let mib = |slots: u64| slots as f64 * 4.0 / (1 << 20) as f64;
        let _ = writeln!(
            out,
            "tables: {:.1} of {:.1} MiB of table_budget in use ({:.1}%); the largest table that fits now: {} slots",
            mib(t.used_slots),
            mib(t.budget_slots),
            t.used_slots as f64 * 100.0 / t.budget_slots.max(1) as f64,
            t.largest_free_slots
        );
    }
    if let Some(t) = &s.flow_table {
        let _ = writeln!(
            out,
            "flow table: {} live + {} expired of {} entries ({:.1}% full), counted {} ago in {:.0} ms",
            t.live,
            t.expired,
            t.capacity,
            (t.live + t.expired) as f64 * 100.0 / t.capacity.max(1) as f64,
            ago(t.counted_at_unix_ms),
            t.count_ms
        );
    }
    for v in &s.vips {
        let serving = v
            .serving
            .map_or("NO USABLE BACKEND: dropping".to_owned(), |r| {
                format!("new flows -> {}", r.plural())
            });
        let _ = writeln!(
            out,
            "\nVIP {}{} {}  {}{}  hash {}{}  conntrack {}{}  now {}  total {}",
            v.name,
            if v.runtime { " *" } else { "" },
            v.addr,
            serving,
            if v.announced {
                String::new()
            } else if v.drained {
                "  WITHDRAWN (drained)".into()
            } else {
                format!("  WITHDRAWN (fewer than {} usable)", v.min_usable)
            },
            v.hash,
            if v.fragments { "  fragments" } else { "" },
            if v.conntrack { "on" } else { "off" },
            if v.table_size == 0 {
                String::new()
            } else {
                format!(
                    "  table {} slots ({:.1} MiB){}{}{}",
                    v.table_size,
                    v.table_bytes as f64 / (1 << 20) as f64,
                    v.table_size_pending
                        .map_or(String::new(), |p| format!(", resize to {p} pending")),
                    v.table_digest
                        .as_ref()
                        .map_or(String::new(), |d| format!(" {d}")),
                    match &v.configured_digest {
                        Some(c) if Some(c) != v.table_digest.as_ref() => {
                            format!(" (as configured {c}: load-aware weights differ)")
                        }
                        _ => String::new(),
                    }
                )
            },
            rates(&v.traffic),
            totals(&v.traffic)
        );
        let mut t = Table::new(&[
            "BACKEND",
            "ROLE",
            "HEALTH",
            "SINCE",
            "CHECK",
            "LAST CHECK",
            "WEIGHT",
            "SLOTS",
            "NEW FLOWS",
            "KEEPS FLOWS",
            "TRACKED",
            "MAC",
            "NOW",
            "TOTAL",
        ]);
        if let Some(l) = &v.load {
            let _ = writeln!(out, "  {}", vip_load_line(l));
        }
        for b in &v.backends {
            let last = b.last_check.as_ref().map_or("-".to_owned(), |r| {
                format!(
                    "{} {:.1}ms {}",
                    if r.ok { "ok" } else { "FAIL" },
                    r.latency_us as f64 / 1000.0,
                    r.message
                )
            });
            t.row(vec![
                format!("{}{}", b.address, if b.runtime { " *" } else { "" }),
                b.role.to_string(),
                if b.health_live {
                    b.health.to_string()
                } else {
                    format!(
                        "{}? (stale{})",
                        b.health,
                        b.last_check.as_ref().map_or(String::new(), |r| format!(
                            ", checked {} ago",
                            ago(r.at_unix_ms)
                        ))
                    )
                },
                ago(b.since_unix_ms),
                match &b.check_path {
                    Some(path) => format!("{} {path}", b.check),
                    None => b.check.clone(),
                },
                last,
                format!(
                    "{}/{}{}",
                    b.weight,
                    b.effective_weight,
                    if b.drained { " drain" } else { "" }
                ),
                // Its share of the active table: a backend out of it has lent its slots.
                match b.table_slots {
                    None => "-".into(),
                    Some(n) if v.table_size > 0 => {
                        format!("{n} {:.1}%", n as f64 * 100.0 / v.table_size as f64)
                    }
                    Some(n) => n.to_string(),
                },
                if b.in_table { "yes" } else { "no" }.into(),
                if b.keeps_flows { "yes" } else { "no" }.into(),
                match (b.tracked_flows, b.closing_flows) {
                    (None, _) => "-".into(),
                    (Some(n), Some(c)) if c > 0 => format!("{n} +{c} closing"),
                    (Some(n), _) => n.to_string(),
                },
                match (&b.mac, b.via) {
                    (None, _) => "unresolved".into(),
                    (Some(m), None) => m.to_string(),
                    (Some(m), Some(v)) => {
                        format!("{m} via ifindex {} (TX port {})", v.ifindex, v.tx_port)
                    }
                },
                rates(&b.traffic),
                totals(&b.traffic),
            ]);
        }
        out += &t.render("  ");
        for b in &v.backends {
            if let Some(l) = &b.load {
                let _ = writeln!(out, "  load {}: {}", b.address, load_line(l));
            }
        }
        if let Some(n) = &v.notify {
            let last = n.last.as_ref().map_or("not run yet".to_owned(), |l| {
                format!(
                    "last {} {} ago: {} in {} ms",
                    l.state.name(),
                    ago(l.started_unix_ms),
                    l.outcome,
                    l.duration_ms
                )
            });
            let _ = writeln!(
                out,
                "  notify {}: {last}; {} runs, {} failed{}{}",
                n.command,
                n.runs,
                n.failures,
                if n.pending > 0 {
                    format!(", {} pending", n.pending)
                } else {
                    String::new()
                },
                if n.dropped > 0 {
                    format!(", {} dropped", n.dropped)
                } else {
                    String::new()
                }
            );
        }
        if !v.removed_backends.is_empty() {
            let list: Vec<String> = v.removed_backends.iter().map(|a| a.to_string()).collect();
            let _ = writeln!(out, "  removed at run time: {}", list.join(", "));
        }
    }
    if !s.announce_groups.is_empty() {
        out += "\n";
    }
    for g in &s.announce_groups {
        let _ = writeln!(
            out,
            "announce group {} ({} of {}): {}{}",
            g.name,
            g.require,
            g.vips.join(", "),
            if g.announced {
                "announced"
            } else {
                "WITHDRAWN"
            },
            match (&g.vmac, &g.vrrp) {
                (Some(vmac), Some(why)) => format!(
                    "; vmac {vmac} {} ({why})",
                    if g.vrrp_master {
                        "received"
                    } else {
                        "not received"
                    }
                ),
                _ => String::new(),
            }
        );
    }
    if s.vips
        .iter()
        .any(|v| v.runtime || v.backends.iter().any(|b| b.runtime))
    {
        out +=
            "\n* = added or changed at run time (differs from the config; `dsr reset` reverts)\n";
    }
    out += "\nWEIGHT is configured/effective. ";
    out += "NEW FLOWS: in the VIP's table now. KEEPS FLOWS: its established flows stay on it.\n";
    out +=
        "TRACKED: its live flow-table entries (ipvsadm's active connections), as last counted.\n";
    out
}

/// `dsr stats`: per-reason verdict counters and per VIP/backend totals.
pub fn render_stats(s: &Status) -> String {
    let mut out = String::new();
    let mut t = Table::new(&["REASON", "VERDICT", "PACKETS", "BYTES"]);
    for r in &s.reasons {
        t.row(vec![
            r.reason.clone(),
            r.verdict.clone(),
            r.packets.to_string(),
            r.bytes.to_string(),
        ]);
    }
    out += &t.render("");
    out.push('\n');
    let mut t = Table::new(&["EVENT", "COUNT"]);
    for e in &s.events {
        t.row(vec![e.event.clone(), e.count.to_string()]);
    }
    out += &t.render("");
    out.push('\n');
    let mut t = Table::new(&[
        "VIP / BACKEND",
        "PACKETS",
        "BYTES",
        "NEW FLOWS",
        "PPS",
        "BIT/S",
    ]);
    for v in &s.vips {
        let row = |name: String, tr: &Traffic| {
            vec![
                name,
                tr.packets.to_string(),
                tr.bytes.to_string(),
                tr.flows.to_string(),
                format!("{:.0}", tr.packets_per_sec),
                format!("{:.0}", tr.bits_per_sec),
            ]
        };
        t.row(row(format!("{} ({})", v.name, v.addr), &v.traffic));
        for b in &v.backends {
            t.row(row(format!("  -> {}", b.address), &b.traffic));
        }
    }
    out += &t.render("");
    out
}

/// A VIP's `[vip.load]` settings in one line: "load-aware weights: agent on port 5555 every
/// 2s (timeout 1s), active flows counted; one step per 5s, within 25%..100% of configured".
fn vip_load_line(l: &super::status::VipLoadStatus) -> String {
    let mut parts = Vec::new();
    if let (port, Some(every), Some(timeout)) =
        (l.agent_port, l.agent_interval_ms, l.agent_timeout_ms)
    {
        parts.push(format!(
            "agent on {} every {} (timeout {}{}{})",
            port.map_or("the backends' own agent ports".to_owned(), |p| format!(
                "port {p}"
            )),
            ms(every),
            ms(timeout),
            l.agent_path
                .as_ref()
                .map_or(String::new(), |p| format!(", HTTP GET {p}")),
            l.agent_send
                .as_ref()
                .map_or(String::new(), |s| format!(", sends {s:?}"))
        ));
    }
    if l.flows {
        parts.push("active flows counted".into());
    }
    format!(
        "load-aware weights: {}; one step per {}, within {}%..{}% of configured",
        parts.join(", "),
        ms(l.weight_interval_ms),
        l.min_weight,
        l.max_weight
    )
}

/// Milliseconds as the config writes them: "250ms", "2s", "1.5s".
fn ms(v: u64) -> String {
    if v >= 1000 {
        format!("{}s", v as f64 / 1000.0)
    } else {
        format!("{v}ms")
    }
}

/// A backend's load-aware weight in one line: "step 6/8 -> 4/8 (agent says 50%); agent
/// said \"50%\" 1s ago; 1.30x its share of active flows".
fn load_line(l: &super::status::LoadStatus) -> String {
    let mut s = if l.step == l.target {
        format!("weight {}/8 of configured ({})", l.step, l.reason)
    } else {
        format!(
            "weight {}/8 of configured, stepping to {}/8 ({}){}",
            l.step,
            l.target,
            l.reason,
            l.next_step_unix_ms
                .map_or(String::new(), |t| format!(", next step in {}", until(t)))
        )
    };
    if let Some(a) = &l.agent {
        match (&a.last_line, &a.error, a.at_unix_ms) {
            (_, Some(e), Some(at)) => {
                s += &format!("; agent not reached {} ago: {e}", ago(at));
            }
            (Some(line), None, Some(at)) => {
                s += &format!("; agent said {line:?} {} ago", ago(at));
            }
            _ => s += "; agent not asked yet",
        }
    }
    if let Some(f) = l.flow_share {
        s += &format!("; {f:.2}x its share of active flows");
    }
    s
}

/// How long until a Unix-millisecond time ("now" once it has passed).
fn until(unix_ms: u64) -> String {
    let now = crate::runtime::unix_ms(std::time::SystemTime::now());
    match unix_ms.checked_sub(now) {
        Some(ms) if ms > 0 => format!("{:.1}s", ms as f64 / 1000.0),
        _ => "now".into(),
    }
}

/// What differs between two nodes' status: VIPs present on one only, and VIPs whose tables
/// differ (by digest). Empty when they agree on every flow.
pub fn compare(a: &Status, b: &Status) -> Vec<String> {
    let mut out = Vec::new();
    let name = |s: &Status| format!("{} ({})", s.instance, s.interface);
    for va in &a.vips {
        match b.vips.iter().find(|vb| vb.addr == va.addr) {
            None => out.push(format!("VIP {} {}: only on {}", va.name, va.addr, name(a))),
            Some(vb) => match (&va.table_digest, &vb.table_digest) {
                (Some(x), Some(y)) if x == y => {}
                (Some(x), Some(y))
                    if va.configured_digest.is_some()
                        && va.configured_digest == vb.configured_digest =>
                {
                    out.push(format!(
                        "VIP {} {}: tables differ by load-aware weights only ({x} on {}, {y} on \
                         {}; as configured both {}): new flows may go to different backends, \
                         tracked flows stay where they are",
                        va.name,
                        va.addr,
                        name(a),
                        name(b),
                        va.configured_digest.as_deref().unwrap_or("")
                    ))
                }
                (Some(x), Some(y)) => out.push(format!(
                    "VIP {} {}: tables differ ({x} on {}, {y} on {}): flows may go to \
                     different backends",
                    va.name,
                    va.addr,
                    name(a),
                    name(b)
                )),
                _ => out.push(format!(
                    "VIP {} {}: no table digest on one side (daemon down?)",
                    va.name, va.addr
                )),
            },
        }
    }
    for vb in &b.vips {
        if !a.vips.iter().any(|va| va.addr == vb.addr) {
            out.push(format!("VIP {} {}: only on {}", vb.name, vb.addr, name(b)));
        }
    }
    out
}

/// Which columns `dsr list` shows besides the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListColumns {
    /// Role, health, weights, whether it takes and keeps flows.
    State,
    /// Packets/s, bits/s, new flows/s.
    Rate,
    /// Packets, bytes, new flows.
    Stats,
}

/// `dsr list`: a line per VIP and per backend, in at most 100 columns, like `ipvsadm -Ln`.
pub fn render_list(s: &Status, columns: ListColumns) -> String {
    let header: &[&str] = match columns {
        ListColumns::State => &[
            "PROT VIP / -> BACKEND",
            "ROLE",
            "HEALTH",
            "WEIGHT",
            "NEW",
            "KEEP",
            "FLOWS",
        ],
        ListColumns::Rate => &["PROT VIP / -> BACKEND", "PPS", "BPS", "FLOWS/S"],
        ListColumns::Stats => &["PROT VIP / -> BACKEND", "PACKETS", "BYTES", "FLOWS"],
    };
    let mut t = Table::new(header);
    let traffic = |tr: &Traffic| match columns {
        ListColumns::Rate => vec![
            si(tr.packets_per_sec, ""),
            si(tr.bits_per_sec, ""),
            si(tr.flows_per_sec, ""),
        ],
        _ => vec![
            tr.packets.to_string(),
            si(tr.bytes as f64, "B"),
            tr.flows.to_string(),
        ],
    };
    for v in &s.vips {
        let mut row = vec![format!(
            "{} {}{}",
            v.addr.protocol.to_string().to_uppercase(),
            v.addr,
            if v.name != v.addr.to_string() {
                format!(" ({})", v.name)
            } else {
                String::new()
            }
        )];
        match columns {
            ListColumns::State => row.extend([
                v.serving
                    .map_or("DROPPING".into(), |r| r.plural().to_owned()),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                v.tracked_flows.map_or("-".into(), |n| n.to_string()),
            ]),
            _ => row.extend(traffic(&v.traffic)),
        }
        t.row(row);
        for b in &v.backends {
            let mut row = vec![format!(
                "  -> {}{}",
                b.address,
                if b.runtime { " *" } else { "" }
            )];
            match columns {
                ListColumns::State => row.extend([
                    b.role.to_string(),
                    if b.health_live {
                        b.health.to_string()
                    } else {
                        format!("{}?", b.health)
                    },
                    format!("{}/{}", b.weight, b.effective_weight),
                    if b.in_table { "yes" } else { "no" }.into(),
                    if b.keeps_flows { "yes" } else { "no" }.into(),
                    b.tracked_flows.map_or("-".into(), |n| n.to_string()),
                ]),
                _ => row.extend(traffic(&b.traffic)),
            }
            t.row(row);
        }
    }
    t.render("")
}

/// `dsr flows`: one line per tracked flow. `*` is a field the VIP does not hash on (the
/// flow table does not keep it).
pub fn render_flows(flows: &[FlowStatus]) -> String {
    let mut t = Table::new(&["VIP", "CLIENT", "VLAN", "BACKEND", "IDLE", "STATE"]);
    for f in flows {
        let client = format!(
            "{}:{}",
            f.client.map_or("*".into(), |a| a.to_string()),
            f.client_port.map_or("*".into(), |p| p.to_string())
        );
        t.row(vec![
            f.vip.clone(),
            client,
            if f.vlan == 0 {
                "-".into()
            } else {
                f.vlan.to_string()
            },
            f.backend
                .map_or_else(|| format!("id {}", f.backend_id), |a| a.to_string()),
            format!("{:.1}s", f.idle_ms as f64 / 1000.0),
            if f.closing { "closing" } else { "active" }.into(),
        ]);
    }
    let mut out = t.render("");
    out += &format!("{} flows\n", flows.len());
    out
}

/// `dsr trace`: one line per frame, tcpdump-like: time (UTC), verdict and reason, the flow,
/// then where it went and why.
pub fn render_trace_event(e: &super::trace::TraceEvent) -> String {
    let secs = e.time_ns / 1_000_000_000;
    let mut out = format!(
        "{:02}:{:02}:{:02}.{:06} {:<7} {:<18}",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60,
        e.time_ns % 1_000_000_000 / 1000,
        e.verdict,
        e.reason
    );
    match (&e.protocol, e.client, e.destination) {
        (Some(p), Some(c), Some(d)) => out += &format!(" {p} {c} > {d}"),
        _ => out += &format!(" to {}", e.dst_mac),
    }
    if let Some(f) = &e.tcp_flags {
        out += &format!(" [{f}]");
    }
    if e.vlan != 0 {
        out += &format!(" vlan {}", e.vlan);
    }
    if let Some(vip) = &e.vip {
        out += &format!(" vip {vip}");
    }
    if let Some(id) = e.backend_id {
        out += &format!(
            " -> {}",
            e.backend
                .map_or_else(|| format!("backend id {id}"), |a| a.to_string())
        );
    }
    let mut why = Vec::new();
    match (e.chosen_by.as_deref(), e.slot) {
        (Some("flow_table"), _) => why.push("flow table".to_string()),
        (Some("table"), Some(slot)) => why.push(format!("table slot {slot}")),
        _ => {}
    }
    if e.remembered {
        why.push("remembered".into());
    }
    if !why.is_empty() {
        out += &format!(" ({})", why.join(", "));
    }
    out += &format!(" {} bytes", e.len);
    out
}
