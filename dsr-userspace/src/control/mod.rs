//! The control socket: a Unix stream socket (mode 0600, root only) carrying one JSON request
//! and one JSON response per line. The daemon serves it; the `dsr` CLI is its client.
//! `status` builds what the daemon reports (the one builder, daemon up or down), `render`
//! prints it, `metrics` serves it to Prometheus.

pub mod explain;
pub mod metrics;
pub mod planning;
pub mod render;
pub mod status;
pub mod trace;

pub use status::{BackendStatus, DaemonState, HealthState, Status, VipStatus};

use std::{
    net::IpAddr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};

use crate::spec::model::{BackendSpec, VipSpec};

/// Largest request accepted, in bytes (a VIP with many backends fits easily).
pub const MAX_REQUEST: usize = 1 << 20;
/// A client has this long to send its request line, and to take the answer: a connection
/// that never finishes must not hold a task and a file descriptor forever.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more are answered "busy" at once (a flood of clients must
/// not starve the daemon of file descriptors).
pub const MAX_CONNECTIONS: usize = 64;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status,
    /// `inherit_check`: use the VIP's default check (a sorry server gets none).
    BackendAdd {
        vip: String,
        backend: BackendSpec,
        inherit_check: bool,
    },
    BackendRemove {
        vip: String,
        address: IpAddr,
    },
    BackendWeight {
        vip: String,
        address: IpAddr,
        weight: u32,
    },
    BackendDrain {
        vip: String,
        address: IpAddr,
    },
    BackendEnable {
        vip: String,
        address: IpAddr,
    },
    VipAdd {
        vip: VipSpec,
    },
    VipRemove {
        vip: String,
    },
    VipDrain {
        vip: String,
    },
    VipUndrain {
        vip: String,
    },
    /// Tracked flows, at most `limit`, of one VIP or all.
    Flows {
        vip: Option<String>,
        limit: usize,
    },
    /// What a config file (`config`) or a change (`change`, one of the VIP/backend requests)
    /// would do, without doing it.
    Plan {
        config: Option<PathBuf>,
        change: Option<Box<Request>>,
    },
    /// Which backend a flow gets, and why.
    Explain {
        flow: explain::FlowQuery,
    },
    /// Live per-frame decisions (`dsr trace`): answered with a stream of events, then a
    /// summary (see `trace`).
    Trace {
        query: trace::TraceQuery,
    },
    /// keepalived notified a VRRP state (recorded by `dsr vrrp-notify`): act on it now.
    VrrpNotified,
    /// Re-read the config file (as SIGHUP does).
    Reload,
    /// Drop every runtime change: back to the config.
    Reset,
    /// Stop the daemon; with `clean`, also remove the pinned data path.
    Stop {
        clean: bool,
    },
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explained: Option<explain::Explained>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flows: Option<Vec<status::FlowStatus>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<planning::PlanReport>,
    /// A trace request as the daemon resolved it (between the daemon and the socket task;
    /// the client sees the events instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<trace::TraceGrant>,
    /// One frame of a trace stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<Box<trace::TraceEvent>>,
}

impl Response {
    pub fn ok(message: impl Into<String>) -> Self {
        Response {
            ok: true,
            message: message.into(),
            ..Response::default()
        }
    }
    pub fn error(message: impl Into<String>) -> Self {
        Response {
            ok: false,
            message: message.into(),
            ..Response::default()
        }
    }
}

/// A request from a client with the channel for its answer.
pub type Call = (Request, oneshot::Sender<Response>);

/// Serves the socket at `path` until the daemon goes away: each request is parsed, handed to
/// the daemon loop, and answered. Malformed or unauthorised requests are answered with an
/// error here and never reach the daemon.
pub async fn serve(
    path: &Path,
    group: Option<u32>,
    calls: mpsc::Sender<Call>,
    tracer: Option<trace::Tracer>,
) -> Result<tokio::task::JoinHandle<()>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            bail!(
                "another dsr daemon answers on {} (same instance name?)",
                path.display()
            );
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    match group {
        // Root and the operators' group.
        Some(gid) => {
            std::os::unix::fs::chown(path, None, Some(gid))
                .with_context(|| format!("giving {} to group {gid}", path.display()))?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
        }
        None => std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?,
    }
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of file descriptors, say: do not spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                tokio::spawn(async move {
                    let _ = answer(
                        stream,
                        &Response::error("busy: too many connections; retry"),
                    )
                    .await;
                });
                continue;
            };
            let calls = calls.clone();
            let tracer = tracer.clone();
            tokio::spawn(async move {
                let _ = handle(stream, group, calls, tracer).await;
                drop(permit);
            });
        }
    }))
}

async fn handle(
    stream: UnixStream,
    group: Option<u32>,
    calls: mpsc::Sender<Call>,
    tracer: Option<trace::Tracer>,
) -> Result<()> {
    let authorised = stream
        .peer_cred()
        .map(|c| c.uid() == 0 || group.is_some_and(|g| in_group(&c, g)))
        .unwrap_or(false);
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read).take(MAX_REQUEST as u64 + 1);
    let mut line = String::new();
    let n = match tokio::time::timeout(IO_TIMEOUT, reader.read_line(&mut line)).await {
        Ok(n) => n,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no complete request line within {IO_TIMEOUT:?}"),
        )),
    };
    let response = match n {
        _ if !authorised => Response::error(
            "unauthorised: the control socket is for root and the control_group only",
        ),
        Err(e) => Response::error(format!("malformed request: {e}")),
        Ok(n) if n > MAX_REQUEST => {
            Response::error(format!("request larger than {MAX_REQUEST} bytes"))
        }
        Ok(_) => match parse_request(line.trim()) {
            Err(e) => Response::error(format!("malformed request: {e}")),
            Ok(Request::Trace { query }) => match tracer {
                None => {
                    Response::error("this daemon cannot trace (its data path has no trace ring)")
                }
                Some(tracer) => {
                    let (tx, rx) = oneshot::channel();
                    let request = Request::Trace {
                        query: query.clone(),
                    };
                    if calls.send((request, tx)).await.is_err() {
                        Response::error("the daemon is shutting down")
                    } else {
                        match rx.await {
                            Ok(Response {
                                ok: true,
                                trace: Some(grant),
                                ..
                            }) => {
                                return trace::stream(&tracer, grant, &query, reader, write).await;
                            }
                            Ok(refused) => refused,
                            Err(_) => Response::error("the daemon dropped the request"),
                        }
                    }
                }
            },
            Ok(request) => {
                let (tx, rx) = oneshot::channel();
                if calls.send((request, tx)).await.is_err() {
                    Response::error("the daemon is shutting down")
                } else {
                    rx.await
                        .unwrap_or_else(|_| Response::error("the daemon dropped the request"))
                }
            }
        },
    };
    let mut out = serde_json::to_vec(&response)?;
    out.push(b'\n');
    tokio::time::timeout(IO_TIMEOUT, write.write_all(&out))
        .await
        .context("the client did not take the answer")??;
    Ok(())
}

/// Whether the peer is in group `gid`: its own group, or one of its supplementary groups
/// (which SO_PEERCRED does not carry: read from its /proc entry).
fn in_group(c: &tokio::net::unix::UCred, gid: u32) -> bool {
    if c.gid() == gid {
        return true;
    }
    let Some(pid) = c.pid() else {
        return false;
    };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Groups:"))
                .map(|g| g.split_whitespace().any(|x| x.parse() == Ok(gid)))
        })
        .unwrap_or(false)
}

/// Answers a connection without reading it.
async fn answer(mut stream: UnixStream, response: &Response) -> Result<()> {
    let mut out = serde_json::to_vec(response)?;
    out.push(b'\n');
    tokio::time::timeout(IO_TIMEOUT, stream.write_all(&out))
        .await
        .context("the client did not take the answer")??;
    Ok(())
}

/// Parses a request strictly: besides serde's checks, a field the request type does not have
/// is an error (serde ignores extra fields of unit variants in tagged enums).
pub fn parse_request(text: &str) -> Result<Request, String> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let request: Request = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
    let known = serde_json::to_value(&request).map_err(|e| e.to_string())?;
    if let (Some(given), Some(known)) = (value.as_object(), known.as_object()) {
        let unknown: Vec<&String> = given.keys().filter(|k| !known.contains_key(*k)).collect();
        if !unknown.is_empty() {
            return Err(format!(
                "unknown field(s) {unknown:?} for command {:?}",
                given["cmd"]
            ));
        }
    }
    Ok(request)
}

/// Sends one request to the daemon at `path` and returns its answer.
pub async fn call(path: &Path, request: &Request) -> Result<Response> {
    let stream = UnixStream::connect(path)
        .await
        .with_context(|| format!("connecting to {}", path.display()))?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    // A daemon may answer before reading ("busy") and close: its answer still counts.
    let written = write.write_all(&line).await;
    let mut answer = String::new();
    let read = tokio::time::timeout(
        Duration::from_secs(30),
        BufReader::new(read).read_line(&mut answer),
    )
    .await
    .context("no answer from the daemon within 30 s")?;
    if answer.trim().is_empty() {
        written?;
        read?;
    }
    serde_json::from_str(answer.trim()).context("malformed answer from the daemon")
}

/// Whether a daemon answers on `path`.
pub async fn daemon_running(path: &Path) -> bool {
    UnixStream::connect(path).await.is_ok()
}

/// Like [`daemon_running`], but a socket we may not use is an error (with the remedy), not
/// "no daemon": a caller without root must not be told that a running daemon is down.
pub async fn probe(path: &Path) -> Result<bool> {
    match UnixStream::connect(path).await {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => bail!(
            "permission denied on the control socket {}: the dsr daemon is only reachable as \
             root (run the command with sudo)",
            path.display()
        ),
        Err(_) => Ok(false),
    }
}
