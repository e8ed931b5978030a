//! `dsr trace`: live per-frame decisions of the data path, streamed to operators over the
//! control socket. One reader drains the kernel's TRACE ring and fans records out to the
//! sessions; the kernel's switch and filter follow the sessions there are (off when none).
//!
//! Wire: after a `trace` request the daemon writes one [`super::Response`] per line, each
//! with an `event`, then a last one without (the summary, or the error that ended it).

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result};
use dsr_common::{
    Reason, TRACE_F_BACKEND, TRACE_F_FLOW, TRACE_F_FLOW_HIT, TRACE_F_REMEMBERED, TRACE_F_SLOT,
    TRACE_F_VIP, TRACE_FILTER_CLIENT, TRACE_FILTER_VIP, TraceFilter, TraceRecord, addr_words,
    words_addr,
};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{
        AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
        unix::AsyncFd,
    },
    net::UnixStream,
    sync::{broadcast, watch},
};

use super::{Request, Response};
use crate::{
    datapath::trace::{TraceRing, TraceSwitch},
    spec::model::MacAddr,
};

/// Most frames one session may ask for.
pub const MAX_COUNT: u64 = 1_000_000;
/// Longest a session may run.
pub const MAX_DURATION: Duration = Duration::from_secs(3600);
/// Sessions at once (each holds a control-socket connection).
pub const MAX_SESSIONS: usize = 8;
/// Records held for a slow session before it loses some (counted and reported).
const FANOUT: usize = 4096;
/// Records read from the ring per wake-up of the reader.
const READ_BATCH: usize = 1024;

/// What a `dsr trace` asks for: frames of one VIP and/or one client, at most `count` of them,
/// for at most `duration_ms`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceQuery {
    pub vip: Option<String>,
    pub client: Option<IpAddr>,
    pub count: u64,
    pub duration_ms: u64,
}

impl TraceQuery {
    /// The bounds every query must keep, whoever sent it.
    pub fn validate(&self) -> Result<(), String> {
        if self.count == 0 || self.count > MAX_COUNT {
            return Err(format!(
                "trace count {} is out of range: 1 to {MAX_COUNT}",
                self.count
            ));
        }
        if self.duration_ms == 0 || self.duration_ms > MAX_DURATION.as_millis() as u64 {
            return Err(format!(
                "trace duration {} ms is out of range: 1 ms to {} s",
                self.duration_ms,
                MAX_DURATION.as_secs()
            ));
        }
        Ok(())
    }
}

/// A query as the daemon resolved it (the VIP's data-path id).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceGrant {
    pub vip: Option<u32>,
    pub client: Option<IpAddr>,
}

impl TraceGrant {
    pub fn filter(&self) -> TraceFilter {
        let mut f = TraceFilter::default();
        if let Some(id) = self.vip {
            f.flags |= TRACE_FILTER_VIP;
            f.vip = id;
        }
        if let Some(client) = self.client {
            f.flags |= TRACE_FILTER_CLIENT;
            f.client = addr_words(client);
        }
        f
    }
}

/// One frame's decision, as an operator reads it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceEvent {
    /// Wall-clock time, nanoseconds since the Unix epoch.
    pub time_ns: u64,
    pub ifindex: u32,
    /// Why (a reason name, as in `dsr stats`).
    pub reason: String,
    /// forward, pass or drop.
    pub verdict: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<SocketAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<SocketAddr>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub vlan: u16,
    /// TCP flags, tcpdump style (`S`, `S.`, `.`, `F.`, `R`); none for UDP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_flags: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_id: Option<u32>,
    /// `flow_table` (an established flow) or `table` (the VIP's table, at `slot`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chosen_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u32>,
    /// This frame created or renewed the flow's entry in the flow table.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub remembered: bool,
    pub len: u32,
    /// The destination MAC the frame arrived with.
    pub dst_mac: MacAddr,
}

fn is_zero(v: &u16) -> bool {
    *v == 0
}

pub use crate::runtime::state::Names;

/// tcpdump's notation for the flags that matter here.
fn tcp_flags(f: u8) -> String {
    use dsr_common::parse::{TCP_FIN, TCP_RST, TCP_SYN};
    let mut s = String::new();
    for (bit, c) in [(TCP_SYN, 'S'), (TCP_FIN, 'F'), (TCP_RST, 'R')] {
        if f & bit != 0 {
            s.push(c);
        }
    }
    if f & 0x10 != 0 {
        s.push('.');
    }
    if s.is_empty() { "none".into() } else { s }
}

/// CLOCK_REALTIME minus CLOCK_MONOTONIC (the clock records carry), in nanoseconds.
fn realtime_offset_ns() -> i128 {
    use crate::datapath::flowcount::clock_ns;
    clock_ns(libc::CLOCK_REALTIME) as i128 - clock_ns(libc::CLOCK_MONOTONIC) as i128
}

/// A kernel record as an event, ids named.
pub fn decode(r: &TraceRecord, names: &Names, realtime_offset: i128) -> TraceEvent {
    let reason = Reason::ALL
        .get(r.reason as usize)
        .copied()
        .map_or_else(|| format!("reason {}", r.reason), |x| x.name().to_string());
    let verdict = match r.action {
        1 => "drop",
        2 => "pass",
        3 | 4 => "forward",
        _ => "aborted",
    };
    let flow = r.flags & TRACE_F_FLOW != 0;
    let proto = r.flow.proto as u8;
    let port = |p: u32| u16::from_be(p as u16);
    let endpoint = |words: &[u32; 4], p: u32| SocketAddr::new(words_addr(words), port(p));
    let has = |f: u32| r.flags & f != 0;
    TraceEvent {
        time_ns: (r.time_ns as i128 + realtime_offset).max(0) as u64,
        ifindex: r.ifindex,
        reason,
        verdict: verdict.into(),
        protocol: flow.then(|| match proto {
            6 => "tcp".to_string(),
            17 => "udp".to_string(),
            other => format!("proto {other}"),
        }),
        client: flow.then(|| endpoint(&r.flow.src, r.flow.ports & 0xffff)),
        destination: flow.then(|| endpoint(&r.flow.dst, r.flow.ports >> 16)),
        vlan: r.vlan,
        tcp_flags: (flow && proto == 6).then(|| tcp_flags(r.tcp_flags)),
        vip: has(TRACE_F_VIP).then(|| {
            names
                .vips
                .get(&r.vip)
                .cloned()
                .unwrap_or_else(|| format!("id {}", r.vip))
        }),
        backend: has(TRACE_F_BACKEND)
            .then(|| names.backends.get(&r.backend).copied())
            .flatten(),
        backend_id: has(TRACE_F_BACKEND).then_some(r.backend),
        chosen_by: if has(TRACE_F_FLOW_HIT) {
            Some("flow_table".into())
        } else if has(TRACE_F_SLOT) {
            Some("table".into())
        } else {
            None
        },
        slot: has(TRACE_F_SLOT).then_some(r.slot),
        remembered: has(TRACE_F_REMEMBERED),
        len: r.len,
        dst_mac: MacAddr(r.dst_mac),
    }
}

/// One frame, for the sessions: the record (to filter by) and its event.
type Traced = Arc<(TraceRecord, TraceEvent)>;

struct Inner {
    /// Set when the daemon stops: sessions end with their summary.
    stopping: watch::Sender<bool>,
    switch: Mutex<TraceSwitch>,
    sessions: Mutex<BTreeMap<u64, TraceFilter>>,
    next_id: AtomicU64,
    frames: broadcast::Sender<Traced>,
}

/// The trace server: cheap to clone, one per daemon.
#[derive(Clone)]
pub struct Tracer {
    inner: Arc<Inner>,
}

impl Tracer {
    /// Starts the reader of the ring (a task for as long as the runtime runs). Tracing is
    /// off until a session starts.
    pub fn start(
        mut switch: TraceSwitch,
        ring: TraceRing,
        names: watch::Receiver<Arc<Names>>,
    ) -> Result<Self> {
        switch.set(None)?;
        let (frames, _) = broadcast::channel(FANOUT);
        let inner = Arc::new(Inner {
            stopping: watch::Sender::new(false),
            switch: Mutex::new(switch),
            sessions: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(0),
            frames: frames.clone(),
        });
        // SAFETY: the ring's fd is its map's, owned by the ring for as long as the AsyncFd
        // holds it, and as_raw_fd always returns that one.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| anyhow::anyhow!("polling the TRACE ring: {e}"))?;
        tokio::spawn(read_ring(ring, frames, names));
        Ok(Tracer { inner })
    }

    /// Ends every session (with its summary): the daemon is stopping.
    pub fn stop(&self) {
        self.inner.stopping.send_replace(true);
    }

    /// A new session for `grant`'s frames; tracing stays on while it lives.
    pub fn session(&self, grant: TraceGrant) -> Result<Session, String> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let filter = grant.filter();
        {
            let mut sessions = self.inner.sessions.lock().expect("not poisoned");
            if sessions.len() >= MAX_SESSIONS {
                return Err(format!(
                    "busy: {MAX_SESSIONS} trace sessions are running; retry later"
                ));
            }
            sessions.insert(id, filter);
        }
        // Subscribed before the switch goes on, so that no frame of ours is missed.
        let frames = self.inner.frames.subscribe();
        if let Err(e) = self.inner.apply() {
            self.inner
                .sessions
                .lock()
                .expect("not poisoned")
                .remove(&id);
            return Err(format!("cannot switch tracing on: {e:#}"));
        }
        Ok(Session {
            id,
            filter,
            frames,
            stopping: self.inner.stopping.subscribe(),
            inner: self.inner.clone(),
        })
    }
}

impl Inner {
    /// Sets the kernel's switch and filter for the sessions there are: one filter if they
    /// all want the same frames, every frame otherwise (each session filters its own).
    fn apply(&self) -> Result<()> {
        let sessions = self.sessions.lock().expect("not poisoned");
        let mut filters = sessions.values();
        let kernel = filters.next().map(|first| {
            if filters.all(|f| f == first) {
                *first
            } else {
                TraceFilter::default()
            }
        });
        self.switch.lock().expect("not poisoned").set(kernel)
    }
}

/// A running `dsr trace`: frames arrive on [`Session::next`]. Dropping it ends it.
pub struct Session {
    id: u64,
    filter: TraceFilter,
    frames: broadcast::Receiver<Traced>,
    stopping: watch::Receiver<bool>,
    inner: Arc<Inner>,
}

/// What a session got next.
pub enum Next {
    Frame(Box<TraceEvent>),
    /// Frames this session was too slow to take.
    Lost(u64),
    /// The reader stopped (the daemon is going away).
    Closed,
}

impl Session {
    pub async fn next(&mut self) -> Next {
        loop {
            if *self.stopping.borrow() {
                return Next::Closed;
            }
            let frame = tokio::select! {
                frame = self.frames.recv() => frame,
                _ = self.stopping.changed() => return Next::Closed,
            };
            match frame {
                Ok(traced) if self.filter.admits(&traced.0) => {
                    return Next::Frame(Box::new(traced.1.clone()));
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => return Next::Lost(n),
                Err(broadcast::error::RecvError::Closed) => return Next::Closed,
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.inner
            .sessions
            .lock()
            .expect("not poisoned")
            .remove(&self.id);
        if let Err(e) = self.inner.apply() {
            log::warn!("trace: setting the data path's trace switch: {e:#}");
        }
    }
}

/// Drains the ring whenever it has records; decodes them only while someone listens.
async fn read_ring(
    mut ring: AsyncFd<TraceRing>,
    frames: broadcast::Sender<Traced>,
    names: watch::Receiver<Arc<Names>>,
) {
    loop {
        let Ok(mut ready) = ring.readable_mut().await else {
            log::warn!("trace: the TRACE ring cannot be polled; dsr trace is unavailable");
            return;
        };
        let offset = realtime_offset_ns();
        let names = names.borrow().clone();
        // A bounded batch per wake-up, then the worker is given back: a busy ring must not
        // keep other tasks (checks, sessions) from running.
        let mut more = false;
        for _ in 0..READ_BATCH {
            more = true;
            match ready.get_inner_mut().read() {
                Ok(Some(record)) => {
                    if frames.receiver_count() > 0 {
                        let event = decode(&record, &names, offset);
                        let _ = frames.send(Arc::new((record, event)));
                    }
                }
                Ok(None) => {
                    more = false;
                    break;
                }
                Err(e) => {
                    log::warn!("trace: {e:#}");
                    more = false;
                    break;
                }
            }
        }
        if more {
            // Still readable: no clear, just a turn for the others.
            drop(ready);
            tokio::task::yield_now().await;
        } else {
            ready.clear_ready();
        }
    }
}

/// Streams a session's frames to a client until its count or time is reached, the client
/// goes away, or the daemon stops; then the summary line.
pub async fn stream(
    tracer: &Tracer,
    grant: TraceGrant,
    query: &TraceQuery,
    mut from_client: impl AsyncRead + Unpin,
    mut to_client: impl AsyncWrite + Unpin,
) -> Result<()> {
    let mut session = match tracer.session(grant) {
        Ok(s) => s,
        Err(e) => return send(&mut to_client, &Response::error(e)).await,
    };
    let started = tokio::time::Instant::now();
    let deadline = started + Duration::from_millis(query.duration_ms);
    let (mut frames, mut lost) = (0u64, 0u64);
    let mut ignored = [0u8; 256];
    let ended = loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break "time is up",
            read = from_client.read(&mut ignored) => {
                // The client went away (Ctrl-C): nobody to tell.
                if matches!(read, Ok(0) | Err(_)) {
                    return Ok(());
                }
            }
            next = session.next() => match next {
                Next::Frame(event) => {
                    let line = Response {
                        ok: true,
                        event: Some(event),
                        ..Response::default()
                    };
                    if send(&mut to_client, &line).await.is_err() {
                        return Ok(());
                    }
                    frames += 1;
                    if frames >= query.count {
                        break "count reached";
                    }
                }
                Next::Lost(n) => lost += n,
                Next::Closed => break "the daemon is stopping",
            }
        }
    };
    drop(session);
    let mut summary = format!(
        "{frames} frame{} traced in {:.1} s ({ended})",
        if frames == 1 { "" } else { "s" },
        started.elapsed().as_secs_f64()
    );
    if lost > 0 {
        summary += &format!("; {lost} not shown: this client read too slowly");
    }
    send(&mut to_client, &Response::ok(summary)).await
}

async fn send(to: &mut (impl AsyncWrite + Unpin), response: &Response) -> Result<()> {
    let mut out = serde_json::to_vec(response)?;
    out.push(b'\n');
    tokio::time::timeout(super::IO_TIMEOUT, to.write_all(&out))
        .await
        .context("the client did not take the trace")??;
    Ok(())
}

/// The client side: sends `query` to the daemon at `path`, hands each event to `on_event`,
/// and returns the last line (the summary, or the refusal).
pub async fn call(
    path: &Path,
    query: &TraceQuery,
    mut on_event: impl FnMut(&TraceEvent),
) -> Result<Response> {
    let stream = UnixStream::connect(path)
        .await
        .with_context(|| format!("connecting to {}", path.display()))?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(&Request::Trace {
        query: query.clone(),
    })?;
    line.push(b'\n');
    write.write_all(&line).await?;
    // Kept open: closing it would tell the daemon that we went away.
    let _write = write;
    let deadline = tokio::time::Instant::now()
        + Duration::from_millis(query.duration_ms)
        + Duration::from_secs(30);
    let mut lines = BufReader::new(read).lines();
    loop {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .context("the trace did not end in time")??
            .context("the daemon closed the connection before the trace ended")?;
        let response: Response =
            serde_json::from_str(&line).context("malformed answer from the daemon")?;
        match &response.event {
            Some(event) => on_event(event),
            None => return Ok(response),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dsr_common::FlowKey;

    #[test]
    fn records_decode_to_what_an_operator_reads() {
        let names = Names {
            vips: [(3, "web".to_string())].into(),
            backends: [(7, "10.0.0.7".parse().unwrap())].into(),
            ..Names::default()
        };
        let record = TraceRecord {
            time_ns: 5_000,
            flow: FlowKey::new(
                "192.0.2.1".parse().unwrap(),
                40000,
                "198.51.100.10".parse().unwrap(),
                80,
                6,
            ),
            flags: TRACE_F_FLOW | TRACE_F_VIP | TRACE_F_BACKEND | TRACE_F_FLOW_HIT,
            reason: Reason::Forwarded as u32,
            action: 3,
            vip: 3,
            backend: 7,
            len: 60,
            tcp_flags: 0x10 | dsr_common::parse::TCP_FIN,
            ..TraceRecord::default()
        };
        let e = decode(&record, &names, 1_000_000_000);
        assert_eq!(e.time_ns, 1_000_005_000);
        assert_eq!(
            (e.verdict.as_str(), e.reason.as_str(), e.vip.as_deref()),
            ("forward", "forwarded", Some("web"))
        );
        assert_eq!(e.client, Some("192.0.2.1:40000".parse().unwrap()));
        assert_eq!(e.destination, Some("198.51.100.10:80".parse().unwrap()));
        assert_eq!(e.tcp_flags.as_deref(), Some("F."));
        assert_eq!(e.backend, Some("10.0.0.7".parse().unwrap()));
        assert_eq!((e.chosen_by.as_deref(), e.slot), (Some("flow_table"), None));
        let line = super::super::render::render_trace_event(&e);
        assert!(
            line.ends_with(
                "forward forwarded          tcp 192.0.2.1:40000 > 198.51.100.10:80 [F.] \
                 vip web -> 10.0.0.7 (flow table) 60 bytes"
            ),
            "{line}"
        );

        // A frame that was not parsed: its MAC is all there is; unknown ids are shown as ids.
        let bare = TraceRecord {
            flags: TRACE_F_VIP,
            reason: Reason::NotOurMac as u32,
            action: 2,
            vip: 9,
            dst_mac: [2, 0, 0, 0, 0, 9],
            ..TraceRecord::default()
        };
        let e = decode(&bare, &names, 0);
        assert_eq!((e.client, e.protocol.clone()), (None, None));
        assert_eq!(e.vip.as_deref(), Some("id 9"));
        let line = super::super::render::render_trace_event(&e);
        assert!(
            line.contains("pass    not_our_mac        to 02:00:00:00:00:09"),
            "{line}"
        );
    }
}
