//! Part `failover`: how long a dead backend keeps receiving new connections, under steady
//! load, in the namespace lab with the real `dsr`.
//!
//! A client opens a new TCP connection to the VIP every 10 ms (each from a new source port,
//! so each is a new flow placed by the Maglev table). At time 0 one backend dies, either as a
//! killed server (its kernel answers with RST) or silently (its link goes down: SYNs go
//! unanswered). For the connections the table gives that backend, two times are reported:
//! when the last one that failed was sent (the failover time: after it, new connections no
//! longer go there) and when the first one that succeeded (on the new owner) was sent.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use dsr_lab::lab::{Lab, VIP};

use crate::{
    dsr_process::ensure_binary,
    report::{PartReport, Table, Target},
};

pub struct Size {
    rounds: usize,
    /// Also measure keepalived-like settings (seconds per round).
    keepalived: bool,
}

pub const FULL: Size = Size {
    rounds: 3,
    keepalived: true,
};
pub const QUICK: Size = Size {
    rounds: 1,
    keepalived: false,
};

const TCP: u8 = 6;
const SEND_EVERY: Duration = Duration::from_millis(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

struct Settings {
    name: &'static str,
    check: &'static str,
    /// Load before and after the failure.
    before: Duration,
    after: Duration,
}

const FAST: Settings = Settings {
    name: "dsr: TCP check every 100 ms, timeout 100 ms, fall 2",
    check: "type = \"tcp\"\nport = 80\ninterval = \"100ms\"\ntimeout = \"100ms\"\nrise = 2\nfall = 2",
    before: Duration::from_millis(500),
    after: Duration::from_millis(2500),
};

/// keepalived's usual LVS-DR TCP_CHECK: delay_loop 3, connect_timeout 3, retry 1 (one retry
/// after a failure, so two failed checks take a server out).
const KEEPALIVED: Settings = Settings {
    name: "keepalived-like: every 3 s, timeout 3 s, fall 2 (delay_loop 3, connect_timeout 3, retry 1)",
    check: "type = \"tcp\"\nport = 80\ninterval = \"3s\"\ntimeout = \"3s\"\nrise = 2\nfall = 2",
    before: Duration::from_millis(500),
    after: Duration::from_secs(12),
};

#[derive(Clone, Copy, PartialEq)]
enum Failure {
    Killed,
    Silent,
}

impl Failure {
    fn name(self) -> &'static str {
        match self {
            Failure::Killed => "server killed (RST)",
            Failure::Silent => "link down (silent)",
        }
    }
}

struct Outcome {
    last_failed_ms: f64,
    first_ok_ms: f64,
    failed: usize,
}

pub fn run(size: &Size) -> Result<PartReport> {
    ensure_binary()?;
    let mut report = PartReport::new("failover", "Failover under load (`dsr-bench failover`)");
    report.method = vec![
        "lab: client, load balancer and 3 backends on one bridge, the real dsr; the VIP's \
         backends have a TCP check on the service port."
            .into(),
        format!(
            "load: a new TCP connection to the VIP every {} ms from a new source port (a new \
             flow each), connect timeout {} s; at time 0 backend 2 dies: killed server (RST) or \
             link down (silent).",
            SEND_EVERY.as_millis(),
            CONNECT_TIMEOUT.as_secs()
        ),
        "measured, over the connections whose flow the full table gives the dead backend: \
         last failed = send time of the last one that failed (after it, new flows no longer \
         go there); first ok = send time of the first one that succeeded (on the new owner). \
         Medians over the rounds. Absolute times depend on the machine and its load."
            .into(),
    ];
    let mut table = Table::new(
        "time from the failure (ms)",
        &[
            "settings",
            "failure",
            "rounds",
            "last failed",
            "first ok",
            "failed connections",
        ],
    )
    .labels(2);
    let mut settings = vec![(&FAST, size.rounds)];
    if size.keepalived {
        settings.push((&KEEPALIVED, 1));
    }
    for (s, rounds) in settings {
        for failure in [Failure::Killed, Failure::Silent] {
            let mut outcomes = Vec::new();
            for round in 0..rounds {
                match measure(s, failure, round) {
                    Ok(o) => outcomes.push(o),
                    Err(e) => {
                        report
                            .failures
                            .push(format!("{} / {}: {e:#}", s.name, failure.name()))
                    }
                }
            }
            if outcomes.is_empty() {
                continue;
            }
            let med = |f: &dyn Fn(&Outcome) -> f64| {
                let mut v: Vec<f64> = outcomes.iter().map(f).collect();
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            let (last, first) = (med(&|o| o.last_failed_ms), med(&|o| o.first_ok_ms));
            let failed = med(&|o| o.failed as f64);
            table.row(vec![
                s.name.into(),
                failure.name().into(),
                outcomes.len().to_string(),
                format!("{last:.0} ms"),
                format!("{first:.0} ms"),
                format!("{failed:.0}"),
            ]);
            if std::ptr::eq(s, &FAST) {
                report.targets.push(Target::new(
                    format!(
                        "failover (last request to the dead backend), 100 ms checks, fall 2, {}",
                        failure.name()
                    ),
                    "< 300 ms",
                    format!("{last:.0} ms"),
                    last < 300.0,
                ));
            }
        }
    }
    report.tables.push(table);
    report.notes.push(
        "A killed server fails its checks at once (connection refused): about fall x interval. \
         A silent one fails them only when they time out, so its failover time also includes \
         the check timeout."
            .into(),
    );
    Ok(report)
}

fn measure(s: &Settings, failure: Failure, round: usize) -> Result<Outcome> {
    let mut lab = Lab::new(&format!("fo{round}"), &[1, 1, 1]);
    let mut config = lab.header();
    config += &format!(
        "\n[[vip]]\nname = \"tcp\"\naddress = \"{VIP}\"\nport = 80\nprotocol = \"tcp\"\n[vip.check]\n{}\n",
        s.check
    );
    for b in &lab.backends {
        config += &format!("  [[vip.backend]]\n  address = \"{}\"\n", b.ip);
    }
    lab.start_dsr_with(&config, false)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while (0..3).any(|i| lab.health_of("tcp", i) != "up") {
        if Instant::now() > deadline {
            bail!("backends did not come up:\n{}", lab.dsr_log());
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    // (send time, source port, answered) of every connection.
    let results: Arc<Mutex<Vec<(Instant, u16, bool)>>> = Arc::default();
    let start = Instant::now();
    let total = s.before + s.after;
    let client_ns = format!("/run/netns/{}", lab.client_ns);
    let client_ip = lab.client_ip;
    let sender = {
        let results = results.clone();
        std::thread::spawn(move || {
            let mut workers = Vec::new();
            let mut i = 0u16;
            while start.elapsed() < total {
                let sport = 20000 + i;
                i += 1;
                let (results, ns) = (results.clone(), client_ns.clone());
                workers.push(std::thread::spawn(move || {
                    dsr_lab::lab::in_netns_path(&ns);
                    let sent = Instant::now();
                    let ok = connect_and_ask(client_ip, sport).is_ok();
                    results.lock().unwrap().push((sent, sport, ok));
                }));
                std::thread::sleep(SEND_EVERY);
            }
            for w in workers {
                let _ = w.join();
            }
        })
    };
    std::thread::sleep(s.before);
    match failure {
        Failure::Killed => lab.stop_service(1),
        Failure::Silent => {
            dsr_lab::lab::sh(&[
                "ip",
                "-n",
                &lab.backends[1].ns,
                "link",
                "set",
                "eth0",
                "down",
            ])?;
        }
    }
    // Time 0 is when the failure is complete (connections sent while it was happening may
    // still have been served).
    let failed_at = Instant::now();
    sender
        .join()
        .map_err(|_| anyhow::anyhow!("load thread panicked"))?;

    let results = results.lock().unwrap();
    let mine: Vec<&(Instant, u16, bool)> = results
        .iter()
        .filter(|(_, p, _)| lab.predict(TCP, *p) == 1)
        .collect();
    let since = |t: &Instant| t.saturating_duration_since(failed_at).as_secs_f64() * 1000.0;
    let last_failed = mine
        .iter()
        .filter(|(_, _, ok)| !ok)
        .map(|(t, _, _)| *t)
        .max();
    let first_ok = mine
        .iter()
        .filter(|(t, _, ok)| *ok && *t > failed_at)
        .map(|(t, _, _)| *t)
        .min();
    let (Some(last_failed), Some(first_ok)) = (last_failed, first_ok) else {
        bail!(
            "no failover seen ({} connections to the dying backend's flows)\n{}",
            mine.len(),
            lab.dsr_log()
        );
    };
    if results
        .iter()
        .any(|(t, p, ok)| !ok && *t < failed_at && lab.predict(TCP, *p) != 1)
    {
        bail!("connections failed before the failure");
    }
    Ok(Outcome {
        last_failed_ms: since(&last_failed),
        first_ok_ms: since(&first_ok),
        failed: mine.iter().filter(|(_, _, ok)| !ok).count(),
    })
}

/// One connection from `client:sport` to the VIP that gets an answer within the timeout.
fn connect_and_ask(client: std::net::Ipv4Addr, sport: u16) -> Result<()> {
    use std::io::{Read, Write};
    let mut s = dsr_lab::lab::connect_with_timeout(client, sport, CONNECT_TIMEOUT)?;
    s.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    s.write_all(b"who are you?\n")?;
    let mut buf = [0u8; 64];
    if s.read(&mut buf)? == 0 {
        bail!("closed");
    }
    Ok(())
}
