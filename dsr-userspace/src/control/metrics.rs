//! The Prometheus endpoint (off unless the config sets `metrics = "ADDRESS:PORT"`): per VIP and
//! per backend packets, bytes, new flows, health, weights and check latency, and per-reason
//! verdict counters.
//!
//! The text exposition format is written here rather than through a client library: every
//! value is a snapshot of a kernel counter or of the daemon's state taken at scrape time,
//! which client libraries (built around counters the program increments itself) model
//! awkwardly. The format is small; escaping follows the Prometheus spec.

use std::{convert::Infallible, fmt::Write, net::SocketAddr};

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

use crate::control::{Call, Request, Status};

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
            .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
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

/// Escapes a label value (backslash, double quote, newline).
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", esc(v)))
            .collect();
        let _ = writeln!(self.out, "{name}{{{}}} {value}", labels.join(","));
    }
}

/// The exposition of one status snapshot.
pub fn render(s: &Status) -> String {
    let mut out = String::new();
    let mut f = Family { out: &mut out };
    let vip_metrics: [(&str, &str, &str); 3] = [
        (
            "dsr_vip_packets_total",
            "counter",
            "Packets received for the VIP (forwarded or dropped).",
        ),
        (
            "dsr_vip_bytes_total",
            "counter",
            "Bytes received for the VIP.",
        ),
        (
            "dsr_vip_flows_total",
            "counter",
            "New flows placed by the VIP's Maglev table.",
        ),
    ];
    for (i, (name, kind, help)) in vip_metrics.iter().enumerate() {
        f.header(name, kind, help);
        for v in &s.vips {
            let value = [v.traffic.packets, v.traffic.bytes, v.traffic.flows][i];
            f.sample(
                name,
                &[("vip", &v.name), ("address", &v.addr.to_string())],
                value as f64,
            );
        }
    }
    f.header(
        "dsr_vip_usable",
        "gauge",
        "1 if the VIP has a usable backend, 0 if its packets are dropped.",
    );
    for v in &s.vips {
        f.sample(
            "dsr_vip_usable",
            &[("vip", &v.name)],
            v.serving.is_some() as u8 as f64,
        );
    }
    f.header(
        "dsr_vip_table_info",
        "gauge",
        "1 per VIP, labelled with its table digest (seed, size and each slot's backend address): \
         nodes agree on every flow of a VIP exactly when the digests are equal.",
    );
    for v in &s.vips {
        if let Some(d) = &v.table_digest {
            f.sample(
                "dsr_vip_table_info",
                &[("vip", &v.name), ("digest", d)],
                1.0,
            );
        }
    }
    let backend_counters: [(&str, &str, &str); 3] = [
        (
            "dsr_backend_packets_total",
            "counter",
            "Packets forwarded to the backend.",
        ),
        (
            "dsr_backend_bytes_total",
            "counter",
            "Bytes forwarded to the backend.",
        ),
        (
            "dsr_backend_flows_total",
            "counter",
            "New flows given to the backend.",
        ),
    ];
    for (i, (name, kind, help)) in backend_counters.iter().enumerate() {
        f.header(name, kind, help);
        for v in &s.vips {
            for b in &v.backends {
                let value = [b.traffic.packets, b.traffic.bytes, b.traffic.flows][i];
                let addr = b.address.to_string();
                f.sample(
                    name,
                    &[
                        ("vip", &v.name),
                        ("backend", &addr),
                        ("role", &b.role.to_string()),
                    ],
                    value as f64,
                );
            }
        }
    }
    let gauges: [(&str, &str); 5] = [
        (
            "dsr_backend_up",
            "1 if the backend passes its health check (or has none).",
        ),
        (
            "dsr_backend_in_table",
            "1 if the backend gets new flows now.",
        ),
        ("dsr_backend_weight", "Configured weight."),
        (
            "dsr_backend_effective_weight",
            "Weight new flows see now (0 when down, drained or unresolved).",
        ),
        (
            "dsr_backend_check_latency_seconds",
            "Duration of the last health check.",
        ),
    ];
    for (name, help) in gauges {
        f.header(name, "gauge", help);
        for v in &s.vips {
            for b in &v.backends {
                let value = match name {
                    "dsr_backend_up" => b.health.is_up() as u8 as f64,
                    "dsr_backend_in_table" => b.in_table as u8 as f64,
                    "dsr_backend_weight" => b.weight as f64,
                    "dsr_backend_effective_weight" => b.effective_weight as f64,
                    _ => match &b.last_check {
                        Some(c) => c.latency_us as f64 / 1e6,
                        None => continue,
                    },
                };
                let addr = b.address.to_string();
                f.sample(name, &[("vip", &v.name), ("backend", &addr)], value);
            }
        }
    }
    for (name, help, bytes) in [
        (
            "dsr_verdict_packets_total",
            "Packets by why the XDP program forwarded, passed or dropped them.",
            false,
        ),
        ("dsr_verdict_bytes_total", "Bytes by verdict reason.", true),
    ] {
        f.header(name, "counter", help);
        for r in &s.reasons {
            let value = if bytes { r.bytes } else { r.packets };
            f.sample(
                name,
                &[("reason", &r.reason), ("verdict", &r.verdict)],
                value as f64,
            );
        }
    }
    f.header(
        "dsr_events_total",
        "counter",
        "Counted by the XDP program besides verdicts: flow_insert_failed, adopted (a TCP \
         connection taken over mid-stream), untracked_close (RST/FIN without a flow entry).",
    );
    for e in &s.events {
        f.sample("dsr_events_total", &[("event", &e.event)], e.count as f64);
    }
    f.header(
        "dsr_map_writes_pending",
        "gauge",
        "Map writes that failed and wait for a retry (the data path lags the daemon's state).",
    );
    f.sample("dsr_map_writes_pending", &[], s.map_writes_pending as f64);
    f.header(
        "dsr_map_write_failures_total",
        "counter",
        "Map writes that failed since the daemon started.",
    );
    f.sample(
        "dsr_map_write_failures_total",
        &[],
        s.map_write_failures as f64,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_label_values() {
        assert_eq!(
            esc(r#"a"b\c
d"#),
            r#"a\"b\\c\nd"#
        );
    }

    #[test]
    fn renders_every_family_with_help_and_type() {
        let status = Status {
            reasons: vec![crate::control::status::ReasonStatus {
                reason: "forwarded".into(),
                verdict: "tx".into(),
                packets: 7,
                bytes: 700,
            }],
            ..Default::default()
        };
        let text = render(&status);
        assert!(text.contains("# TYPE dsr_verdict_packets_total counter"));
        assert!(text.contains("dsr_verdict_packets_total{reason=\"forwarded\",verdict=\"tx\"} 7"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.contains("} "), "bad sample line {line:?}");
        }
    }

    /// The shipped Grafana dashboard queries only metrics that dsr exports.
    #[test]
    fn every_metric_the_dashboard_queries_exists() {
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../../../dist/grafana/dsr.json")).unwrap();
        let exported = render(&Status::default());
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
            assert!(
                exported.contains(&format!("# TYPE {name} ")),
                "the dashboard queries {name}, which dsr does not export"
            );
        }
    }
}
