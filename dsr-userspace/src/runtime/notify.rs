//! Notify hooks, as keepalived's `notify`: a VIP's command is run as `CMD VIP NAME STATE` at
//! each change of its state (USABLE / UNUSABLE: it has a backend for new flows or not;
//! ANNOUNCED / WITHDRAWN: its announcement, see `announce`), with the details in its
//! environment. This is how a cloud VIP is moved where neither VRRP nor BGP exists (a route's
//! next hop switched, a secondary IP reassigned; examples in dist/notify/).
//!
//! Runs are serialized per VIP and kept in order, each killed (its whole process group)
//! after the timeout. They run on tasks of their own: the daemon only queues the event, so
//! health checks, map writes and the control socket never wait for a script.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use serde::{Deserialize, Serialize};
use tokio::{io::AsyncReadExt, process::Command, sync::mpsc};

use crate::spec::model::VipAddr;

/// Events queued for one VIP at most (a flapping VIP beyond this loses events, counted).
const QUEUE: usize = 64;
/// Output of one run kept for the log.
const MAX_OUTPUT: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum State {
    Usable,
    Unusable,
    Announced,
    Withdrawn,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Usable => "USABLE",
            State::Unusable => "UNUSABLE",
            State::Announced => "ANNOUNCED",
            State::Withdrawn => "WITHDRAWN",
        }
    }
}

/// One change of a VIP's state, for its command.
#[derive(Clone, Debug)]
pub struct Event {
    pub vip: String,
    pub addr: VipAddr,
    pub command: String,
    pub state: State,
    pub usable_backends: usize,
    pub at: SystemTime,
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LastRun {
    pub state: State,
    pub started_unix_ms: u64,
    pub duration_ms: u64,
    /// The exit status; `None` when it was killed or did not start.
    pub exit_code: Option<i32>,
    /// Exited 0.
    pub ok: bool,
    /// "exit 0", "exit 3", "killed after 10s (timeout)", "could not start: ...".
    pub outcome: String,
}

/// A VIP's hook as status shows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HookStatus {
    pub command: String,
    /// Events waiting (the one running included).
    pub pending: usize,
    pub runs: u64,
    pub failures: u64,
    /// Events dropped because the queue was full.
    pub dropped: u64,
    pub last: Option<LastRun>,
}

struct Queue {
    events: mpsc::Sender<Event>,
}

/// The hooks of every VIP: one queue and one runner task per VIP.
pub struct Notifier {
    instance: String,
    timeout: Duration,
    queues: HashMap<VipAddr, Queue>,
    status: Arc<Mutex<HashMap<VipAddr, HookStatus>>>,
}

impl Notifier {
    pub fn new(instance: &str, timeout: Duration) -> Self {
        Notifier {
            instance: instance.to_owned(),
            timeout,
            queues: HashMap::new(),
            status: Arc::default(),
        }
    }

    /// Queues `event` for its VIP's runner (started on first use). Never waits.
    pub fn send(&mut self, event: Event) {
        let addr = event.addr;
        let queue = self.queues.entry(addr).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(runner(
                rx,
                self.status.clone(),
                self.instance.clone(),
                self.timeout,
            ));
            Queue { events: tx }
        });
        let mut status = self.status.lock().expect("not poisoned");
        let entry = status.entry(addr).or_default();
        entry.command = event.command.clone();
        let (vip, state) = (event.vip.clone(), event.state);
        match queue.events.try_send(event) {
            Ok(()) => entry.pending += 1,
            Err(_) => {
                entry.dropped += 1;
                log::warn!(
                    "VIP {vip}: notify {} dropped: {QUEUE} runs are already waiting",
                    state.name()
                );
            }
        }
    }

    /// Forgets the hooks of VIPs that are gone (a runner ends once its queue is done).
    pub fn retain(&mut self, keep: impl Fn(&VipAddr) -> bool) {
        self.queues.retain(|a, _| keep(a));
        self.status
            .lock()
            .expect("not poisoned")
            .retain(|a, s| keep(a) || s.pending > 0);
    }

    /// What status shows, per VIP.
    pub fn status(&self) -> HashMap<VipAddr, HookStatus> {
        self.status.lock().expect("not poisoned").clone()
    }

    /// Waits until no run is pending, or `deadline` passes (at `dsr stop`, so that the
    /// WITHDRAWN hooks run before the daemon exits).
    pub async fn settle(&self, deadline: Duration) {
        let until = Instant::now() + deadline;
        while Instant::now() < until {
            let pending: usize = self
                .status
                .lock()
                .expect("not poisoned")
                .values()
                .map(|s| s.pending)
                .sum();
            if pending == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn runner(
    mut events: mpsc::Receiver<Event>,
    status: Arc<Mutex<HashMap<VipAddr, HookStatus>>>,
    instance: String,
    timeout: Duration,
) {
    while let Some(event) = events.recv().await {
        let last = run(&event, &instance, timeout).await;
        let mut status = status.lock().expect("not poisoned");
        let entry = status.entry(event.addr).or_default();
        entry.pending = entry.pending.saturating_sub(1);
        entry.runs += 1;
        entry.failures += !last.ok as u64;
        entry.last = Some(last);
    }
}

/// Reads a pipe to its end, keeping the first MAX_OUTPUT bytes (a chatty command must not
/// block on a full pipe).
async fn read_bounded(r: &mut (impl tokio::io::AsyncRead + Unpin)) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 1024];
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let room = MAX_OUTPUT.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
    kept
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// Runs one event's command: `sh -c 'COMMAND "$@"' dsr-notify VIP NAME STATE`, so the
/// command may carry its own arguments.
async fn run(event: &Event, instance: &str, timeout: Duration) -> LastRun {
    let started = Instant::now();
    let started_at = SystemTime::now();
    let address: IpAddr = event.addr.address;
    let at = event
        .at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(format!("{} \"$@\"", event.command))
        .arg("dsr-notify")
        .args(["VIP", &event.vip, event.state.name()])
        .env("DSR_INSTANCE", instance)
        .env("DSR_VIP", &event.vip)
        .env("DSR_VIP_ADDRESS", address.to_string())
        .env("DSR_VIP_PORT", event.addr.port.to_string())
        .env("DSR_VIP_PROTOCOL", event.addr.protocol.to_string())
        .env("DSR_STATE", event.state.name())
        .env("DSR_USABLE_BACKENDS", event.usable_backends.to_string())
        .env(
            "DSR_EVENT_TIME",
            format!("{}.{:03}", at.as_secs(), at.subsec_millis()),
        )
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        // Its own process group, so that a timeout kills whatever it started too.
        .process_group(0)
        .kill_on_drop(true);
    let done = |exit_code: Option<i32>, outcome: String| LastRun {
        state: event.state,
        started_unix_ms: unix_ms(started_at),
        duration_ms: started.elapsed().as_millis() as u64,
        exit_code,
        ok: exit_code == Some(0),
        outcome,
    };
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let last = done(None, format!("could not start: {e}"));
            log::warn!(
                "VIP {}: notify {}: {}",
                event.vip,
                event.state.name(),
                last.outcome
            );
            return last;
        }
    };
    let pgid = child.id();
    // Both pipes read to the end (bounded), with the exit, under the one timeout.
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let collect = async {
        let (a, b) = tokio::join!(read_bounded(&mut out), read_bounded(&mut err));
        let status = child.wait().await;
        (a, b, status)
    };
    let last = match tokio::time::timeout(timeout, collect).await {
        Ok((a, b, status)) => {
            for line in String::from_utf8_lossy(&a)
                .lines()
                .chain(String::from_utf8_lossy(&b).lines())
            {
                log::info!("VIP {}: notify {}: {line}", event.vip, event.state.name());
            }
            match status {
                Ok(s) => done(
                    s.code(),
                    match s.code() {
                        Some(c) => format!("exit {c}"),
                        None => "killed by a signal".into(),
                    },
                ),
                Err(e) => done(None, format!("could not wait for it: {e}")),
            }
        }
        Err(_) => {
            if let Some(pgid) = pgid {
                // SAFETY: a signal to the process group the command leads.
                unsafe { libc::kill(-(pgid as i32), libc::SIGKILL) };
            }
            done(None, format!("killed after {timeout:?} (timeout)"))
        }
    };
    let level = if last.ok {
        log::Level::Info
    } else {
        log::Level::Warn
    };
    log::log!(
        level,
        "VIP {}: notify {} ran {} ms: {}",
        event.vip,
        event.state.name(),
        last.duration_ms,
        last.outcome
    );
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(command: &str, state: State) -> Event {
        Event {
            vip: "web".into(),
            addr: "192.0.2.10:80/tcp".parse().unwrap(),
            command: command.into(),
            state,
            usable_backends: 2,
            at: SystemTime::now(),
        }
    }

    #[tokio::test]
    async fn runs_in_order_with_the_environment_and_kills_at_the_timeout() {
        let dir = std::env::temp_dir().join(format!("dsr-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("log");
        let _ = std::fs::remove_file(&log);
        let mut n = Notifier::new("lb1", Duration::from_millis(300));
        // Each run sleeps a little, so that a runner that did not serialize would interleave.
        let record = format!(
            "sleep 0.05; echo \"$DSR_INSTANCE $DSR_VIP $DSR_VIP_ADDRESS $DSR_VIP_PORT \
             $DSR_USABLE_BACKENDS $*\" >> {}; true",
            log.display()
        );
        let started = Instant::now();
        for state in [State::Usable, State::Announced, State::Withdrawn] {
            n.send(event(&record, state));
        }
        // Queuing never waits for a run.
        assert!(started.elapsed() < Duration::from_millis(50));
        n.settle(Duration::from_secs(5)).await;
        let lines = std::fs::read_to_string(&log).unwrap();
        assert_eq!(
            lines,
            "lb1 web 192.0.2.10 80 2 VIP web USABLE\nlb1 web 192.0.2.10 80 2 VIP web ANNOUNCED\n\
             lb1 web 192.0.2.10 80 2 VIP web WITHDRAWN\n"
        );
        let st = &n.status()[&"192.0.2.10:80/tcp".parse().unwrap()];
        assert_eq!((st.runs, st.failures, st.pending), (3, 0, 0));
        assert_eq!(st.last.as_ref().unwrap().state, State::Withdrawn);

        // A hung command (and what it started) is killed at the timeout; a failing one is
        // counted with its status.
        let child_pid = dir.join("pid");
        n.send(event(
            &format!("sleep 30 & echo $! > {}; wait", child_pid.display()),
            State::Unusable,
        ));
        n.send(event("exit 3", State::Usable));
        n.settle(Duration::from_secs(5)).await;
        let st = &n.status()[&"192.0.2.10:80/tcp".parse().unwrap()];
        assert_eq!((st.runs, st.failures), (5, 2));
        let last = st.last.as_ref().unwrap();
        assert_eq!((last.exit_code, last.outcome.as_str()), (Some(3), "exit 3"));
        let pid: i32 = std::fs::read_to_string(&child_pid)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        // SAFETY: signal 0 only asks whether the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z ");
        assert!(!alive, "the hung command's child survived the timeout");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
