//! The daemon's runtime state: every VIP and backend with the ids the data path knows them by,
//! their MACs and health, and the decisions derived from them. Pure: no I/O here; the daemon
//! feeds events in and hands [`State::desired`] to the map writer.
//!
//! Decisions, per VIP:
//! - a backend *takes new flows* if it has a MAC, is up, is not drained and has weight > 0;
//! - new flows go to the primaries that take them; if none does, to the backups; if none
//!   does, to the sorry servers; if none does, the VIP drops its packets;
//! - a backend *keeps its established flows* if it has a MAC and is up, or is down with
//!   `inhibit_on_failure` (keepalived's weight-0-on-failure). Drained backends keep theirs.
//! - with `[vip.load]`, its agent can drain it or take it down too, and its table weight is
//!   the configured weight times its load step (runtime::load).

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

use crate::{
    plan::{maglev, sizing::TableSizing},
    runtime::{
        agent::Reading,
        health::Health,
        load::{self, Load},
    },
    spec::model::{AgentSpec, BackendSpec, LoadSpec, MacAddr, Role, VipAddr, VipSpec},
};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Backend {
    pub spec: BackendSpec,
    /// Data-path id: index of BACKENDS/BACKEND_STATS, the value in table slots and flows.
    pub id: u32,
    /// MAC in use: the static one, or the neighbour table's.
    pub mac: Option<MacAddr>,
    pub health: Health,
    /// Identifies this backend's running check; a new token restarts the check.
    pub check_token: u64,
    /// Where it is reached: the interface (ifindex; 0 = not yet known) and, when that is
    /// not the receiving interface, how frames leave for it.
    #[serde(default)]
    pub ifindex: u32,
    #[serde(default)]
    pub egress: Option<(u32, MacAddr)>,
    /// Name of the egress interface: when it is deleted and re-created (a new index), the
    /// backend follows it by name.
    #[serde(default)]
    pub egress_ifname: Option<String>,
    /// Its egress interface is gone (deleted; the kernel dropped its TX port): not usable
    /// until an interface of that name returns.
    #[serde(default)]
    pub egress_lost: bool,
    /// Its load-aware weight (all at the configured weight without `[vip.load]`).
    #[serde(default)]
    pub load: Load,
    /// Identifies its running agent check (0: none).
    #[serde(default)]
    pub agent_token: u64,
}

impl Backend {
    pub fn takes_new_flows(&self) -> bool {
        self.reachable()
            && self.alive()
            && !self.spec.drained
            && self.spec.weight > 0
            && self.load.said.blocks().is_none()
    }

    pub fn keeps_flows(&self) -> bool {
        self.reachable() && (self.alive() || self.spec.inhibit_on_failure)
    }

    /// When its health as status shows it (up, down, down by its agent) last changed, in Unix
    /// ms: down by its check since the check said so; otherwise since the later of the
    /// check's and the agent's last change (either can have ended or begun the state).
    pub fn health_since_ms(&self) -> u64 {
        let check = crate::runtime::unix_ms(self.health.since);
        match self.load.down_changed_ms {
            Some(agent) if self.health.up => check.max(agent),
            _ => check,
        }
    }

    /// Up by its health check, and not down by its agent's word.
    fn alive(&self) -> bool {
        self.health.up && !self.load.said.down
    }

    /// Its weight in the table: configured weight times load step (see runtime::load).
    pub fn table_weight(&self) -> u32 {
        self.spec.weight * self.load.step
    }

    /// It has a MAC, and the interface it sits behind exists.
    pub fn reachable(&self) -> bool {
        self.mac.is_some() && !self.egress_lost
    }

    /// The weight new flows see now, in units of the configured weight (0 when drained,
    /// down or without MAC).
    pub fn effective_weight(&self) -> f64 {
        if self.takes_new_flows() {
            self.spec.weight as f64 * self.load.step as f64 / load::FULL as f64
        } else {
            0.0
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Vip {
    /// The VIP's spec; its `backends` list is kept empty here (see `backends`).
    pub spec: VipSpec,
    /// Data-path id: index of VIP_STATS.
    pub id: u32,
    /// Slots of its table (`plan::sizing`), from the specs last reconciled.
    #[serde(default)]
    pub table_size: u32,
    pub backends: Vec<Backend>,
}

impl Vip {
    /// Which role serves new flows now, and the table entries for it.
    pub fn serving(&self) -> (Option<Role>, Vec<maglev::Entry>) {
        for role in [Role::Primary, Role::Backup, Role::Sorry] {
            let entries: Vec<maglev::Entry> = self
                .backends
                .iter()
                .filter(|b| b.spec.role == role && b.takes_new_flows())
                .map(|b| maglev::Entry {
                    address: b.spec.address,
                    id: b.id,
                    weight: b.table_weight(),
                })
                .collect();
            if !entries.is_empty() {
                return (Some(role), entries);
            }
        }
        (None, Vec::new())
    }

    /// The backends of `role` (the serving one) that take no new flows now (down, drained,
    /// said so by their agent, not resolved), at their full weight (`configured`: their
    /// configured weight): the table is built around them, lending their slots, so that
    /// when one comes back exactly its own flows return to it.
    pub fn standing_by(&self, role: Option<Role>, configured: bool) -> Vec<maglev::Entry> {
        self.backends
            .iter()
            .filter(|b| Some(b.spec.role) == role && !b.takes_new_flows())
            .map(|b| maglev::Entry {
                address: b.spec.address,
                id: b.id,
                // At its full configured weight, not its last load step: that step is this
                // node's, frozen while the backend is out, and peers would build other tables.
                weight: if configured {
                    b.spec.weight
                } else {
                    b.spec.weight * load::FULL
                },
            })
            .collect()
    }

    pub fn backend(&self, address: IpAddr) -> Option<&Backend> {
        self.backends.iter().find(|b| b.spec.address == address)
    }

    /// The table entries as configured: what [`Vip::serving`] gives with every load step
    /// at [`load::FULL`] (the table peers without load-aware weights would build).
    pub fn serving_as_configured(&self) -> Vec<maglev::Entry> {
        // Backends their agent drained or took down stay out: those words are health, not
        // weight, and every node asking the same agent hears them.
        let (_, mut entries) = self.serving();
        for e in &mut entries {
            if let Some(b) = self.backends.iter().find(|b| b.id == e.id) {
                e.weight = b.spec.weight;
            }
        }
        entries
    }

    /// Whether load steps make the table differ from the configured one: only when the
    /// backends taking new flows are at different steps (Maglev sees weight ratios only).
    pub fn load_adjusted(&self) -> bool {
        // Those standing by count too, at FULL: the table is built around them with it.
        let (role, _) = self.serving();
        let mut steps = self
            .backends
            .iter()
            .filter(|b| Some(b.spec.role) == role && b.spec.weight > 0)
            .map(|b| {
                if b.takes_new_flows() {
                    b.load.step
                } else {
                    load::FULL
                }
            });
        steps.next().is_some_and(|first| steps.any(|s| s != first))
    }
}

/// What the data-path ids stand for, published by the daemon whenever they change: for
/// `dsr trace`'s records and the flow-state exchange (which never sends node-local ids).
#[derive(Clone, Debug, Default)]
pub struct Names {
    pub vips: HashMap<u32, String>,
    pub backends: HashMap<u32, IpAddr>,
    pub vip_addrs: HashMap<u32, VipAddr>,
    /// VIP id -> the fields it hashes on (`HASH_*`): with its address, what a flow entry implies.
    pub vip_hash_fields: HashMap<u32, u32>,
    /// VIP address -> its id; (VIP id, backend address) -> the backend's id.
    pub vip_ids: HashMap<VipAddr, u32>,
    pub backend_ids: HashMap<(u32, IpAddr), u32>,
}

impl Names {
    pub fn of(state: &State) -> Names {
        let mut n = Names::default();
        for v in &state.vips {
            n.vips.insert(v.id, v.spec.name.clone());
            n.vip_addrs.insert(v.id, v.spec.addr);
            n.vip_hash_fields.insert(v.id, v.spec.hash_fields);
            n.vip_ids.insert(v.spec.addr, v.id);
            for b in &v.backends {
                n.backends.insert(b.id, b.spec.address);
                n.backend_ids.insert((v.id, b.spec.address), b.id);
            }
        }
        n
    }
}

/// Hands out data-path ids. A freed backend id waits out the flow idle timeout before reuse:
/// flow entries may still name it, and they must not land on a newcomer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Ids {
    next: u32,
    max: u32,
    /// Freed ids with the time they were freed, oldest first.
    free: VecDeque<(u32, SystemTime)>,
    quarantine: Duration,
}

impl Ids {
    pub fn new(max: u32, quarantine: Duration) -> Self {
        Ids {
            next: 0,
            max,
            free: VecDeque::new(),
            quarantine,
        }
    }

    pub fn alloc(&mut self, now: SystemTime) -> Option<u32> {
        if let Some(&(id, freed)) = self.free.front()
            && freed + self.quarantine <= now
        {
            self.free.pop_front();
            return Some(id);
        }
        if self.next < self.max {
            self.next += 1;
            return Some(self.next - 1);
        }
        None
    }

    pub fn release(&mut self, id: u32, now: SystemTime) {
        self.free.push_back((id, now));
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct State {
    pub vips: Vec<Vip>,
    backend_ids: Ids,
    vip_ids: Ids,
    next_token: u64,
}

/// Result of [`State::reconcile`]: what the daemon must do besides writing maps.
#[derive(Debug, Default)]
pub struct Reconciled {
    /// Backends new to the state (or whose check changed): (VIP, address) to check/resolve.
    pub added: Vec<(VipAddr, IpAddr)>,
    /// Check tokens that no longer exist (their tasks must stop).
    pub stopped_tokens: Vec<u64>,
    /// Human-readable problems (e.g. out of ids); the affected items are left out.
    pub errors: Vec<String>,
    /// Ids given out now (their counters must start from zero).
    pub new_vip_ids: Vec<u32>,
    pub new_backend_ids: Vec<u32>,
    /// The slots per backend the default table sizes got (`plan::sizing::Sized`).
    pub table_slots_per_backend: Option<u32>,
}

/// What an agent's answer changed (`State::record_agent`), for the log.
#[derive(Debug)]
pub struct AgentNews {
    pub vip: VipAddr,
    pub backend: IpAddr,
    /// What the agent now says (when it answered, or its word changed).
    pub said: Option<crate::runtime::agent::Said>,
    /// Why it could not be asked (`None`: it answered).
    pub unreachable: Option<String>,
    /// Words it used that dsr does not know.
    pub unknown: Vec<String>,
    /// Which backends take or keep flows changed: write the table now.
    pub flows_changed: bool,
}

/// How long a freed id waits: a little beyond the idle timeout, since the data path's clock
/// is coarse.
fn quarantine(flow_idle: Duration) -> Duration {
    flow_idle + Duration::from_secs(2)
}

impl State {
    pub fn new(max_vips: u32, max_backends: u32, flow_idle: Duration) -> Self {
        State {
            vips: Vec::new(),
            backend_ids: Ids::new(max_backends, quarantine(flow_idle)),
            // VIP ids wait too: flow entries carry the VIP id, and (with the backends' owner
            // check) must never be taken up by a newcomer at that id.
            vip_ids: Ids::new(max_vips, quarantine(flow_idle)),
            next_token: 1,
        }
    }

    /// Freed ids wait for this flow idle timeout from now on (an adopted state keeps the
    /// one it was saved with otherwise).
    pub fn set_quarantine(&mut self, flow_idle: Duration) {
        self.backend_ids.quarantine = quarantine(flow_idle);
        self.vip_ids.quarantine = quarantine(flow_idle);
    }

    pub fn vip(&self, addr: &VipAddr) -> Option<&Vip> {
        self.vips.iter().find(|v| v.spec.addr == *addr)
    }

    /// Finds a VIP by name or by "address:port/protocol".
    pub fn find_vip(&self, name_or_addr: &str) -> Option<&Vip> {
        self.vips
            .iter()
            .find(|v| v.spec.name == name_or_addr)
            .or_else(|| {
                let addr: VipAddr = name_or_addr.parse().ok()?;
                self.vip(&addr)
            })
    }

    fn backend_mut(&mut self, vip: &VipAddr, address: IpAddr) -> Option<&mut Backend> {
        self.vips
            .iter_mut()
            .find(|v| v.spec.addr == *vip)?
            .backends
            .iter_mut()
            .find(|b| b.spec.address == address)
    }

    /// Brings the state to `desired`: unchanged VIPs and backends keep their ids, health,
    /// MACs and so their flows and counters; new ones get ids; vanished ones free theirs.
    /// Each VIP's table is sized by `tables` (see `plan::sizing`).
    pub fn reconcile(
        &mut self,
        desired: &[VipSpec],
        tables: &TableSizing,
        now: SystemTime,
    ) -> Reconciled {
        let mut out = Reconciled::default();
        let sizes = match tables.sizes(desired) {
            Ok(s) => {
                out.table_slots_per_backend = Some(s.per_backend);
                s.sizes
            }
            Err(e) => {
                // Validated before: only a bug gets here. Sized as if the budget were endless.
                out.errors.push(format!("sizing the tables: {}", e.message));
                let unbounded = TableSizing {
                    budget: u32::MAX - u32::MAX % dsr_common::TABLE_CHUNK,
                    ..*tables
                };
                match unbounded.sizes(desired) {
                    Ok(s) => s.sizes,
                    Err(_) => vec![dsr_common::DEFAULT_TABLE_SIZE; desired.len()],
                }
            }
        };
        let mut old_vips = std::mem::take(&mut self.vips);
        for (spec, &table_size) in desired.iter().zip(&sizes) {
            let mut vip = match old_vips.iter().position(|v| v.spec.addr == spec.addr) {
                Some(i) => old_vips.remove(i),
                None => match self.vip_ids.alloc(now) {
                    Some(id) => {
                        out.new_vip_ids.push(id);
                        Vip {
                            spec: spec.clone(),
                            id,
                            table_size,
                            backends: Vec::new(),
                        }
                    }
                    None => {
                        out.errors
                            .push(format!("VIP {}: out of VIP ids (max_vips)", spec.addr));
                        continue;
                    }
                },
            };
            let old_load = vip.spec.load.take();
            let agent_of = |load: Option<&LoadSpec>, b: &BackendSpec| load?.agent_for(b);
            let flows_off = !spec.load.as_ref().is_some_and(|l| l.flows);
            vip.spec = VipSpec {
                backends: Vec::new(),
                ..spec.clone()
            };
            vip.table_size = table_size;
            let mut old_backends = std::mem::take(&mut vip.backends);
            for bspec in &spec.backends {
                let kept = old_backends
                    .iter()
                    .position(|b| b.spec.address == bspec.address)
                    .map(|i| old_backends.remove(i));
                let backend = match kept {
                    Some(mut b) => {
                        let old_agent = agent_of(old_load.as_ref(), &b.spec);
                        let agent = agent_of(spec.load.as_ref(), bspec);
                        // Another agent (none, or another port) has said nothing yet; the
                        // same agent asked differently (interval, timeout, what is sent)
                        // still means what it said.
                        let agent_changed = old_agent != agent;
                        let kind = |a: &AgentSpec| (a.port, a.path.is_some());
                        let agent_replaced =
                            old_agent.as_ref().map(kind) != agent.as_ref().map(kind);
                        if b.spec.check != bspec.check {
                            // A new check runs, but the backend keeps its state: during an
                            // incident, tuning a dead primary's check must not send new flows
                            // back to it. The new check's results count from zero, so a down
                            // backend needs `rise` successes and an up one `fall` failures.
                            out.stopped_tokens.push(b.check_token);
                            b.check_token = self.token();
                            b.health.restart_counting();
                            out.added.push((spec.addr, bspec.address));
                        }
                        if b.spec.interface != bspec.interface {
                            // Reached another way now: placed and resolved afresh.
                            b.ifindex = 0;
                            b.egress = None;
                            b.egress_ifname = None;
                            b.egress_lost = false;
                            b.mac = bspec.mac;
                            out.added.push((spec.addr, bspec.address));
                        }
                        if bspec.mac.is_some() {
                            b.mac = bspec.mac;
                        } else if b.spec.mac.is_some() {
                            // Static MAC removed: resolve from now on.
                            b.mac = None;
                            out.added.push((spec.addr, bspec.address));
                        }
                        b.spec = bspec.clone();
                        let agent_was_down = b.load.said.down;
                        if spec.load.is_none() {
                            // Back to the configured weights, at once.
                            b.load = Load::default();
                        }
                        if flows_off {
                            b.load.flow_cap = None;
                            b.load.flow_share_permille = None;
                        }
                        if agent_changed {
                            if b.agent_token != 0 {
                                out.stopped_tokens.push(b.agent_token);
                            }
                            b.agent_token = if agent.is_some() { self.token() } else { 0 };
                        }
                        if agent_replaced {
                            // What the old agent said is forgotten with it.
                            b.load.said = Default::default();
                            b.load.last = None;
                        }
                        // An agent's down forgotten here ends here.
                        b.load.note_down_change(agent_was_down, now);
                        b
                    }
                    None => match self.backend_ids.alloc(now) {
                        Some(id) => {
                            out.added.push((spec.addr, bspec.address));
                            out.new_backend_ids.push(id);
                            Backend {
                                spec: bspec.clone(),
                                id,
                                mac: bspec.mac,
                                health: Health::default(),
                                check_token: self.token(),
                                ifindex: 0,
                                egress: None,
                                egress_ifname: None,
                                egress_lost: false,
                                load: Load::default(),
                                agent_token: if agent_of(spec.load.as_ref(), bspec).is_some() {
                                    self.token()
                                } else {
                                    0
                                },
                            }
                        }
                        None => {
                            out.errors.push(format!(
                                "backend {} of VIP {}: out of backend ids (max_backends; \
                                 removed backends' ids are reusable after the flow idle timeout)",
                                bspec.address, spec.addr
                            ));
                            continue;
                        }
                    },
                };
                vip.backends.push(backend);
            }
            for gone in old_backends {
                out.stopped_tokens
                    .extend([gone.check_token, gone.agent_token]);
                self.backend_ids.release(gone.id, now);
            }
            self.vips.push(vip);
        }
        for gone in old_vips {
            for b in gone.backends {
                out.stopped_tokens.extend([b.check_token, b.agent_token]);
                self.backend_ids.release(b.id, now);
            }
            self.vip_ids.release(gone.id, now);
        }
        out
    }

    fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    /// Records a check result for the backend running check `token`. Returns
    /// (VIP, address, new up state) when its state changed.
    pub fn record_check(
        &mut self,
        token: u64,
        result: crate::runtime::health::CheckResult,
    ) -> Option<(VipAddr, IpAddr, bool)> {
        for vip in &mut self.vips {
            for b in &mut vip.backends {
                if b.check_token == token {
                    let (rise, fall) = (b.spec.check.rise, b.spec.check.fall);
                    return b
                        .health
                        .record(result, rise, fall)
                        .map(|up| (vip.spec.addr, b.spec.address, up));
                }
            }
        }
        None
    }

    /// Records an agent's answer for the backend whose agent check is `token`. Returns what
    /// to log when it changed what the agent says, and whether that changed which backends
    /// take or keep flows (the table must then be written at once).
    pub fn record_agent(&mut self, token: u64, reading: Reading) -> Option<AgentNews> {
        let vip = self
            .vips
            .iter_mut()
            .find(|v| v.backends.iter().any(|b| b.agent_token == token))?;
        let addr = vip.spec.addr;
        let b = vip.backends.iter_mut().find(|b| b.agent_token == token)?;
        let before = (b.takes_new_flows(), b.keeps_flows(), b.load.said.clone());
        let reached_before = b.load.last.as_ref().map(|r| r.line.is_some());
        let mut unknown = Vec::new();
        if let Some(line) = &reading.line {
            unknown = b.load.said.take(line);
        }
        let reached = reading.line.is_some();
        let error = reading.error.clone();
        b.load.note_down_change(before.2.down, reading.at);
        b.load.last = Some(reading);
        let flows_changed = (b.takes_new_flows(), b.keeps_flows()) != (before.0, before.1);
        let said_changed = b.load.said != before.2;
        // Said again, reached as before: nothing to tell (an unknown word is told once,
        // with the answer that brought it).
        if !said_changed && reached_before == Some(reached) {
            return None;
        }
        Some(AgentNews {
            vip: addr,
            backend: b.spec.address,
            said: (reached || said_changed).then(|| b.load.said.clone()),
            unreachable: (!reached).then_some(error),
            unknown,
            flows_changed,
        })
    }

    /// Moves each load-aware backend's step one eighth towards its target where its
    /// `weight_interval` allows. Returns the moves (VIP, backend, from, to, why).
    pub fn step_loads(&mut self, now: SystemTime) -> Vec<(VipAddr, IpAddr, u32, u32, String)> {
        let mut moved = Vec::new();
        for vip in &mut self.vips {
            let Some(spec) = &vip.spec.load else {
                continue;
            };
            // A backend out of the table (down, drained) keeps its step until it returns.
            for b in vip.backends.iter_mut().filter(|b| b.takes_new_flows()) {
                if let Some((from, to)) = b.load.advance(spec, now) {
                    let why = b.load.target(spec).1;
                    moved.push((vip.spec.addr, b.spec.address, from, to, why));
                }
            }
        }
        moved
    }

    /// Takes a count of the active flows: the backends of VIPs with `flows = true` get
    /// their share of their VIP's flows, which caps the step of an overloaded one.
    pub fn observe_flows(&mut self, per_backend: &HashMap<u32, u64>) {
        for vip in &mut self.vips {
            let Some(spec) = vip.spec.load.clone().filter(|l| l.flows) else {
                continue;
            };
            let (role, _) = vip.serving();
            let in_play: Vec<usize> = (0..vip.backends.len())
                .filter(|&i| {
                    let b = &vip.backends[i];
                    Some(b.spec.role) == role && b.takes_new_flows()
                })
                .collect();
            let counts: Vec<(u32, u64)> = in_play
                .iter()
                .map(|&i| {
                    let b = &vip.backends[i];
                    let weight = b.spec.weight * b.load.agent_step(&spec);
                    (weight, per_backend.get(&b.id).copied().unwrap_or(0))
                })
                .collect();
            let shares = load::shares(&counts);
            for (i, b) in vip.backends.iter_mut().enumerate() {
                let share = in_play.iter().position(|&j| j == i).and_then(|k| shares[k]);
                b.load.observe_share(&spec, share);
            }
        }
    }

    /// Sets the MAC of every backend with `address` that has no static MAC. Returns how many
    /// changed.
    pub fn set_neighbour(&mut self, ifindex: u32, address: IpAddr, mac: MacAddr) -> usize {
        let mut changed = 0;
        for b in self.vips.iter_mut().flat_map(|v| v.backends.iter_mut()) {
            if b.spec.address == address
                && b.ifindex == ifindex
                && b.spec.mac.is_none()
                && b.mac != Some(mac)
            {
                b.mac = Some(mac);
                changed += 1;
            }
        }
        changed
    }

    /// Addresses whose MAC comes from the neighbour table.
    pub fn dynamic_addresses(&self) -> Vec<(u32, IpAddr)> {
        let mut v: Vec<(u32, IpAddr)> = self
            .vips
            .iter()
            .flat_map(|v| v.backends.iter())
            .filter(|b| b.spec.mac.is_none() && b.ifindex != 0)
            .map(|b| (b.ifindex, b.spec.address))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// For tests and status: the backend (VIP, address) if present.
    pub fn backend(&self, vip: &VipAddr, address: IpAddr) -> Option<&Backend> {
        self.vip(vip)?.backend(address)
    }

    /// Mutable access for the daemon (where a backend is reached from, found asynchronously).
    pub fn backend_entry(&mut self, vip: &VipAddr, address: IpAddr) -> Option<&mut Backend> {
        self.backend_mut(vip, address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        runtime::health::CheckResult,
        spec::model::{CheckKind, CheckSpec},
    };

    fn bspec(last: u8, role: Role) -> BackendSpec {
        BackendSpec {
            mac: Some(MacAddr([2, 0, 0, 0, 0, last])),
            role,
            check: CheckSpec {
                kind: CheckKind::Tcp,
                ..CheckSpec::none()
            },
            ..BackendSpec::plain(IpAddr::from([198, 18, 0, last]))
        }
    }

    /// `[vip.load]` with an agent on port 5555, steps 2/8..=8/8, one a second.
    fn load_spec(flows: bool) -> LoadSpec {
        LoadSpec {
            agent: Some(AgentSpec {
                port: 5555,
                interval: Duration::from_secs(2),
                timeout: Duration::from_secs(1),
                send: None,
                path: None,
            }),
            flows,
            weight_interval: Duration::from_secs(1),
            min_eighths: 2,
            max_eighths: 8,
        }
    }

    fn vspec(backends: Vec<BackendSpec>) -> VipSpec {
        VipSpec::plain("web", "198.18.0.100:80/tcp".parse().unwrap(), backends)
    }

    fn fail(state: &mut State, last: u8) {
        let addr = vspec(vec![]).addr;
        let token = state
            .backend(&addr, IpAddr::from([198, 18, 0, last]))
            .unwrap()
            .check_token;
        let r = CheckResult {
            ok: false,
            at: SystemTime::now(),
            latency_us: 0,
            message: "refused".into(),
        };
        state.record_check(token, r);
    }

    /// The last octets of the entries' addresses, in their order.
    fn lasts(entries: &[maglev::Entry]) -> Vec<u8> {
        entries
            .iter()
            .map(|e| match e.address {
                IpAddr::V4(a) => a.octets()[3],
                _ => 0,
            })
            .collect()
    }

    fn serving(state: &State) -> (Option<Role>, Vec<u8>) {
        let (role, entries) = state.vips[0].serving();
        let mut lasts = lasts(&entries);
        lasts.sort();
        (role, lasts)
    }

    #[test]
    fn primaries_then_backups_then_sorry_then_drop() {
        let now = SystemTime::now();
        let mut s = State::new(4, 16, Duration::from_secs(300));
        let mut sorry = bspec(30, Role::Sorry);
        sorry.check = CheckSpec::none();
        s.reconcile(
            &[vspec(vec![
                bspec(11, Role::Primary),
                bspec(12, Role::Primary),
                bspec(21, Role::Backup),
                sorry,
            ])],
            &TableSizing::default(),
            now,
        );
        assert_eq!(serving(&s), (Some(Role::Primary), vec![11, 12]));
        fail(&mut s, 11);
        assert_eq!(serving(&s), (Some(Role::Primary), vec![12]));
        fail(&mut s, 12);
        assert_eq!(serving(&s), (Some(Role::Backup), vec![21]));
        fail(&mut s, 21);
        assert_eq!(
            serving(&s),
            (Some(Role::Sorry), vec![30]),
            "an unchecked sorry server is up"
        );
        // A failed backend no longer keeps flows; the data path must let them move.
        let b11 = s
            .backend(&vspec(vec![]).addr, IpAddr::from([198, 18, 0, 11]))
            .unwrap();
        assert!(!b11.keeps_flows());
    }

    /// A failed or drained primary stands by in the plan (its slots lent, the table built
    /// around it); backups of a serving primary set do not; once the backups serve, the
    /// failed primaries are out of the table altogether.
    #[test]
    fn primaries_that_take_no_new_flows_stand_by_in_the_plan() {
        let now = SystemTime::now();
        let mut s = State::new(4, 16, Duration::from_secs(300));
        let mut drained = bspec(13, Role::Primary);
        drained.drained = true;
        s.reconcile(
            &[vspec(vec![
                bspec(11, Role::Primary),
                bspec(12, Role::Primary),
                drained,
                bspec(21, Role::Backup),
            ])],
            &TableSizing::default(),
            now,
        );
        fail(&mut s, 11);
        let d = crate::plan::desired(&s);
        let v = &d.vips[&vspec(vec![]).addr];
        assert_eq!(lasts(&v.entries), vec![12]);
        assert_eq!(lasts(&v.standby), vec![11, 13]);
        // At their full weight whatever step they had: a step is this node's own.
        assert!(v.standby.iter().all(|e| e.weight == load::FULL), "{v:?}");
        assert_eq!(
            v.table(),
            maglev::build_around(&v.entries, &v.standby, v.table_size)
        );
        assert!(v.table().iter().all(|&id| id == v.entries[0].id));
        fail(&mut s, 12);
        let d = crate::plan::desired(&s);
        let v = &d.vips[&vspec(vec![]).addr];
        assert_eq!((lasts(&v.entries), lasts(&v.standby)), (vec![21], vec![]));
    }

    #[test]
    fn drained_and_inhibited_primaries_do_not_count_but_keep_flows() {
        let now = SystemTime::now();
        let mut s = State::new(4, 16, Duration::from_secs(300));
        let mut drained = bspec(11, Role::Primary);
        drained.drained = true;
        let mut inhibited = bspec(12, Role::Primary);
        inhibited.inhibit_on_failure = true;
        s.reconcile(
            &[vspec(vec![drained, inhibited, bspec(21, Role::Backup)])],
            &TableSizing::default(),
            now,
        );
        assert_eq!(serving(&s), (Some(Role::Primary), vec![12]));
        fail(&mut s, 12);
        assert_eq!(
            serving(&s),
            (Some(Role::Backup), vec![21]),
            "drained + inhibited primaries leave backups in charge"
        );
        let addr = vspec(vec![]).addr;
        assert!(
            s.backend(&addr, IpAddr::from([198, 18, 0, 11]))
                .unwrap()
                .keeps_flows()
        );
        assert!(
            s.backend(&addr, IpAddr::from([198, 18, 0, 12]))
                .unwrap()
                .keeps_flows()
        );
        let d = crate::plan::desired(&s);
        assert_eq!(d.vips[&addr].entries.len(), 1);
    }

    #[test]
    fn editing_a_check_keeps_the_backends_health() {
        let now = SystemTime::now();
        let mut s = State::new(4, 16, Duration::from_secs(300));
        let config = vspec(vec![bspec(11, Role::Primary), bspec(12, Role::Primary)]);
        s.reconcile(std::slice::from_ref(&config), &TableSizing::default(), now);
        // .11 passes once (its first result decides: up), then fails twice: down.
        let addr = config.addr;
        let token = |s: &State| {
            s.backend(&addr, IpAddr::from([198, 18, 0, 11]))
                .unwrap()
                .check_token
        };
        let result = |ok| CheckResult {
            ok,
            at: SystemTime::now(),
            latency_us: 0,
            message: String::new(),
        };
        s.record_check(token(&s), result(true));
        fail(&mut s, 11);
        fail(&mut s, 11);
        assert_eq!(serving(&s), (Some(Role::Primary), vec![12]));
        // The operator tunes the dead backend's check: it stays down (and keeps its since)...
        let since = s
            .backend(&addr, IpAddr::from([198, 18, 0, 11]))
            .unwrap()
            .health
            .since;
        let mut tuned = config.clone();
        tuned.backends[0].check.interval = Duration::from_millis(200);
        tuned.backends[0].check.rise = 2;
        let r = s.reconcile(std::slice::from_ref(&tuned), &TableSizing::default(), now);
        assert_eq!(r.added.len(), 1, "the new check must start");
        let b11 = s.backend(&addr, IpAddr::from([198, 18, 0, 11])).unwrap();
        assert!(!b11.health.up && b11.health.since == since);
        assert_eq!(serving(&s), (Some(Role::Primary), vec![12]));
        // ...and comes up only after `rise` successes of the new check.
        s.record_check(token(&s), result(true));
        assert_eq!(serving(&s), (Some(Role::Primary), vec![12]));
        s.record_check(token(&s), result(true));
        assert_eq!(serving(&s), (Some(Role::Primary), vec![11, 12]));
        // An up backend whose check is edited needs `fall` failures to go down.
        let mut again = tuned.clone();
        again.backends[1].check.fall = 3;
        s.reconcile(std::slice::from_ref(&again), &TableSizing::default(), now);
        fail(&mut s, 12);
        fail(&mut s, 12);
        assert_eq!(serving(&s), (Some(Role::Primary), vec![11, 12]));
        fail(&mut s, 12);
        assert_eq!(serving(&s), (Some(Role::Primary), vec![11]));
    }

    #[test]
    fn reconcile_keeps_ids_and_quarantines_freed_ones() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut s = State::new(4, 3, Duration::from_secs(300));
        s.reconcile(
            &[vspec(vec![
                bspec(11, Role::Primary),
                bspec(12, Role::Primary),
            ])],
            &TableSizing::default(),
            t0,
        );
        let id12 = s
            .backend(&vspec(vec![]).addr, IpAddr::from([198, 18, 0, 12]))
            .unwrap()
            .id;
        // Remove .11, add .13: .12 keeps its id; .13 gets a fresh id, not .11's.
        s.reconcile(
            &[vspec(vec![
                bspec(12, Role::Primary),
                bspec(13, Role::Primary),
            ])],
            &TableSizing::default(),
            t0,
        );
        let addr = vspec(vec![]).addr;
        assert_eq!(
            s.backend(&addr, IpAddr::from([198, 18, 0, 12])).unwrap().id,
            id12
        );
        assert_eq!(
            s.backend(&addr, IpAddr::from([198, 18, 0, 13])).unwrap().id,
            2
        );
        // All 3 ids are used or quarantined: a fourth backend must wait.
        let r = s.reconcile(
            &[vspec(vec![
                bspec(12, Role::Primary),
                bspec(13, Role::Primary),
                bspec(14, Role::Primary),
            ])],
            &TableSizing::default(),
            t0,
        );
        assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
        // After the idle timeout, .11's id (0) is reusable.
        let later = t0 + Duration::from_secs(400);
        let r = s.reconcile(
            &[vspec(vec![
                bspec(12, Role::Primary),
                bspec(13, Role::Primary),
                bspec(14, Role::Primary),
            ])],
            &TableSizing::default(),
            later,
        );
        assert!(r.errors.is_empty());
        assert_eq!(
            s.backend(&addr, IpAddr::from([198, 18, 0, 14])).unwrap().id,
            0
        );
    }

    #[test]
    fn load_steps_scale_table_weights_and_agent_words_act_as_health() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut s = State::new(4, 16, Duration::from_secs(300));
        let mut v = vspec(vec![bspec(11, Role::Primary), bspec(12, Role::Primary)]);
        v.load = Some(load_spec(false));
        s.reconcile(std::slice::from_ref(&v), &TableSizing::DEFAULT, now);
        let b = &s.vips[0].backends[0];
        let token = b.agent_token;
        assert!(token != 0 && token != b.check_token);
        let said = |line: &str| Reading {
            line: Some(line.into()),
            error: String::new(),
            at: now,
        };
        let news = s.record_agent(token, said("50%")).expect("news");
        assert!(!news.flows_changed, "a weight is no health change");
        assert!(s.record_agent(token, said("50%")).is_none(), "said again");
        assert_eq!(s.step_loads(now).len(), 1, "the first step at once");
        assert!(s.step_loads(now).is_empty(), "one step per weight_interval");
        let moved = s.step_loads(now + Duration::from_secs(1));
        assert_eq!((moved[0].2, moved[0].3), (7, 6));
        let weights = |s: &State| {
            let (_, e) = s.vips[0].serving();
            let mut w: Vec<(u32, u32)> = e.iter().map(|e| (e.id, e.weight)).collect();
            w.sort();
            w.into_iter().map(|(_, w)| w).collect::<Vec<_>>()
        };
        assert_eq!(weights(&s), vec![6, 8], "weight x step");
        let configured: Vec<u32> = s.vips[0]
            .serving_as_configured()
            .iter()
            .map(|e| e.weight)
            .collect();
        assert_eq!(configured, vec![1, 1]);
        assert!(s.vips[0].load_adjusted());

        let news = s.record_agent(token, said("drain")).unwrap();
        assert!(news.flows_changed);
        let b = &s.vips[0].backends[0];
        assert!(
            !b.takes_new_flows() && b.keeps_flows(),
            "drained: its flows stay"
        );
        assert_eq!(b.effective_weight(), 0.0);
        assert_eq!(b.load.down_changed_ms, None, "drain is not down");
        let later = now + Duration::from_secs(7);
        s.record_agent(
            token,
            Reading {
                at: later,
                ..said("down")
            },
        );
        assert!(
            !s.vips[0].backends[0].keeps_flows(),
            "down: as a failed check"
        );
        let mut b = s.vips[0].backends[0].clone();
        assert_eq!(b.load.down_changed_ms, Some(crate::runtime::unix_ms(later)));
        // The check came up before: down (agent) since the agent said so.
        b.health.since = now;
        assert!(b.health.up);
        assert_eq!(b.health_since_ms(), crate::runtime::unix_ms(later));
        // The check fails while the agent says down: down since the check said so...
        let mut failed = b.clone();
        failed.health.up = false;
        failed.health.since = later + Duration::from_secs(5);
        assert_eq!(
            failed.health_since_ms(),
            crate::runtime::unix_ms(later + Duration::from_secs(5))
        );
        // ... and still when it fails before the agent's word (the check's time stands).
        failed.health.since = later - Duration::from_secs(5);
        assert_eq!(
            failed.health_since_ms(),
            crate::runtime::unix_ms(later - Duration::from_secs(5))
        );
        // The check comes back after the agent's word: up or down (agent) since then.
        let mut back = b.clone();
        back.health.since = later + Duration::from_secs(9);
        assert_eq!(
            back.health_since_ms(),
            crate::runtime::unix_ms(later + Duration::from_secs(9))
        );
        let unreachable = Reading {
            line: None,
            error: "connect: refused".into(),
            at: now,
        };
        let news = s.record_agent(token, unreachable).unwrap();
        assert!(news.unreachable.is_some() && !news.flows_changed);
        assert!(
            s.vips[0].backends[0].load.said.down,
            "an unreachable agent changes nothing"
        );

        // Without [vip.load]: the configured weights at once, and no agent. The agent's down
        // ends with it: the backend is up since this reconcile.
        v.load = None;
        let removed = SystemTime::now() + Duration::from_secs(60);
        let r = s.reconcile(std::slice::from_ref(&v), &TableSizing::DEFAULT, removed);
        assert!(r.stopped_tokens.contains(&token));
        let b = &s.vips[0].backends[0];
        assert_eq!((b.agent_token, b.load.step), (0, 8));
        assert_eq!(b.health_since_ms(), crate::runtime::unix_ms(removed));
        assert!(b.takes_new_flows());
        assert_eq!(weights(&s), vec![8, 8]);
        assert!(!s.vips[0].load_adjusted());
    }

    #[test]
    fn load_settings_changes_keep_or_forget_what_they_should() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut s = State::new(4, 16, Duration::from_secs(300));
        let spec = load_spec(true);
        let mut v = vspec(vec![bspec(11, Role::Primary), bspec(12, Role::Primary)]);
        v.load = Some(spec.clone());
        s.reconcile(std::slice::from_ref(&v), &TableSizing::DEFAULT, now);
        let token = s.vips[0].backends[0].agent_token;
        let said = |line: &str| Reading {
            line: Some(line.into()),
            error: String::new(),
            at: now,
        };
        s.record_agent(token, said("50%"));
        // Flows in proportion to the agent's wish (1 x 4/8 against 1 x 8/8): nobody is
        // overloaded, although the second holds twice the first.
        let (a, b) = (s.vips[0].backends[0].id, s.vips[0].backends[1].id);
        s.observe_flows(&HashMap::from([(a, 40), (b, 80)]));
        assert!(s.vips[0].backends.iter().all(|x| x.load.flow_cap.is_none()));
        // The first holds far more than that: capped.
        s.observe_flows(&HashMap::from([(a, 200), (b, 80)]));
        assert!(s.vips[0].backends[0].load.flow_cap.is_some());

        // The same agent asked more slowly: a new task, and what it said stands.
        s.record_agent(token, said("maint"));
        let mut slower = spec.clone();
        slower.agent.as_mut().unwrap().interval = Duration::from_secs(3);
        v.load = Some(slower.clone());
        let r = s.reconcile(std::slice::from_ref(&v), &TableSizing::DEFAULT, now);
        let x = &s.vips[0].backends[0];
        assert!(r.stopped_tokens.contains(&token) && x.agent_token != token);
        assert_eq!(x.load.said.admin, crate::runtime::agent::Admin::Maint);
        assert!(!x.takes_new_flows(), "still in maintenance");
        // flows off: the cap goes with it.
        slower.flows = false;
        v.load = Some(slower.clone());
        s.reconcile(std::slice::from_ref(&v), &TableSizing::DEFAULT, now);
        assert_eq!(s.vips[0].backends[0].load.flow_cap, None);
        // Another agent port: what the old one said is forgotten.
        slower.agent.as_mut().unwrap().port = 5556;
        v.load = Some(slower);
        s.reconcile(std::slice::from_ref(&v), &TableSizing::DEFAULT, now);
        let x = &s.vips[0].backends[0];
        assert_eq!(x.load.said, Default::default());
        assert!(x.takes_new_flows());
    }

    #[test]
    fn a_backend_may_name_its_own_agent_port_or_none() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut s = State::new(4, 16, Duration::from_secs(300));
        let mut own = bspec(12, Role::Primary);
        own.agent_port = Some(6000);
        let mut none = bspec(13, Role::Primary);
        none.agent_port = Some(0);
        let mut v = vspec(vec![bspec(11, Role::Primary), own, none]);
        let load = load_spec(false);
        v.load = Some(load.clone());
        s.reconcile(std::slice::from_ref(&v), &TableSizing::DEFAULT, now);
        let ports: Vec<Option<u16>> = v
            .backends
            .iter()
            .map(|b| load.agent_for(b).map(|a| a.port))
            .collect();
        assert_eq!(ports, vec![Some(5555), Some(6000), None]);
        let tokens: Vec<u64> = s.vips[0].backends.iter().map(|b| b.agent_token).collect();
        assert!(
            tokens[0] != 0 && tokens[1] != 0 && tokens[2] == 0,
            "{tokens:?}"
        );
        // Its own port changed: a new task, and the old port's words are forgotten.
        s.record_agent(
            tokens[1],
            Reading {
                line: Some("drain".into()),
                error: String::new(),
                at: now,
            },
        );
        v.backends[1].agent_port = Some(6001);
        let r = s.reconcile(std::slice::from_ref(&v), &TableSizing::DEFAULT, now);
        let b = &s.vips[0].backends[1];
        assert!(r.stopped_tokens.contains(&tokens[1]) && b.agent_token != tokens[1]);
        assert!(b.takes_new_flows(), "the new agent has said nothing yet");
        assert_eq!(
            s.vips[0].backends[0].agent_token, tokens[0],
            "others untouched"
        );
    }
}
