//! What `dsr status`, `dsr stats`, `--json` and the metrics endpoint show, and the one
//! builder that makes it, whether the daemon answers (its live state and the maps) or is down
//! (the saved state and the pinned maps). The JSON is typed: booleans, numbers, enums and
//! Unix-millisecond timestamps, never display strings.

use std::{collections::HashMap, fmt, net::IpAddr, path::PathBuf, time::Instant};

use serde::{Deserialize, Serialize};

pub use crate::datapath::{Counters, Totals};
use crate::{
    runtime::{
        health::Health,
        state::{self, State},
    },
    spec::model::{BackendSpec, CheckKind, MacAddr, Role, VipAddr, VipSpec},
};

/// Whether a daemon answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DaemonState {
    Running,
    #[default]
    Down,
}

/// A backend's health as its checks decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    Up,
    Down,
    /// Its check has not answered yet: assumed up.
    Unchecked,
    /// Its check says up, its agent says down (HAProxy's agent `down`): treated as down.
    AgentDown,
    /// A state this CLI does not know (a newer daemon's status): shown, never guessed at.
    #[serde(other)]
    Unknown,
}

impl HealthState {
    /// Counts as up for new flows.
    pub fn is_up(self) -> bool {
        !matches!(
            self,
            HealthState::Down | HealthState::AgentDown | HealthState::Unknown
        )
    }
}

impl fmt::Display for HealthState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HealthState::Up => "up",
            HealthState::Down => "down",
            HealthState::Unchecked => "up (unchecked)",
            HealthState::AgentDown => "down (agent)",
            HealthState::Unknown => "unknown (a newer dsr's state)",
        })
    }
}

/// Everything `dsr status` shows.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Status {
    pub instance: String,
    pub interface: String,
    pub daemon: DaemonState,
    /// A data path is pinned (it forwards whether the daemon runs or not).
    pub data_path_pinned: bool,
    pub pid: Option<u32>,
    pub config: PathBuf,
    /// How many VIPs and backends differ from the config file: each one added, removed or
    /// changed at run time counts once (`dsr reset` reverts them).
    pub runtime_changes: usize,
    /// Map writes that failed and wait for a retry (the data path lags the state meanwhile).
    pub map_writes_pending: usize,
    /// Map writes that failed since the daemon started.
    pub map_write_failures: u64,
    /// VIPs still forwarding by their old table while the new one is built (off the
    /// daemon's loop: a table of millions of slots takes a second).
    #[serde(default)]
    pub map_tables_building: usize,
    /// Reloads (SIGHUP or `dsr reload`) since the daemon started, applied and refused.
    pub reloads_applied: u64,
    pub reloads_refused: u64,
    pub vips: Vec<VipStatus>,
    pub reasons: Vec<ReasonStatus>,
    /// Counted besides verdicts: failed flow inserts, adopted connections, untracked closes.
    pub events: Vec<EventStatus>,
    /// The config's `[[announce]]` groups (a VRRP instance's VIPs) and whether each is
    /// announced, as its file `<state_dir>/announce/groups/<name>` says.
    #[serde(default)]
    pub announce_groups: Vec<GroupStatus>,
    /// How full the flow table is, as last counted (a running daemon walks it every
    /// `flow_count_interval`).
    #[serde(default)]
    pub flow_table: Option<FlowTableStatus>,
    /// How much of `table_budget` the VIPs' tables take (a running daemon's).
    #[serde(default)]
    pub tables: Option<TablesStatus>,
    /// The flow-state exchange with the other load balancers (`[sync]`).
    #[serde(default)]
    pub sync: Option<crate::runtime::sync::SyncStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TablesStatus {
    /// Slots the VIPs' tables take in TABLES (rounded up to whole chunks).
    pub used_slots: u64,
    /// Slots of TABLES (`table_budget`).
    pub budget_slots: u64,
    /// The largest run of free slots: the largest table that can be built now.
    pub largest_free_slots: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowTableStatus {
    /// Entries the table holds at most (`flow_table_size`).
    pub capacity: u32,
    /// Entries of flows seen within the idle timeout.
    pub live: u64,
    /// Entries of flows idle longer: their next packet is a new flow; reused first.
    pub expired: u64,
    pub counted_at_unix_ms: u64,
    /// How long the walk took.
    pub count_ms: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupStatus {
    pub name: String,
    /// "all" or "any" of its VIPs must be announced.
    pub require: String,
    pub vips: Vec<String>,
    pub announced: bool,
    /// The VRRP virtual MAC (with `vmac_vrid`), received for while `vrrp_master`.
    #[serde(default)]
    pub vmac: Option<String>,
    #[serde(default)]
    pub vrrp_master: bool,
    /// Why (not) master: keepalived's last notify, or that it is gone.
    #[serde(default)]
    pub vrrp: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReasonStatus {
    pub reason: String,
    /// "forward", "pass" or "drop".
    pub verdict: String,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EventStatus {
    pub event: String,
    pub count: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
    /// New flows placed by the Maglev table.
    pub flows: u64,
    pub packets_per_sec: f64,
    pub bits_per_sec: f64,
    pub flows_per_sec: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VipStatus {
    pub name: String,
    pub addr: VipAddr,
    pub conntrack: bool,
    pub fragments: bool,
    /// Flow fields the VIP hashes on ("5-tuple", "source", "src_addr+dst_addr+proto", ...).
    pub hash: String,
    /// Which role gets new flows; `None` = no usable backend (packets dropped).
    pub serving: Option<Role>,
    /// Not in the config file (added at run time) or changed at run time.
    pub runtime: bool,
    /// Backends the config gives this VIP that were removed at run time.
    pub removed_backends: Vec<IpAddr>,
    /// Announced (its announcement file says so): not drained, and at least `min_usable`
    /// backends take new flows.
    pub announced: bool,
    pub min_usable: u32,
    pub drained: bool,
    /// Slots of its active table and the bytes it takes (the size the config chooses,
    /// `plan::sizing`, once written).
    #[serde(default)]
    pub table_size: u32,
    #[serde(default)]
    pub table_bytes: u64,
    /// The size the config chooses while the active table still has another (its switch
    /// waits for room in the budget, and is retried); `None` otherwise.
    #[serde(default)]
    pub table_size_pending: Option<u32>,
    /// Digest of the active table: seed, size and each slot's backend address (hex). Two
    /// nodes agree on every flow of the VIP exactly when their digests are equal. Known
    /// only to a running daemon.
    pub table_digest: Option<String>,
    /// Digest of the table its configured weights give (equal to `table_digest` unless
    /// load-aware weights changed the active table). Nodes whose loads differ place new flows
    /// differently, yet agree on this one when their config and health agree.
    #[serde(default)]
    pub configured_digest: Option<String>,
    /// Live flow-table entries of this VIP, as last counted (`None`: not counted).
    #[serde(default)]
    pub tracked_flows: Option<u64>,
    /// Its `[vip.load]` settings, in the config's terms (`None`: weights as configured).
    #[serde(default)]
    pub load: Option<VipLoadStatus>,
    /// Its notify hook (`None`: it has none): the command, runs and the last one's outcome.
    #[serde(default)]
    pub notify: Option<crate::runtime::notify::HookStatus>,
    pub traffic: Traffic,
    pub backends: Vec<BackendStatus>,
}

/// One tracked flow (`dsr flows`). Fields the VIP does not hash on are not kept by the flow
/// table, and are `None` here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowStatus {
    pub vip: String,
    pub client: Option<IpAddr>,
    pub client_port: Option<u16>,
    pub vip_port: Option<u16>,
    /// The frame's outer VLAN (0 = untagged).
    pub vlan: u16,
    pub backend: Option<IpAddr>,
    pub backend_id: u32,
    /// Since its last refresh (the data path refreshes an entry at most once a second).
    pub idle_ms: u64,
    /// A FIN or RST of it was seen: still forwarded, no longer counted as active.
    #[serde(default)]
    pub closing: bool,
}

/// A backend reached through another interface than the receiving one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Via {
    pub ifindex: u32,
    pub tx_port: u32,
}

/// The last check result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastCheck {
    pub ok: bool,
    pub at_unix_ms: u64,
    pub latency_us: u64,
    /// "connected", "HTTP 200", "connection refused", "timed out after 1s", ...
    pub message: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackendStatus {
    pub address: IpAddr,
    pub role: Role,
    pub mac: Option<MacAddr>,
    pub via: Option<Via>,
    pub health: HealthState,
    /// The health is the daemon's current view. False while the daemon is down: it is the
    /// last state the daemon saved, and nobody checks the backend now.
    pub health_live: bool,
    pub since_unix_ms: u64,
    /// "none", "tcp" or "http".
    pub check: String,
    /// The HTTP check's path.
    pub check_path: Option<String>,
    pub last_check: Option<LastCheck>,
    /// Checks that failed since the backend was added.
    pub checks_failed: u64,
    pub weight: u32,
    /// The weight new flows see, in units of the configured weight: the configured weight
    /// times its load step (0 when it takes no new flows). Written as an integer when it is
    /// one (always, without `[vip.load]`), as before load-aware weights.
    #[serde(serialize_with = "whole_as_integer")]
    pub effective_weight: f64,
    /// Load-aware weight (`[vip.load]` only): its step, the target and why.
    #[serde(default)]
    pub load: Option<LoadStatus>,
    pub drained: bool,
    pub inhibit_on_failure: bool,
    /// Gets new flows now.
    pub in_table: bool,
    /// Established flows stay on it.
    pub keeps_flows: bool,
    /// Slots of the VIP's active table that name it (`None`: not known to this view). A
    /// backend standing by (drained, or down with inhibit_on_failure) has lent its slots.
    #[serde(default)]
    pub table_slots: Option<u32>,
    /// Added or changed at run time.
    pub runtime: bool,
    /// Live flow-table entries on this backend, as last counted (ipvsadm's active
    /// connections; `None`: not counted).
    #[serde(default)]
    pub tracked_flows: Option<u64>,
    /// Live entries of its TCP flows whose FIN or RST was seen: still forwarded, not active
    /// (ipvsadm's inactive connections).
    #[serde(default)]
    pub closing_flows: Option<u64>,
    pub traffic: Traffic,
}

fn whole_as_integer<S: serde::Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    if v.fract() == 0.0 && *v >= 0.0 && *v <= u32::MAX as f64 {
        s.serialize_u64(*v as u64)
    } else {
        s.serialize_f64(*v)
    }
}

/// A VIP's load-aware weight settings (`[vip.load]`), as the config file names them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VipLoadStatus {
    /// The agent port its backends are asked on (`None`: only backends with their own
    /// `agent_port` have an agent), and how.
    pub agent_port: Option<u16>,
    pub agent_interval_ms: Option<u64>,
    pub agent_timeout_ms: Option<u64>,
    pub agent_send: Option<String>,
    pub agent_path: Option<String>,
    /// Active flows per backend count (`flows = true`).
    pub flows: bool,
    pub weight_interval_ms: u64,
    /// Bounds of the effective weight, in percent of the configured weight.
    pub min_weight: f64,
    pub max_weight: f64,
}

impl VipLoadStatus {
    fn of(spec: &crate::spec::model::LoadSpec) -> VipLoadStatus {
        let agent = spec.agent.as_ref();
        let percent = |eighths: u32| f64::from(eighths) * 100.0 / 8.0;
        VipLoadStatus {
            agent_port: agent.map(|a| a.port).filter(|&p| p != 0),
            agent_interval_ms: agent.map(|a| a.interval.as_millis() as u64),
            agent_timeout_ms: agent.map(|a| a.timeout.as_millis() as u64),
            agent_send: agent.and_then(|a| a.send.clone()),
            agent_path: agent.and_then(|a| a.path.clone()),
            flows: spec.flows,
            weight_interval_ms: spec.weight_interval.as_millis() as u64,
            min_weight: percent(spec.min_eighths),
            max_weight: percent(spec.max_eighths),
        }
    }
}

/// A backend's load-aware weight.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoadStatus {
    /// The weight in the table, in eighths of the configured weight (8 = as configured).
    pub step: u32,
    /// Where the step is heading (one eighth per `weight_interval`), and why.
    pub target: u32,
    pub reason: String,
    /// When the step may move next (`None`: it has not moved yet).
    pub next_step_unix_ms: Option<u64>,
    /// Its share of the VIP's active flows over its configured share, at the last count
    /// (`flows = true`; `None`: too few flows to tell).
    pub flow_share: Option<f64>,
    /// What its agent said (with an agent).
    pub agent: Option<AgentStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// The weight it said, in percent (`None`: none said, 100%).
    pub percent: Option<u32>,
    pub admin: crate::runtime::agent::Admin,
    pub down: bool,
    /// Its last answer, or why it could not be asked, and when.
    pub last_line: Option<String>,
    pub error: Option<String>,
    pub at_unix_ms: Option<u64>,
}

/// Counter samples, for rates.
#[derive(Default)]
pub struct Rates {
    last: HashMap<(bool, u32), (Instant, Totals, [f64; 3])>,
}

impl Rates {
    pub fn sample(&mut self, is_vip: bool, id: u32, now: Totals) {
        let at = Instant::now();
        let entry = self.last.entry((is_vip, id)).or_insert((at, now, [0.0; 3]));
        let dt = at.duration_since(entry.0).as_secs_f64();
        if dt >= 0.5 {
            let d = |a: u64, b: u64| a.saturating_sub(b) as f64 / dt;
            entry.2 = [
                d(now.packets, entry.1.packets),
                d(now.bytes, entry.1.bytes) * 8.0,
                d(now.flows, entry.1.flows),
            ];
            entry.0 = at;
            entry.1 = now;
        }
    }

    fn traffic(&self, is_vip: bool, id: u32, totals: Totals) -> Traffic {
        let r = self.last.get(&(is_vip, id)).map_or([0.0; 3], |e| e.2);
        Traffic {
            packets: totals.packets,
            bytes: totals.bytes,
            flows: totals.flows,
            packets_per_sec: r[0],
            bits_per_sec: r[1],
            flows_per_sec: r[2],
        }
    }
}

/// What the builder reads.
pub struct Source<'a> {
    pub instance: &'a str,
    pub interface: &'a str,
    pub config_path: PathBuf,
    pub daemon: DaemonState,
    pub pid: Option<u32>,
    pub data_path_pinned: bool,
    /// The runtime state (live, or as last saved); `None` = nothing known.
    pub state: Option<&'a State>,
    /// The VIPs the config file gives.
    pub config_vips: &'a [VipSpec],
    pub counters: Option<&'a dyn Counters>,
    /// Rates are known only to a running daemon.
    pub rates: Option<&'a Rates>,
    pub writes_pending: usize,
    pub write_failures: u64,
    pub tables_building: usize,
    /// Reloads applied and refused (a running daemon's).
    pub reloads: (u64, u64),
    pub digests: Option<&'a HashMap<VipAddr, u64>>,
    /// Each VIP's active table as slots per backend id (a running daemon's).
    pub slots: Option<&'a HashMap<VipAddr, HashMap<u32, u32>>>,
    /// Digests of the tables the configured weights give, where load changed them.
    pub configured_digests: Option<&'a HashMap<VipAddr, u64>>,
    /// The size of each VIP's active table, from the kernel's VIPS entries (a running
    /// daemon's; a resize may be pending; 0: an empty table).
    pub active_sizes: Option<&'a HashMap<VipAddr, u32>>,
    pub announce_groups: &'a [crate::spec::model::AnnounceGroup],
    pub state_dir: &'a std::path::Path,
    /// The last count of the flow table, if one was made.
    pub flow_count: Option<std::sync::Arc<crate::datapath::flowcount::FlowCount>>,
    pub flow_capacity: u32,
    /// The notify hooks' runs (a running daemon's).
    pub hooks: Option<&'a HashMap<VipAddr, crate::runtime::notify::HookStatus>>,
    /// The top-level `notify`, for VIPs without their own.
    pub notify_default: Option<&'a str>,
    /// The flow-state exchange, if configured and running.
    pub sync: Option<crate::runtime::sync::SyncStatus>,
    pub tables: Option<TablesStatus>,
}

/// The one status builder.
pub fn build(src: Source<'_>) -> Status {
    let live = src.daemon == DaemonState::Running;
    let no_rates = Rates::default();
    let rates = src.rates.unwrap_or(&no_rates);
    let totals = |is_vip: bool, id: u32| match src.counters {
        Some(c) if is_vip => c.vip(id),
        Some(c) => c.backend(id),
        None => Totals::default(),
    };
    let mut status = Status {
        instance: src.instance.to_owned(),
        interface: src.interface.to_owned(),
        daemon: src.daemon,
        data_path_pinned: src.data_path_pinned,
        pid: src.pid,
        config: src.config_path,
        runtime_changes: 0,
        map_writes_pending: src.writes_pending,
        map_write_failures: src.write_failures,
        map_tables_building: src.tables_building,
        reloads_applied: src.reloads.0,
        reloads_refused: src.reloads.1,
        vips: Vec::new(),
        reasons: src.counters.map_or_else(Vec::new, |c| {
            c.reasons()
                .into_iter()
                .map(|(r, t)| ReasonStatus {
                    reason: r.name().into(),
                    verdict: r.verdict().into(),
                    packets: t.packets,
                    bytes: t.bytes,
                })
                .collect()
        }),
        events: src.counters.map_or_else(Vec::new, |c| {
            c.events()
                .into_iter()
                .map(|(e, n)| EventStatus {
                    event: e.name().into(),
                    count: n,
                })
                .collect()
        }),
        announce_groups: Vec::new(),
        flow_table: src.flow_count.as_ref().map(|c| FlowTableStatus {
            capacity: src.flow_capacity,
            live: c.live,
            expired: c.expired,
            counted_at_unix_ms: c.at.map_or(0, unix_ms),
            count_ms: c.took.as_secs_f64() * 1000.0,
        }),
        tables: src.tables,
        sync: src.sync,
    };
    let Some(state) = src.state else {
        return status;
    };
    status.announce_groups = src
        .announce_groups
        .iter()
        .map(|g| {
            // Read once: the record may change between two reads.
            let vrrp = g
                .vmac()
                .map(|_| crate::runtime::vrrp::master(src.state_dir, &g.name));
            GroupStatus {
                name: g.name.clone(),
                require: match g.require {
                    crate::spec::model::Require::All => "all",
                    crate::spec::model::Require::Any => "any",
                }
                .into(),
                vips: g.vips.clone(),
                announced: crate::runtime::announce::group_announced(g, state),
                vmac: g.vmac().map(|m| crate::spec::model::MacAddr(m).to_string()),
                vrrp_master: vrrp.as_ref().is_some_and(|v| v.0),
                vrrp: vrrp.map(|v| v.1),
            }
        })
        .collect();
    let tracked = |per: fn(&crate::datapath::flowcount::FlowCount) -> &HashMap<u32, u64>,
                   id: u32| {
        src.flow_count
            .as_ref()
            .map(|c| per(c).get(&id).copied().unwrap_or(0))
    };
    let mut differences = 0;
    for vip in &state.vips {
        let config = src.config_vips.iter().find(|c| c.addr == vip.spec.addr);
        let (serving, entries) = vip.serving();
        let removed_backends: Vec<IpAddr> = config.map_or_else(Vec::new, |c| {
            c.backends
                .iter()
                .filter(|b| vip.backend(b.address).is_none())
                .map(|b| b.address)
                .collect()
        });
        let vip_changed = config.is_none_or(|c| !same_vip(c, &vip.spec));
        let active_size = src
            .active_sizes
            .and_then(|s| s.get(&vip.spec.addr).copied())
            .unwrap_or(vip.table_size);
        differences += vip_changed as usize + removed_backends.len();
        let mut vs = VipStatus {
            name: vip.spec.name.clone(),
            addr: vip.spec.addr,
            conntrack: vip.spec.conntrack,
            fragments: vip.spec.fragments,
            hash: crate::spec::model::hash_fields_name(vip.spec.hash_fields),
            serving,
            runtime: vip_changed,
            removed_backends,
            announced: crate::runtime::announce::announced(vip),
            min_usable: vip.spec.min_usable,
            drained: vip.spec.drained,
            table_size: active_size,
            table_bytes: active_size.div_ceil(dsr_common::TABLE_CHUNK) as u64
                * std::mem::size_of::<dsr_common::TableChunk>() as u64,
            // An empty table (no usable backend) has no size to wait for.
            table_size_pending: (active_size != 0 && active_size != vip.table_size)
                .then_some(vip.table_size),
            table_digest: src
                .digests
                .and_then(|d| d.get(&vip.spec.addr))
                .map(|d| format!("{d:016x}")),
            configured_digest: src
                .configured_digests
                .and_then(|d| d.get(&vip.spec.addr))
                .or_else(|| src.digests.and_then(|d| d.get(&vip.spec.addr)))
                .map(|d| format!("{d:016x}")),
            tracked_flows: tracked(|c| &c.per_vip, vip.id),
            load: vip.spec.load.as_ref().map(VipLoadStatus::of),
            notify: crate::runtime::notify::command_of(
                vip.spec.notify.as_deref(),
                src.notify_default,
            )
            .map(|command| {
                let mut hook = src
                    .hooks
                    .and_then(|h| h.get(&vip.spec.addr))
                    .cloned()
                    .unwrap_or_default();
                hook.command = command.to_owned();
                hook
            }),
            traffic: rates.traffic(true, vip.id, totals(true, vip.id)),
            backends: Vec::new(),
        };
        for b in &vip.backends {
            let from_config =
                config.and_then(|c| c.backends.iter().find(|x| x.address == b.spec.address));
            let runtime = from_config.is_none_or(|c| c != &b.spec);
            differences += runtime as usize;
            let mut bs = backend(
                b,
                live,
                runtime,
                entries.iter().any(|e| e.id == b.id),
                rates.traffic(false, b.id, totals(false, b.id)),
            );
            bs.tracked_flows = tracked(|c| &c.per_backend, b.id);
            bs.closing_flows = tracked(|c| &c.closing_per_backend, b.id);
            bs.load = vip.spec.load.as_ref().map(|spec| load_status(b, spec));
            bs.table_slots = src
                .slots
                .and_then(|s| s.get(&vip.spec.addr))
                .map(|s| s.get(&b.id).copied().unwrap_or(0));
            vs.backends.push(bs);
        }
        status.vips.push(vs);
    }
    // Configured VIPs removed at run time.
    differences += src
        .config_vips
        .iter()
        .filter(|c| state.vip(&c.addr).is_none())
        .count();
    status.runtime_changes = differences;
    status
}

/// The VIP's own settings (not its backends) are the config's.
fn same_vip(config: &VipSpec, running: &VipSpec) -> bool {
    VipSpec {
        backends: Vec::new(),
        ..config.clone()
    } == VipSpec {
        backends: Vec::new(),
        ..running.clone()
    }
}

use crate::runtime::unix_ms;

fn health_state(h: &Health, spec: &BackendSpec, agent_down: bool) -> HealthState {
    match (h.up, h.unchecked) {
        (true, _) if agent_down => HealthState::AgentDown,
        (true, true) if spec.check.kind == CheckKind::None => HealthState::Up,
        (true, true) => HealthState::Unchecked,
        (true, false) => HealthState::Up,
        (false, _) => HealthState::Down,
    }
}

fn load_status(b: &state::Backend, spec: &crate::spec::model::LoadSpec) -> LoadStatus {
    let (target, mut reason) = b.load.target(spec);
    // What stops new flows comes first: the step alone ("agent says 100%") would read as if
    // the backend took its full share.
    if let Some(block) = b.load.said.blocks() {
        reason = format!("{block}: no new flows; weight step {reason}");
    }
    LoadStatus {
        step: b.load.step,
        target,
        reason,
        // Only while it is on its way: a step at its target has no next one.
        next_step_unix_ms: (b.load.step != target)
            .then(|| b.load.next_step_at(spec).map(unix_ms))
            .flatten(),
        flow_share: b.load.flow_share_permille.map(|p| p as f64 / 1000.0),
        agent: spec.agent_for(&b.spec).map(|_| AgentStatus {
            percent: b.load.said.percent,
            admin: b.load.said.admin,
            down: b.load.said.down,
            last_line: b.load.last.as_ref().and_then(|r| r.line.clone()),
            error: b
                .load
                .last
                .as_ref()
                .map(|r| r.error.clone())
                .filter(|e| !e.is_empty()),
            at_unix_ms: b.load.last.as_ref().map(|r| unix_ms(r.at)),
        }),
    }
}

fn backend(
    b: &state::Backend,
    live: bool,
    runtime: bool,
    in_table: bool,
    traffic: Traffic,
) -> BackendStatus {
    BackendStatus {
        address: b.spec.address,
        role: b.spec.role,
        mac: b.mac,
        via: b.egress.map(|(port, _)| Via {
            ifindex: b.ifindex,
            tx_port: port,
        }),
        health: health_state(&b.health, &b.spec, b.load.said.down),
        health_live: live,
        since_unix_ms: b.health_since_ms(),
        check: b.spec.check.kind.type_name().into(),
        check_path: match &b.spec.check.kind {
            CheckKind::Http { path, .. } => Some(path.clone()),
            _ => None,
        },
        last_check: b.health.last.as_ref().map(|r| LastCheck {
            ok: r.ok,
            at_unix_ms: unix_ms(r.at),
            latency_us: r.latency_us,
            message: r.message.clone(),
        }),
        checks_failed: b.health.checks_failed,
        weight: b.spec.weight,
        effective_weight: b.effective_weight(),
        load: None,
        drained: b.spec.drained,
        inhibit_on_failure: b.spec.inhibit_on_failure,
        in_table,
        keeps_flows: b.keeps_flows(),
        table_slots: None,
        runtime,
        tracked_flows: None,
        closing_flows: None,
        traffic,
    }
}

#[cfg(test)]
mod tests {
    use super::HealthState;

    #[test]
    fn a_health_state_this_cli_does_not_know_reads_as_unknown_and_down() {
        let known: HealthState = serde_json::from_str("\"agent_down\"").unwrap();
        assert_eq!(known, HealthState::AgentDown);
        let newer: HealthState = serde_json::from_str("\"quarantined\"").unwrap();
        assert_eq!(newer, HealthState::Unknown);
        assert!(!newer.is_up());
        assert_eq!(newer.to_string(), "unknown (a newer dsr's state)");
    }
}
