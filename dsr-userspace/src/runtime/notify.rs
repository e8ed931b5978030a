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
    collections::{HashMap, VecDeque},
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use serde::{Deserialize, Serialize};
use tokio::{io::AsyncReadExt, process::Command, sync::Notify};

use crate::spec::model::VipAddr;

/// The command a VIP's hook runs: its own, else the top-level one; `""` is none.
pub fn command_of<'a>(own: Option<&'a str>, default: Option<&'a str>) -> Option<&'a str> {
    own.or(default).filter(|c| !c.is_empty())
}

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

/// One VIP's waiting events, and the wake-up of its runner.
#[derive(Default)]
struct Queue {
    events: Mutex<VecDeque<Event>>,
    wake: Notify,
    /// The VIP is gone: the runner ends once the queue is empty.
    closed: std::sync::atomic::AtomicBool,
}

/// The hooks of every VIP: one queue and one runner task per VIP.
pub struct Notifier {
    instance: String,
    timeout: Duration,
    queues: HashMap<VipAddr, Arc<Queue>>,
    status: Arc<Mutex<HashMap<VipAddr, HookStatus>>>,
    /// The last state of each kind sent per VIP, to tell a departing VIP's hook.
    last: HashMap<VipAddr, (Option<Event>, Option<Event>)>,
}

impl Notifier {
    pub fn new(instance: &str, timeout: Duration) -> Self {
        Notifier {
            instance: instance.to_owned(),
            timeout,
            queues: HashMap::new(),
            status: Arc::default(),
            last: HashMap::new(),
        }
    }

    /// Queues `event` for its VIP's runner (started on first use). Never waits. A full
    /// queue drops its oldest event, never the newest: the hook always ends on the VIP's
    /// current state.
    pub fn send(&mut self, event: Event) {
        let addr = event.addr;
        let slot = self.last.entry(addr).or_default();
        match event.state {
            State::Usable | State::Unusable => slot.0 = Some(event.clone()),
            State::Announced | State::Withdrawn => slot.1 = Some(event.clone()),
        }
        let queue = self.queues.entry(addr).or_insert_with(|| {
            let q = Arc::new(Queue::default());
            tokio::spawn(runner(
                q.clone(),
                self.status.clone(),
                self.instance.clone(),
                self.timeout,
            ));
            q
        });
        let mut status = self.status.lock().expect("not poisoned");
        let entry = status.entry(addr).or_default();
        entry.command = event.command.clone();
        let mut events = queue.events.lock().expect("not poisoned");
        if events.len() >= QUEUE {
            let old = events.pop_front().expect("a full queue");
            entry.dropped += 1;
            entry.pending -= 1;
            log::warn!(
                "VIP {}: notify {} dropped (superseded): {QUEUE} runs are already waiting",
                old.vip,
                old.state.name()
            );
        }
        events.push_back(event);
        entry.pending += 1;
        drop(events);
        queue.wake.notify_one();
    }

    /// Forgets the hooks of VIPs that are gone, after telling each one's hook that it is
    /// WITHDRAWN and UNUSABLE here, if it last said otherwise (a cloud VIP must not stay
    /// pointed at a node that no longer serves it). A runner ends once its queue is done.
    pub fn retain(&mut self, keep: impl Fn(&VipAddr) -> bool) {
        let gone: Vec<VipAddr> = self.last.keys().filter(|a| !keep(a)).copied().collect();
        for addr in gone {
            let (usable, announced) = self.last.remove(&addr).unwrap_or_default();
            let farewell = [
                announced
                    .filter(|e| e.state == State::Announced)
                    .map(|e| (e, State::Withdrawn)),
                usable
                    .filter(|e| e.state == State::Usable)
                    .map(|e| (e, State::Unusable)),
            ];
            for (e, state) in farewell.into_iter().flatten() {
                self.send(Event {
                    state,
                    usable_backends: 0,
                    at: SystemTime::now(),
                    ..e
                });
            }
            self.last.remove(&addr);
            if let Some(q) = self.queues.remove(&addr) {
                q.closed.store(true, std::sync::atomic::Ordering::Relaxed);
                q.wake.notify_one();
            }
        }
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
    queue: Arc<Queue>,
    status: Arc<Mutex<HashMap<VipAddr, HookStatus>>>,
    instance: String,
    timeout: Duration,
) {
    loop {
        let next = queue.events.lock().expect("not poisoned").pop_front();
        let Some(event) = next else {
            if queue.closed.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            queue.wake.notified().await;
            continue;
        };
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
async fn read_bounded(mut r: impl tokio::io::AsyncRead + Unpin) -> Vec<u8> {
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
        started_unix_ms: super::unix_ms(started_at),
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
    // Kills the command's process group if the run is abandoned before it ended (the
    // timeout, or the daemon going away mid-run).
    struct Group(Option<u32>);
    impl Drop for Group {
        fn drop(&mut self) {
            if let Some(pgid) = self.0 {
                // SAFETY: a signal to the process group the command leads.
                unsafe { libc::kill(-(pgid as i32), libc::SIGKILL) };
            }
        }
    }
    let mut group = Group(child.id());
    // The pipes are read beside the wait; once the command exits, what it left running
    // (holding them open) gets a moment, then no more.
    let out = tokio::spawn(read_bounded(child.stdout.take().expect("piped")));
    let err = tokio::spawn(read_bounded(child.stderr.take().expect("piped")));
    let collect = async {
        let status = child.wait().await;
        let grace = Duration::from_millis(200);
        let a = tokio::time::timeout(grace, out)
            .await
            .ok()
            .and_then(Result::ok);
        let b = tokio::time::timeout(grace, err)
            .await
            .ok()
            .and_then(Result::ok);
        (a.unwrap_or_default(), b.unwrap_or_default(), status)
    };
    let last = match tokio::time::timeout(timeout, collect).await {
        Ok((a, b, status)) => {
            group.0 = None;
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
            drop(group);
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

    /// A fresh directory of this process's and an empty log path in it.
    fn scratch(name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("log");
        let _ = std::fs::remove_file(&log);
        (dir, log)
    }

    #[tokio::test]
    async fn runs_in_order_with_the_environment_and_kills_at_the_timeout() {
        let (dir, log) = scratch("dsr-notify");
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

    #[tokio::test]
    async fn a_full_queue_drops_the_oldest_and_a_departed_vip_is_told() {
        let (dir, log) = scratch("dsr-notify2");
        let mut n = Notifier::new("lb1", Duration::from_secs(5));
        // A shell function takes the arguments dsr appends (VIP NAME STATE).
        let record = format!("f() {{ sleep 0.01; echo \"$3\" >> {}; }}; f", log.display());
        // 71 alternating events, the last WITHDRAWN: the hook must end on WITHDRAWN.
        for i in 0..71 {
            n.send(event(
                &record,
                if i % 2 == 0 {
                    State::Withdrawn
                } else {
                    State::Announced
                },
            ));
        }
        n.settle(Duration::from_secs(10)).await;
        let lines = std::fs::read_to_string(&log).unwrap();
        assert_eq!(lines.lines().last(), Some("WITHDRAWN"), "{lines}");
        let addr = "192.0.2.10:80/tcp".parse().unwrap();
        assert!(n.status()[&addr].dropped > 0);

        // Announced and usable, then the VIP goes: its hook hears WITHDRAWN and UNUSABLE.
        let _ = std::fs::remove_file(&log);
        n.send(event(&record, State::Usable));
        n.send(event(&record, State::Announced));
        n.retain(|_| false);
        n.settle(Duration::from_secs(5)).await;
        let lines = std::fs::read_to_string(&log).unwrap();
        assert_eq!(lines, "USABLE\nANNOUNCED\nWITHDRAWN\nUNUSABLE\n");

        // A hook that exits 0 leaving a child that holds its output: a success.
        let mut n = Notifier::new("lb1", Duration::from_secs(3));
        n.send(event("sleep 20 & echo started", State::Usable));
        n.settle(Duration::from_secs(5)).await;
        let last = n.status()[&addr].last.clone().unwrap();
        assert!(last.ok, "{last:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
