//! Health checks: the [`Checker`]s (TCP connect, HTTP GET), the rise/fall state of one
//! backend, the task that runs one backend's check (or asks its agent, runtime::agent), and
//! the [`Supervisor`] that keeps exactly one task per check.
//!
//! Thresholds: a backend goes down after `fall` consecutive failures and comes back after
//! `rise` consecutive successes. Before its first result a backend counts as up (keepalived's
//! default: no traffic gap when the daemon starts), and the first result decides directly.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::{net::TcpStream, sync::mpsc};

use crate::{
    runtime::agent,
    spec::model::{AgentSpec, CheckKind, CheckSpec},
};

/// The outcome of one check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    pub ok: bool,
    #[serde(with = "unix_ms")]
    pub at: SystemTime,
    pub latency_us: u64,
    /// "connected", "HTTP 200", "connection refused", "timed out after 1s", ...
    pub message: String,
}

/// Health of one backend under rise/fall thresholds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub up: bool,
    /// No result yet: `up` is assumed.
    pub unchecked: bool,
    #[serde(with = "unix_ms")]
    pub since: SystemTime,
    pub ok_streak: u32,
    pub fail_streak: u32,
    pub last: Option<CheckResult>,
    /// Checks that failed since the backend was added (for the metrics).
    #[serde(default)]
    pub checks_failed: u64,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            up: true,
            unchecked: true,
            since: SystemTime::now(),
            ok_streak: 0,
            fail_streak: 0,
            last: None,
            checks_failed: 0,
        }
    }
}

impl Health {
    /// A new check takes over: state, since-time and last result stay; the streaks start
    /// from zero, and the state now changes only by `rise`/`fall` (not by a first result).
    pub fn restart_counting(&mut self) {
        self.ok_streak = 0;
        self.fail_streak = 0;
        self.unchecked = false;
    }

    /// Takes a result; returns the new state if it changed.
    pub fn record(&mut self, result: CheckResult, rise: u32, fall: u32) -> Option<bool> {
        let was = self.up;
        if result.ok {
            self.ok_streak += 1;
            self.fail_streak = 0;
        } else {
            self.fail_streak += 1;
            self.ok_streak = 0;
            self.checks_failed += 1;
        }
        if self.unchecked {
            self.up = result.ok;
        } else if self.up && self.fail_streak >= fall {
            self.up = false;
        } else if !self.up && self.ok_streak >= rise {
            self.up = true;
        }
        self.unchecked = false;
        self.last = Some(result);
        (self.up != was).then(|| {
            self.since = SystemTime::now();
            self.up
        })
    }
}

/// Runs one check against `address` (never the VIP) with the spec's timeout.
pub async fn check_once(address: IpAddr, default_port: u16, spec: &CheckSpec) -> CheckResult {
    let started = Instant::now();
    let target = SocketAddr::new(address, spec.port.unwrap_or(default_port));
    let outcome = tokio::time::timeout(spec.timeout, run(target, &spec.kind)).await;
    let (ok, message) = match outcome {
        Ok(Ok(msg)) => (true, msg),
        Ok(Err(msg)) => (false, msg),
        Err(_) => (false, format!("timed out after {:?}", spec.timeout)),
    };
    CheckResult {
        ok,
        at: SystemTime::now(),
        latency_us: started.elapsed().as_micros() as u64,
        message,
    }
}

/// One kind of probe: `Ok(what it saw)` if the backend passed, `Err(why not)` otherwise.
/// The caller bounds it with the check's timeout.
pub trait Checker {
    fn probe(&self, target: SocketAddr) -> impl Future<Output = Result<String, String>> + Send;
}

/// Passes when a TCP connection completes.
pub struct TcpConnect;

impl Checker for TcpConnect {
    async fn probe(&self, target: SocketAddr) -> Result<String, String> {
        TcpStream::connect(target)
            .await
            .map(|_| "connected".to_owned())
            .map_err(|e| format!("connect {target}: {e}"))
    }
}

/// Passes when an HTTP/1.1 GET is answered with the expected status (and body substring).
pub struct HttpGet<'a> {
    pub path: &'a str,
    pub expect_status: u16,
    pub host: Option<&'a str>,
    pub expect_body: Option<&'a str>,
}

impl Checker for HttpGet<'_> {
    async fn probe(&self, target: SocketAddr) -> Result<String, String> {
        http_get(
            target,
            self.path,
            self.expect_status,
            self.host,
            self.expect_body,
        )
        .await
    }
}

async fn run(target: SocketAddr, kind: &CheckKind) -> Result<String, String> {
    match kind {
        CheckKind::None => Ok("no check".into()),
        CheckKind::Tcp => TcpConnect.probe(target).await,
        CheckKind::Http {
            path,
            expect_status,
            host,
            expect_body,
        } => {
            HttpGet {
                path,
                expect_status: *expect_status,
                host: host.as_deref(),
                expect_body: expect_body.as_deref(),
            }
            .probe(target)
            .await
        }
    }
}

async fn http_get(
    target: SocketAddr,
    path: &str,
    expect_status: u16,
    host: Option<&str>,
    expect_body: Option<&str>,
) -> Result<String, String> {
    let stream = TcpStream::connect(target)
        .await
        .map_err(|e| format!("connect {target}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    let conn = tokio::spawn(conn);
    let host = host.map_or_else(|| target.to_string(), str::to_owned);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, host)
        .header(hyper::header::USER_AGENT, "dsr-health-check")
        .header(hyper::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("HTTP request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("HTTP GET {path}: {e}"))?;
    let status = response.status().as_u16();
    let result = if status != expect_status {
        Err(format!("HTTP {status}, expected {expect_status}"))
    } else if let Some(needle) = expect_body {
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("HTTP body: {e}"))?
            .to_bytes();
        if String::from_utf8_lossy(&body).contains(needle) {
            Ok(format!("HTTP {status}, body has {needle:?}"))
        } else {
            Err(format!("HTTP {status}, body lacks {needle:?}"))
        }
    } else {
        Ok(format!("HTTP {status}"))
    };
    conn.abort();
    result
}

/// What a task reports: which check (`token`, chosen by the daemon) and what it found.
#[derive(Debug)]
pub struct Report {
    pub token: u64,
    pub outcome: Outcome,
}

#[derive(Debug)]
pub enum Outcome {
    /// A health check's result.
    Check(CheckResult),
    /// An agent's answer.
    Agent(agent::Reading),
}

/// What a task runs: a health check, or a question to the backend's agent.
#[derive(Clone)]
pub enum Job<'a> {
    Check(&'a CheckSpec),
    Agent(AgentSpec),
}

#[derive(Clone)]
enum OwnedJob {
    Check(CheckSpec),
    Agent(AgentSpec),
}

impl OwnedJob {
    fn interval(&self) -> Duration {
        match self {
            OwnedJob::Check(c) => c.interval,
            OwnedJob::Agent(a) => a.interval,
        }
    }

    async fn run(&self, address: IpAddr, default_port: u16) -> Outcome {
        match self {
            OwnedJob::Check(c) => Outcome::Check(check_once(address, default_port, c).await),
            OwnedJob::Agent(a) => {
                Outcome::Agent(agent::ask(SocketAddr::new(address, a.port), a).await)
            }
        }
    }
}

/// Runs one job every `interval` (plus up to 10% random jitter, so that a thousand checks
/// configured alike do not fire together) until the receiver goes away or the task is
/// aborted. The first run is right away (after jitter), so state is known quickly.
async fn job_loop(
    token: u64,
    address: IpAddr,
    default_port: u16,
    job: OwnedJob,
    reports: mpsc::Sender<Report>,
    in_flight: std::sync::Arc<tokio::sync::Semaphore>,
) {
    let jitter = |interval: Duration| {
        let max = (interval.as_micros() as u64 / 10).max(1);
        Duration::from_micros(fastrand::u64(0..max))
    };
    let interval = job.interval();
    tokio::time::sleep(jitter(interval)).await;
    loop {
        let started = Instant::now();
        // A check holds a socket while it runs: at most `in_flight` at once, so that
        // thousands of checks to black-holed backends cannot use up the file descriptors the
        // control socket and the other checks need. A check waiting for its turn runs late.
        let Ok(permit) = in_flight.acquire().await else {
            return;
        };
        let outcome = job.run(address, default_port).await;
        drop(permit);
        if reports.send(Report { token, outcome }).await.is_err() {
            return;
        }
        let next = interval + jitter(interval);
        tokio::time::sleep(next.saturating_sub(started.elapsed())).await;
    }
}

/// File descriptors kept for everything but checks: maps, netlink, the control socket and
/// its clients, the metrics endpoint.
const FD_RESERVE: u64 = 160;

/// Raises the soft file-descriptor limit to the hard one and says how many checks may run at
/// once: half of what is left after the reserve, at least 8 and at most 4096.
pub fn check_budget() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    (lim.rlim_cur.saturating_sub(FD_RESERVE) / 2).clamp(8, 4096) as usize
}

/// One check task per checked backend, keyed by the backend's check token (a new token, for
/// a new or edited check, restarts the check).
pub struct Supervisor {
    in_flight: std::sync::Arc<tokio::sync::Semaphore>,
    tasks: std::collections::HashMap<u64, tokio::task::JoinHandle<()>>,
    reports: mpsc::Sender<Report>,
}

/// A check the supervisor should run.
pub struct Wanted<'a> {
    pub token: u64,
    pub address: IpAddr,
    /// The VIP's port, for checks without a port of their own.
    pub default_port: u16,
    pub job: Job<'a>,
}

impl Supervisor {
    /// `max_in_flight`: checks that may run at once (see [`check_budget`]).
    pub fn new(reports: mpsc::Sender<Report>, max_in_flight: usize) -> Self {
        Supervisor {
            in_flight: std::sync::Arc::new(tokio::sync::Semaphore::new(max_in_flight.max(1))),
            tasks: Default::default(),
            reports,
        }
    }

    /// Runs exactly the wanted checks: starts the new ones, stops the others.
    pub fn sync<'a>(&mut self, wanted: impl IntoIterator<Item = Wanted<'a>>) {
        let mut live = std::collections::HashSet::new();
        for w in wanted {
            let job = match w.job {
                Job::Check(c) if c.kind == CheckKind::None => continue,
                Job::Check(c) => OwnedJob::Check(c.clone()),
                Job::Agent(a) => OwnedJob::Agent(a),
            };
            live.insert(w.token);
            self.tasks.entry(w.token).or_insert_with(|| {
                tokio::spawn(job_loop(
                    w.token,
                    w.address,
                    w.default_port,
                    job,
                    self.reports.clone(),
                    self.in_flight.clone(),
                ))
            });
        }
        self.tasks.retain(|token, task| {
            let keep = live.contains(token);
            if !keep {
                task.abort();
            }
            keep
        });
    }

    pub fn stop_all(&mut self) {
        for (_, task) in self.tasks.drain() {
            task.abort();
        }
    }
}

pub(crate) mod unix_ms {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        Ok(UNIX_EPOCH + Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(ok: bool) -> CheckResult {
        CheckResult {
            ok,
            at: SystemTime::now(),
            latency_us: 1,
            message: String::new(),
        }
    }

    #[test]
    fn first_result_decides_then_rise_and_fall_apply() {
        let mut h = Health::default();
        assert!(h.up && h.unchecked);
        assert_eq!(
            h.record(result(false), 2, 3),
            Some(false),
            "first failure takes it down"
        );
        assert_eq!(h.record(result(true), 2, 3), None);
        assert_eq!(h.record(result(true), 2, 3), Some(true), "rise = 2");
        assert_eq!(h.record(result(false), 2, 3), None);
        assert_eq!(h.record(result(false), 2, 3), None);
        assert_eq!(
            h.record(result(true), 2, 3),
            None,
            "a success resets the failure streak"
        );
        assert_eq!(h.record(result(false), 2, 3), None);
        assert_eq!(h.record(result(false), 2, 3), None);
        assert_eq!(h.record(result(false), 2, 3), Some(false), "fall = 3");
    }

    fn spec(kind: CheckKind, port: u16) -> CheckSpec {
        CheckSpec {
            kind,
            port: Some(port),
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(300),
            rise: 1,
            fall: 1,
        }
    }

    #[tokio::test]
    async fn tcp_and_http_checks_against_local_servers() {
        use tokio::io::AsyncWriteExt;
        let port = crate::runtime::test_server(|mut s, req| async move {
            let reply = if req.starts_with("GET /ok ") {
                "HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nhealthy"
            } else if req.starts_with("GET /hang ") {
                tokio::time::sleep(Duration::from_secs(5)).await;
                ""
            } else {
                "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"
            };
            let _ = s.write_all(reply.as_bytes()).await;
        })
        .await;
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let http = |path: &str, body: Option<&str>| CheckKind::Http {
            path: path.into(),
            expect_status: 200,
            host: None,
            expect_body: body.map(str::to_owned),
        };
        assert!(check_once(lo, 1, &spec(CheckKind::Tcp, port)).await.ok);
        assert!(check_once(lo, 1, &spec(http("/ok", None), port)).await.ok);
        assert!(
            check_once(lo, 1, &spec(http("/ok", Some("health")), port))
                .await
                .ok
        );
        let r = check_once(lo, 1, &spec(http("/ok", Some("sick")), port)).await;
        assert!(!r.ok && r.message.contains("lacks"), "{r:?}");
        let r = check_once(lo, 1, &spec(http("/down", None), port)).await;
        assert!(!r.ok && r.message.contains("503"), "{r:?}");
        let r = check_once(lo, 1, &spec(http("/hang", None), port)).await;
        assert!(!r.ok && r.message.contains("timed out"), "{r:?}");
        assert!(
            r.latency_us < 1_000_000,
            "a hanging check is bounded by its timeout"
        );
        // Nothing listens on port 1 here.
        let r = check_once(lo, 1, &spec(CheckKind::Tcp, 1)).await;
        assert!(!r.ok, "{r:?}");
        assert!(check_once(lo, 1, &spec(CheckKind::None, 1)).await.ok);
    }

    /// Targets that misbehave: each check fails within its timeout with a message saying
    /// why, and never hangs, whatever the server does.
    #[tokio::test]
    async fn misbehaving_targets_fail_within_the_timeout() {
        use tokio::io::AsyncWriteExt;
        let port = crate::runtime::test_server(|mut s, req| async move {
            let path = req.split_whitespace().nth(1).unwrap_or("").to_owned();
            match path.as_str() {
                // Accepts and never answers.
                "/silent" => tokio::time::sleep(Duration::from_secs(10)).await,
                // Not HTTP at all.
                "/garbage" => {
                    let _ = s.write_all(b"\x00\x01garbage\r\n\r\n").await;
                }
                // A header far larger than any health answer.
                "/huge" => {
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nX-Big: ").await;
                    let _ = s.write_all(&vec![b'a'; 1 << 20]).await;
                    let _ = s.write_all(b"\r\n\r\n").await;
                }
                // Resets the connection.
                "/reset" => {
                    let sock = socket2_linger_zero(s);
                    drop(sock);
                }
                // Answers, but after the timeout.
                "/slow" => {
                    tokio::time::sleep(Duration::from_millis(600)).await;
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                        .await;
                }
                _ => {}
            }
        })
        .await;
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let http = |path: &str| CheckKind::Http {
            path: path.into(),
            expect_status: 200,
            host: None,
            expect_body: None,
        };
        for path in ["/silent", "/garbage", "/huge", "/reset", "/slow"] {
            let started = Instant::now();
            let r = check_once(lo, 1, &spec(http(path), port)).await;
            assert!(!r.ok, "{path} passed: {}", r.message);
            assert!(!r.message.is_empty(), "{path}: no reason given");
            assert!(
                started.elapsed() < Duration::from_millis(1500),
                "{path} took {:?}",
                started.elapsed()
            );
        }
    }

    /// Closes `s` with a RST (SO_LINGER 0) rather than a FIN.
    fn socket2_linger_zero(s: tokio::net::TcpStream) -> std::net::TcpStream {
        let std = s.into_std().unwrap();
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt on a socket we own, with a linger struct of the right size.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&std),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                &linger as *const libc::linger as *const libc::c_void,
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
        }
        std
    }
}
