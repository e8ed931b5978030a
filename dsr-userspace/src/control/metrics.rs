//! The Prometheus endpoint (off unless the config sets `metrics = "ADDRESS:PORT"`): per VIP and
//! per backend packets, bytes, new flows, health, weights and check latency, and per-reason
//! verdict counters.
//!
//! Encoded by prometheus-client (OpenMetrics text; escaping and naming are its business). Every
//! value is a snapshot of a kernel counter or of the daemon's state taken at scrape time, so
//! each scrape fills a registry of its own.

use std::{convert::Infallible, net::SocketAddr, sync::atomic::AtomicU64};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Request as HttpRequest, Response as HttpResponse, body::Incoming, service::service_fn,
};
use hyper_util::rt::TokioIo;
use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot},
};

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::control::{Call, Request, Status, status::DaemonState};

/// Serves `GET /metrics` on `addr` until the daemon goes away.
pub async fn serve(
    addr: SocketAddr,
    calls: mpsc::Sender<Call>,
) -> Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics endpoint {addr}"))?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let calls = calls.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: HttpRequest<Incoming>| {
                    let calls = calls.clone();
                    async move { Ok::<_, Infallible>(answer(req, calls).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }))
}

async fn answer(
    req: HttpRequest<Incoming>,
    calls: mpsc::Sender<Call>,
) -> HttpResponse<Full<Bytes>> {
    let reply = |status: u16, body: String| {
        HttpResponse::builder()
            .status(status)
            .header(
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
            .body(Full::new(Bytes::from(body)))
            .expect("static response parts")
    };
    if req.uri().path() != "/metrics" {
        return reply(404, "only /metrics is here\n".into());
    }
    let (tx, rx) = oneshot::channel();
    if calls.send((Request::Status, tx)).await.is_err() {
        return reply(503, "daemon shutting down\n".into());
    }
    match rx.await {
        Ok(resp) => match resp.status {
            Some(status) => reply(200, render(&status)),
            None => reply(500, format!("{}\n", resp.message)),
        },
        Err(_) => reply(503, "daemon shutting down\n".into()),
    }
}

/// Label set of a metric sample.
type Labels = Vec<(&'static str, String)>;

/// A fresh registry filled from one status snapshot: every value is read from the kernel's
/// counters or the daemon's state at scrape time, so each scrape encodes a registry of its own
/// (counters are set with `inc_by` from zero). VIP families carry `vip` and `address`,
/// backend families those and `backend`; roles, MACs and digests are in `*_info` families.
struct Snapshot {
    registry: Registry,
}

impl Snapshot {
    fn counter(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (Labels, u64)>,
    ) {
        let family = Family::<Labels, Counter>::default();
        for (labels, v) in samples {
            family.get_or_create(&labels).inc_by(v);
        }
        self.registry.register(name, help, family);
    }

    fn gauge(&mut self, name: &str, help: &str, samples: impl IntoIterator<Item = (Labels, f64)>) {
        let family = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        for (labels, v) in samples {
            family.get_or_create(&labels).set(v);
        }
        self.registry.register(name, help, family);
    }

    fn info(&mut self, name: &str, help: &str, samples: impl IntoIterator<Item = Labels>) {
        // An info family is a gauge of 1 per label set (`NAME_info`), as OpenMetrics has it.
        let family = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        for labels in samples {
            family.get_or_create(&labels).set(1.0);
        }
        self.registry.register(format!("{name}_info"), help, family);
    }
}

/// The exposition (OpenMetrics text) of one status snapshot.
pub fn render(s: &Status) -> String {
    let mut m = Snapshot {
        registry: Registry::default(),
    };
    let vip_labels = |v: &crate::control::status::VipStatus| -> Labels {
        vec![("vip", v.name.clone()), ("address", v.addr.to_string())]
    };
    let backend_labels = |v: &crate::control::status::VipStatus,
                          b: &crate::control::status::BackendStatus|
     -> Labels {
        let mut l = vip_labels(v);
        l.push(("backend", b.address.to_string()));
        l
    };
    let backends = || {
        s.vips
            .iter()
            .flat_map(|v| v.backends.iter().map(move |b| (v, b)))
    };
    m.gauge(
        "dsr_up",
        "1 while the daemon runs (it answers the scrape)",
        [(vec![], (s.daemon == DaemonState::Running) as u8 as f64)],
    );
    m.info(
        "dsr_build",
        "The daemon's version and map layout",
        [vec![
            ("version", env!("CARGO_PKG_VERSION").to_owned()),
            ("layout", dsr_common::LAYOUT_VERSION.to_string()),
            ("instance", s.instance.clone()),
        ]],
    );
    m.counter(
        "dsr_reloads",
        "Reloads (SIGHUP or dsr reload) since the daemon started, by result",
        [
            (vec![("result", "applied".to_owned())], s.reloads_applied),
            (vec![("result", "refused".to_owned())], s.reloads_refused),
        ],
    );
    m.gauge(
        "dsr_runtime_changes",
        "VIPs and backends that differ from the config file (added, removed or changed at run time)",
        [(vec![], s.runtime_changes as f64)],
    );
    m.gauge(
        "dsr_map_writes_pending",
        "Map writes that failed and wait for a retry (the data path lags the daemon's state)",
        [(vec![], s.map_writes_pending as f64)],
    );
    m.gauge(
        "dsr_map_tables_building",
        "VIPs forwarding by their old table while the new one is built",
        [(vec![], s.map_tables_building as f64)],
    );
    m.counter(
        "dsr_map_write_failures",
        "Map writes that failed since the daemon started",
        [(vec![], s.map_write_failures)],
    );
    for (name, help, pick) in [
        (
            "dsr_vip_packets",
            "Packets received for the VIP (forwarded or dropped)",
            0,
        ),
        ("dsr_vip_bytes", "Bytes received for the VIP.", 1),
        (
            "dsr_vip_flows",
            "New flows placed by the VIP's Maglev table.",
            2,
        ),
    ] {
        m.counter(
            name,
            help,
            s.vips.iter().map(|v| {
                let t = &v.traffic;
                (vip_labels(v), [t.packets, t.bytes, t.flows][pick])
            }),
        );
    }
    m.gauge(
        "dsr_vip_usable",
        "1 if the VIP has a usable backend, 0 if its packets are dropped",
        s.vips
            .iter()
            .map(|v| (vip_labels(v), v.serving.is_some() as u8 as f64)),
    );
    m.gauge(
        "dsr_vip_announced",
        "1 if the VIP is announced (not drained, at least min_usable backends take new flows).",
        s.vips
            .iter()
            .map(|v| (vip_labels(v), v.announced as u8 as f64)),
    );
    m.gauge(
        "dsr_announce_group_announced",
        "1 if the [[announce]] group is announced (all, or any, of its VIPs are).",
        s.announce_groups
            .iter()
            .map(|g| (vec![("group", g.name.clone())], g.announced as u8 as f64)),
    );
    m.info(
        "dsr_vip_table",
        "The VIP's table digest (seed, size and each slot's backend address): nodes agree on \
         every flow of a VIP exactly when the digests are equal",
        s.vips.iter().filter_map(|v| {
            let mut l = vip_labels(v);
            l.push(("digest", v.table_digest.clone()?));
            Some(l)
        }),
    );
    m.info(
        "dsr_vip_configured_table",
        "The digest of the table the VIP's configured weights give: equal to dsr_vip_table's \
         unless load-aware weights changed it; nodes with the same config and health agree \
         on it while their loads differ",
        s.vips.iter().filter_map(|v| {
            let mut l = vip_labels(v);
            l.push(("digest", v.configured_digest.clone()?));
            Some(l)
        }),
    );
    for (name, help, pick) in [
        (
            "dsr_backend_packets",
            "Packets forwarded to the backend.",
            0,
        ),
        ("dsr_backend_bytes", "Bytes forwarded to the backend.", 1),
        ("dsr_backend_flows", "New flows given to the backend.", 2),
    ] {
        m.counter(
            name,
            help,
            backends().map(|(v, b)| {
                let t = &b.traffic;
                (backend_labels(v, b), [t.packets, t.bytes, t.flows][pick])
            }),
        );
    }
    m.counter(
        "dsr_backend_checks_failed",
        "Health checks of the backend that failed",
        backends().map(|(v, b)| (backend_labels(v, b), b.checks_failed)),
    );
    m.info(
        "dsr_backend",
        "The backend's role and MAC",
        backends().map(|(v, b)| {
            let mut l = backend_labels(v, b);
            l.push(("role", b.role.to_string()));
            l.push(("mac", b.mac.map_or(String::new(), |m| m.to_string())));
            l
        }),
    );
    for (name, help, failures) in [
        (
            "dsr_vip_notify_runs",
            "Runs of the VIP's notify hook since the daemon started",
            false,
        ),
        (
            "dsr_vip_notify_failures",
            "Runs of the VIP's notify hook that did not exit 0 (failed, killed at the timeout, \
             or could not start)",
            true,
        ),
    ] {
        m.counter(
            name,
            help,
            s.vips.iter().filter_map(|v| {
                let n = v.notify.as_ref()?;
                Some((vip_labels(v), if failures { n.failures } else { n.runs }))
            }),
        );
    }
    if let Some(sync) = &s.sync {
        m.counter(
            "dsr_sync_flows",
            "Flows of the flow-state exchange ([sync]): sent to the peers, received, adopted \
             into this node's flow table, unknown here (VIP or backend not configured)",
            [
                ("sent", sync.sent_flows),
                ("received", sync.received_flows),
                ("adopted", sync.adopted_flows),
                ("unknown", sync.unknown_flows),
            ]
            .map(|(what, n)| (vec![("kind", what.to_owned())], n)),
        );
        m.counter(
            "dsr_sync_refused_datagrams",
            "Datagrams of the flow-state exchange refused (bad MAC or length, too old)",
            [(vec![], sync.refused_datagrams)],
        );
    }
    m.gauge(
        "dsr_vip_tracked_flows",
        "The VIP's live flow-table entries, as last counted (every flow_count_interval)",
        s.vips
            .iter()
            .filter_map(|v| Some((vip_labels(v), v.tracked_flows? as f64))),
    );
    m.gauge(
        "dsr_vip_table_slots",
        "Slots of the VIP's Maglev table (its table_size, or from its configured backends)",
        s.vips.iter().map(|v| (vip_labels(v), v.table_size as f64)),
    );
    if let Some(t) = &s.tables {
        m.gauge(
            "dsr_table_budget_slots",
            "Slots of the map all VIPs' tables share (table_budget), and those in use",
            [
                (vec![("kind", "budget".to_owned())], t.budget_slots as f64),
                (vec![("kind", "used".to_owned())], t.used_slots as f64),
            ],
        );
    }
    if let Some(t) = &s.flow_table {
        m.gauge(
            "dsr_flow_table_capacity",
            "Entries the flow table holds at most (flow_table_size)",
            [(vec![], t.capacity as f64)],
        );
        m.gauge(
            "dsr_flow_table_entries",
            "Flow-table entries as last counted: live (seen within the idle timeout) or \
             expired (idle; reused first)",
            [
                (vec![("state", "live".to_owned())], t.live as f64),
                (vec![("state", "expired".to_owned())], t.expired as f64),
            ],
        );
    }
    type Pick = fn(&crate::control::status::BackendStatus) -> Option<f64>;
    let gauges: [(&str, &str, Pick); 10] = [
        (
            "dsr_backend_up",
            "1 if the backend passes its health check (or has none) and its agent does not say \
             down",
            |b| Some(b.health.is_up() as u8 as f64),
        ),
        (
            "dsr_backend_in_table",
            "1 if the backend gets new flows now",
            |b| Some(b.in_table as u8 as f64),
        ),
        ("dsr_backend_weight", "Configured weight.", |b| {
            Some(b.weight as f64)
        }),
        (
            "dsr_backend_effective_weight",
            "Weight new flows see now: configured weight times load step (0 when down, \
             drained or unresolved)",
            |b| Some(b.effective_weight),
        ),
        (
            "dsr_backend_table_slots",
            "Slots of its VIP's active table that name the backend (0 while it stands by: its \
             slots are lent)",
            |b| b.table_slots.map(f64::from),
        ),
        (
            "dsr_backend_load_step",
            "Load-aware weight step in eighths of the configured weight (8 = as configured; \
             [vip.load] only)",
            |b| b.load.as_ref().map(|l| l.step as f64),
        ),
        (
            "dsr_backend_flow_share",
            "The backend's share of its VIP's active flows over its configured share, at the \
             last count ([vip.load] flows = true only)",
            |b| b.load.as_ref().and_then(|l| l.flow_share),
        ),
        (
            "dsr_backend_check_latency_seconds",
            "Duration of the last health check",
            |b| b.last_check.as_ref().map(|c| c.latency_us as f64 / 1e6),
        ),
        (
            "dsr_backend_tracked_flows",
            "The backend's live flow-table entries, closing ones left out, as last counted \
             (ipvsadm's active connections)",
            |b| b.tracked_flows.map(|n| n as f64),
        ),
        (
            "dsr_backend_closing_flows",
            "The backend's live flow-table entries of TCP flows whose FIN or RST was seen, as \
             last counted (ipvsadm's inactive connections)",
            |b| b.closing_flows.map(|n| n as f64),
        ),
    ];
    for (name, help, pick) in gauges {
        m.gauge(
            name,
            help,
            backends().filter_map(|(v, b)| Some((backend_labels(v, b), pick(b)?))),
        );
    }
    for (name, help, bytes) in [
        (
            "dsr_verdict_packets",
            "Packets by why the XDP program forwarded, passed or dropped them",
            false,
        ),
        ("dsr_verdict_bytes", "Bytes by verdict reason.", true),
    ] {
        m.counter(
            name,
            help,
            s.reasons.iter().map(|r| {
                (
                    vec![("reason", r.reason.clone()), ("verdict", r.verdict.clone())],
                    if bytes { r.bytes } else { r.packets },
                )
            }),
        );
    }
    m.counter(
        "dsr_events",
        "Counted by the XDP program besides verdicts: flow_insert_failed, adopted (a TCP \
         connection taken over mid-stream), untracked_close (RST/FIN without a flow entry)",
        s.events
            .iter()
            .map(|e| (vec![("event", e.event.clone())], e.count)),
    );
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &m.registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::status::{BackendStatus, EventStatus, HealthState, Traffic, VipStatus};

    /// A status with one of everything, so that every family has a sample.
    fn one_of_each() -> Status {
        let backend = BackendStatus {
            address: "198.18.0.11".parse().unwrap(),
            role: crate::spec::model::Role::Primary,
            mac: None,
            via: None,
            health: HealthState::Up,
            health_live: true,
            since_unix_ms: 0,
            check: "tcp".into(),
            check_path: None,
            last_check: Some(crate::control::status::LastCheck {
                ok: true,
                at_unix_ms: 0,
                latency_us: 1500,
                message: "connected".into(),
            }),
            checks_failed: 2,
            weight: 1,
            effective_weight: 1.0,
            load: None,
            drained: false,
            inhibit_on_failure: false,
            in_table: true,
            keeps_flows: true,
            table_slots: Some(65537),
            runtime: false,
            tracked_flows: Some(3),
            closing_flows: Some(1),
            traffic: Traffic::default(),
        };
        Status {
            vips: vec![VipStatus {
                name: "web".into(),
                addr: "198.18.0.100:80/tcp".parse().unwrap(),
                conntrack: true,
                fragments: false,
                hash: "5-tuple".into(),
                serving: Some(crate::spec::model::Role::Primary),
                runtime: false,
                removed_backends: Vec::new(),
                announced: true,
                min_usable: 1,
                drained: false,
                table_size: 130003,
                table_bytes: 520064,
                table_size_pending: None,
                table_digest: Some("0123456789abcdef".into()),
                configured_digest: Some("0123456789abcdef".into()),
                tracked_flows: Some(3),
                load: None,
                notify: Some(crate::runtime::notify::HookStatus {
                    command: "/usr/local/bin/vip-moved".into(),
                    runs: 2,
                    failures: 1,
                    ..Default::default()
                }),
                traffic: Traffic::default(),
                backends: vec![backend],
            }],
            reasons: vec![crate::control::status::ReasonStatus {
                reason: "forwarded".into(),
                verdict: "forward".into(),
                packets: 7,
                bytes: 700,
            }],
            events: vec![EventStatus {
                event: "adopted".into(),
                count: 1,
            }],
            sync: Some(crate::runtime::sync::SyncStatus::default()),
            flow_table: Some(crate::control::status::FlowTableStatus {
                capacity: 1024,
                live: 3,
                expired: 1,
                counted_at_unix_ms: 0,
                count_ms: 0.5,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn escapes_label_values() {
        let mut status = Status::default();
        status.reasons.push(crate::control::status::ReasonStatus {
            reason: "a\"b\\c".into(),
            verdict: "pass".into(),
            packets: 1,
            bytes: 1,
        });
        let text = render(&status);
        assert!(text.contains(r#"reason="a\"b\\c""#), "{text}");
    }

    #[test]
    fn renders_every_family_with_help_and_type() {
        let text = render(&one_of_each());
        assert!(
            text.contains("# TYPE dsr_verdict_packets counter"),
            "{text}"
        );
        assert!(
            text.contains("dsr_verdict_packets_total{reason=\"forwarded\",verdict=\"forward\"} 7"),
            "{text}"
        );
        // VIP families carry vip and address, backend families those and backend.
        assert!(text.contains(
            "dsr_backend_checks_failed_total{vip=\"web\",address=\"198.18.0.100:80/tcp\",backend=\"198.18.0.11\"} 2"
        ), "{text}");
        assert!(text.contains(
            "dsr_backend_table_slots{vip=\"web\",address=\"198.18.0.100:80/tcp\",backend=\"198.18.0.11\"} 65537"
        ), "{text}");
        assert!(text.contains("dsr_vip_table_info{vip=\"web\",address=\"198.18.0.100:80/tcp\",digest=\"0123456789abcdef\"} 1"), "{text}");
        assert!(text.trim_end().ends_with("# EOF"));
        let families = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
        let helps = text.lines().filter(|l| l.starts_with("# HELP ")).count();
        assert_eq!(families, helps);
        assert!(families >= 24, "{text}");
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
            assert!(name.starts_with("dsr_"), "bad sample line {line:?}");
            value
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        }
    }

    /// The shipped Grafana dashboard queries only metrics that dsr exports.
    #[test]
    fn every_metric_the_dashboard_queries_exists() {
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../../../dist/grafana/dsr.json")).unwrap();
        let exported = render(&one_of_each());
        let mut queried = Vec::new();
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap();
                let mut rest = expr;
                while let Some(i) = rest.find("dsr_") {
                    let name: String = rest[i..]
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                        .collect();
                    rest = &rest[i + name.len()..];
                    queried.push(name);
                }
            }
        }
        assert!(queried.len() >= 15, "{queried:?}");
        for name in &queried {
            // OpenMetrics names a counter family without its samples' `_total`.
            let family = name.strip_suffix("_total").unwrap_or(name);
            assert!(
                exported.contains(&format!("# TYPE {family} ")),
                "the dashboard queries {name}, which dsr does not export:\n{exported}"
            );
        }
    }
}
