//! The map writer: the only code that decides what dsr's maps hold. It takes a whole
//! [`Desired`], diffs it against what the kernel's maps hold (read from the kernel when the
//! writer is created, so an adopted data path's leftovers are seen and removed, then kept up
//! to date with every successful write) and writes only the difference, in an order that
//! never shows the data path a half state:
//!
//! 1. TX ports and backend entries that are new or changed, before any table points at them;
//! 2. each VIP whose table input or options changed: the table into free TABLES chunks, then one
//!    VIPS update switches it (and its fragment alias);
//! 3. VIP_FILTER and VIP_ADDRS for the VIPs now present;
//! 4. then what is no longer wanted: VIPS keys, VIP_ADDRS entries, backend entries, TX ports.
//!
//! A write that fails is left for the next [`Writer::apply`] (the daemon calls it on every
//! event and every second), counted in `failures` and shown as `pending`.
//!
//! Tables are built before they are written ([`Writer::missing`], [`Writer::add_built`]): a
//! table of millions of slots takes a second, so the daemon builds off its loop and
//! [`Writer::apply`] leaves a VIP whose table is not built yet on its old one, like a
//! VIP whose write failed (nothing it may still name is removed meanwhile).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

use anyhow::{Result, anyhow};
use dsr_common::{
    BACKEND_F_KEEP_FLOWS, BACKEND_F_PRESENT, BACKEND_F_VALID, Backend, VIP_F_FRAGMENTS,
    VIP_F_NO_CONNTRACK, VipAddrKey, VipInfo, VipKey,
};

use super::{Datapath, vip_addr_flags, vip_key};
use crate::{
    plan::{BuiltTable, Desired, DesiredBackend, DesiredVip, TableInput, VipOptions, maglev},
    spec::model::VipAddr,
};

pub struct Writer {
    /// VIPS entries (fragment aliases included) as the kernel holds them.
    vips: HashMap<VipKey, VipInfo>,
    /// What each VIP's active table was built from (its size and entries), when this writer
    /// wrote it. A VIP found in the kernel at start has no entry here, so its table is
    /// rebuilt once.
    built: HashMap<VipAddr, TableInput>,
    /// Tables built for VIPs that need one and not written yet.
    prebuilt: HashMap<TableInput, Arc<BuiltTable>>,
    /// What each VIP's last build was for. When the VIP changed again while it was built,
    /// that table is still written (newer than the kernel's): under changes faster than a
    /// build, the kernel follows a build behind instead of never.
    requested: HashMap<VipAddr, TableRequest>,
    /// Requests are numbered as made ([`Writer::missing`]); each VIP's written table has the
    /// number of the newest request it answers, and an older build is never written over it.
    next_request: u64,
    written_request: HashMap<VipAddr, u64>,
    addrs: HashMap<VipAddrKey, u32>,
    backends: BTreeMap<u32, Backend>,
    tx_ports: BTreeMap<u32, u32>,
    /// Each VIP's table digest (`maglev::digest`), for the tables this writer wrote.
    pub digests: HashMap<VipAddr, u64>,
    /// The digest of the table its configured weights give, where load-aware weights made
    /// the active one differ (peers agree on this one while their loads differ).
    pub configured_digests: HashMap<VipAddr, u64>,
    /// Each VIP's active table as slots per backend id, for the tables this writer wrote
    /// (status shows each backend's share; a standing-by backend's slots are lent).
    pub slots: HashMap<VipAddr, HashMap<u32, u32>>,
    /// Map writes that failed since the writer was created.
    pub failures: u64,
    /// Writes that failed in the last apply and wait for the next.
    pub pending: usize,
    /// VIPs that the last apply left on their old table, their new one not built yet.
    pub waiting: usize,
}

/// A VIP's table to build: its inputs (`configured`: for the table of its configured weights,
/// where load-aware weights changed them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableRequest {
    pub vip: VipAddr,
    pub input: TableInput,
    pub configured: Option<TableInput>,
    number: u64,
}

impl TableRequest {
    /// What building its tables costs, in slots built ([`TableInput::cost`]).
    pub fn cost(&self) -> u64 {
        [Some(&self.input), self.configured.as_ref()]
            .into_iter()
            .flatten()
            .map(TableInput::cost)
            .sum()
    }
}

/// Splits `requests` into those whose costs add up to at most `budget` (with `one`: at least
/// one) and the rest.
pub fn take_by_cost(
    requests: Vec<TableRequest>,
    budget: u64,
    one: bool,
) -> (Vec<TableRequest>, Vec<TableRequest>) {
    let (mut taken, mut rest, mut spent) = (Vec::new(), Vec::new(), 0);
    for r in requests {
        let cost = r.cost();
        if spent + cost <= budget || (one && taken.is_empty()) {
            spent += cost;
            taken.push(r);
        } else {
            rest.push(r);
        }
    }
    (taken, rest)
}

/// Tables built for [`Writer::missing`]'s requests.
#[derive(Debug, Default)]
pub struct Builds {
    requests: Vec<TableRequest>,
    tables: Vec<(TableInput, BuiltTable)>,
}

/// Builds the tables `requests` name, each distinct input once (the slow part: for the
/// daemon, off its loop).
pub fn build(requests: Vec<TableRequest>, seed: u32) -> Builds {
    let mut tables: Vec<(TableInput, BuiltTable)> = Vec::new();
    for r in &requests {
        for input in [Some(&r.input), r.configured.as_ref()]
            .into_iter()
            .flatten()
        {
            if !tables.iter().any(|(i, _)| i == input) {
                tables.push((input.clone(), input.build_all(seed)));
            }
        }
    }
    Builds { requests, tables }
}

/// A VIP switched to a new table.
#[derive(Debug)]
pub struct TableSwitch {
    pub vip: VipAddr,
    /// Backends in the new table, and backends standing by (out of it: their slots lent).
    pub backends: usize,
    pub standby: usize,
    pub size: usize,
    /// Slots whose backend (by address) changed; `None` when the old table's backends are
    /// not known (the first write after adopting a running data path) or its size differs.
    pub moved: Option<usize>,
    /// The table's size changed (the config's backend count or `table_size` did): the old
    /// size, and the share of new flows that move.
    pub resized: Option<(usize, f64)>,
}

/// What one apply did.
#[derive(Debug, Default)]
pub struct Applied {
    /// VIPs whose table was rebuilt and switched.
    pub tables: Vec<TableSwitch>,
    /// Writes that failed (retried by the next apply).
    pub errors: Vec<String>,
}

impl Writer {
    /// The size of the VIP's active table as the kernel's VIPS entry says (0: an empty
    /// table, the VIP drops); `None` when the kernel holds no entry for it.
    pub fn active_size(&self, addr: &VipAddr) -> Option<u32> {
        self.vips.get(&vip_key(addr)).map(|i| i.table_size)
    }

    /// Notes what `built`, now the VIP's active table, was built from (`input`), and its
    /// digests. `configured`: the table of its configured weights, where they differ.
    fn remember(
        &mut self,
        addr: &VipAddr,
        (input, number): (&TableInput, u64),
        built: &BuiltTable,
        configured: Option<&BuiltTable>,
    ) {
        self.built.insert(*addr, input.clone());
        self.written_request.insert(*addr, number);
        self.digests.insert(*addr, built.digest);
        self.slots.insert(*addr, built.slots.clone());
        match configured {
            Some(c) => self.configured_digests.insert(*addr, c.digest),
            None => self.configured_digests.remove(addr),
        };
    }

    /// Forgets what the VIP's table was built from, after a switch that may have half
    /// happened: it is no longer known which table the kernel's entries point at.
    fn forget(&mut self, addr: &VipAddr) {
        self.built.remove(addr);
        self.digests.remove(addr);
        self.slots.remove(addr);
        self.configured_digests.remove(addr);
    }

    /// Whether the kernel holds the VIP as `vip` wants it, table included.
    fn current(&self, addr: &VipAddr, vip: &DesiredVip) -> bool {
        let alias = (vip.options.fragments && addr.port != 0).then(|| super::fragment_alias(addr));
        self.same_entry(addr, vip, alias)
            && self
                .built
                .get(addr)
                .is_some_and(|input| vip.is_built_from(input))
    }

    /// Whether the kernel's VIPS entries for the VIP (and its fragment alias) already say
    /// what `vip` wants besides the table.
    fn same_entry(&self, addr: &VipAddr, vip: &DesiredVip, alias: Option<VipKey>) -> bool {
        self.vips.get(&vip_key(addr)).is_some_and(|h| {
            h.id == vip.id
                && h.flags == vip_flags(vip.options)
                && h.hash_fields == vip.options.hash_fields
        }) && alias.is_none_or(|a| self.vips.get(&a).is_some_and(|i| i.id == vip.id))
    }

    /// The VIPs whose table `desired` needs and that is neither written nor built: build
    /// them ([`build`], under [`Datapath::hash_seed`]) and hand them to [`Writer::add_built`].
    pub fn missing(&mut self, desired: &Desired) -> Vec<TableRequest> {
        self.next_request += 1;
        // A VIP found as wanted answers every request so far (it may have changed and come
        // back while a build for the change ran: that build is older than the kernel's).
        for (addr, vip) in &desired.vips {
            if self.current(addr, vip) {
                self.written_request.insert(*addr, self.next_request);
            }
        }
        desired
            .vips
            .iter()
            .filter(|(addr, vip)| !self.current(addr, vip))
            .map(|(addr, vip)| TableRequest {
                vip: *addr,
                input: vip.input(),
                configured: vip.configured_input(),
                number: self.next_request,
            })
            .filter(|r| self.ready(r).is_none())
            .collect()
    }

    /// The tables of `r`, when built.
    fn ready(&self, r: &TableRequest) -> Option<(Arc<BuiltTable>, Option<Arc<BuiltTable>>)> {
        let table = self.prebuilt.get(&r.input)?.clone();
        let configured = match &r.configured {
            Some(c) => Some(self.prebuilt.get(c)?.clone()),
            None => None,
        };
        Some((table, configured))
    }

    /// Which of `candidates` the tables the kernel's VIPS entries point at may name, or
    /// `None` when one of those tables cannot be read.
    fn named_backends(
        &self,
        dp: &Datapath,
        desired: &Desired,
        candidates: &HashSet<u32>,
    ) -> Option<HashSet<u32>> {
        let mut named = HashSet::new();
        if candidates.is_empty() {
            return Some(named);
        }
        let mut covered = HashSet::new();
        for addr in desired.vips.keys() {
            let key = vip_key(addr);
            // What this writer wrote for the VIP is what its entry points at (a failed
            // switch forgets it: the kernel's table says then).
            if let Some(input) = self.built.get(addr)
                && dp.vip_info(&key).is_some()
            {
                named.extend(
                    input
                        .taking
                        .iter()
                        .map(|e| e.id)
                        .filter(|id| candidates.contains(id)),
                );
                covered.insert(key);
                // A fragment alias pointing at the same table is named by the same.
                let alias = super::fragment_alias(addr);
                if alias_on_table(dp, &key, &alias) {
                    covered.insert(alias);
                }
            }
        }
        let mut missing = candidates.len() - named.len();
        if missing == 0 {
            return Some(named);
        }
        // Every other entry the kernel holds (adopted at start and not rewritten yet, a
        // failed switch or removal, an alias left on an older table, one written by anything
        // but this writer): its table says. A table may have millions of slots and this runs
        // on every apply while such an entry lasts: each slot is one index into a bitmap of
        // the candidates not yet found, and the walk stops once all are.
        let uncovered: Vec<VipKey> = dp
            .held_vips()
            .ok()?
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| !covered.contains(k))
            .collect();
        if uncovered.is_empty() {
            return Some(named);
        }
        let mut left = vec![false; candidates.iter().max().map_or(0, |&m| m as usize + 1)];
        for &id in candidates.difference(&named) {
            left[id as usize] = true;
        }
        for key in &uncovered {
            if missing == 0 {
                break;
            }
            if dp.vip_info(key).is_some() {
                for &id in dp.table_of(key).ok()? {
                    if let Some(l) = left.get_mut(id as usize)
                        && *l
                    {
                        *l = false;
                        named.insert(id);
                        missing -= 1;
                        if missing == 0 {
                            break;
                        }
                    }
                }
            }
        }
        Some(named)
    }

    /// Takes tables built for [`Writer::missing`].
    pub fn add_built(&mut self, built: Builds) {
        self.prebuilt
            .extend(built.tables.into_iter().map(|(i, b)| (i, Arc::new(b))));
        for r in built.requests {
            let newer = |n: Option<u64>| n.is_none_or(|n| n < r.number);
            if newer(self.requested.get(&r.vip).map(|o| o.number))
                && newer(self.written_request.get(&r.vip).copied())
            {
                self.requested.insert(r.vip, r);
            }
        }
    }

    /// What to switch VIP `addr` to: its table as `vip` wants it, else the one last built for
    /// it while it changed again (`false`: not final), when that still names only backends
    /// of the VIP and has its size.
    /// The request's number comes with the input.
    #[allow(clippy::type_complexity)]
    fn next_table(
        &self,
        addr: &VipAddr,
        vip: &DesiredVip,
        desired: &Desired,
    ) -> Option<(
        (TableInput, u64),
        Arc<BuiltTable>,
        Option<Arc<BuiltTable>>,
        bool,
    )> {
        let wanted = TableRequest {
            vip: *addr,
            input: vip.input(),
            configured: vip.configured_input(),
            // What the VIP wants now answers every request made so far.
            number: self.next_request,
        };
        if let Some((t, c)) = self.ready(&wanted) {
            return Some(((wanted.input, wanted.number), t, c, true));
        }
        let older = self.requested.get(addr)?;
        // It may give new flows only to backends that take them now or already did in the
        // kernel's table (not to one that came up for it and went down again since).
        let of_vip = |id: &u32| desired.backends.get(id).is_some_and(|b| b.vip_id == vip.id);
        let taking = |es: &[maglev::Entry], id: u32| es.iter().any(|e| e.id == id);
        let held = self.built.get(addr).map_or(&[][..], |i| &i.taking[..]);
        if older.input.size != vip.table_size
            || !older
                .input
                .taking
                .iter()
                .all(|e| of_vip(&e.id) && (taking(&vip.entries, e.id) || taking(held, e.id)))
        {
            return None;
        }
        let (t, c) = self.ready(older)?;
        Some(((older.input.clone(), older.number), t, c, false))
    }

    /// [`Writer::apply`] with every table built here first, as a result (an error lists every
    /// failed write): for callers that may block.
    pub fn apply_all(&mut self, dp: &mut Datapath, desired: &Desired) -> Result<Applied> {
        let built = build(self.missing(desired), dp.hash_seed());
        self.add_built(built);
        self.apply(dp, desired).into_result()
    }

    /// Reads what the kernel's maps hold now.
    pub fn read(dp: &Datapath) -> Result<Writer> {
        Ok(Writer {
            vips: dp.held_vips()?.into_iter().collect(),
            built: HashMap::new(),
            prebuilt: HashMap::new(),
            requested: HashMap::new(),
            next_request: 0,
            written_request: HashMap::new(),
            addrs: dp.held_vip_addrs()?.into_iter().collect(),
            backends: dp.held_backends()?.into_iter().collect(),
            tx_ports: dp.held_tx_ports().into_iter().collect(),
            digests: HashMap::new(),
            configured_digests: HashMap::new(),
            slots: HashMap::new(),
            failures: 0,
            pending: 0,
            waiting: 0,
        })
    }

    /// Makes the maps hold `desired`, writing only what differs. A VIP whose new table is
    /// not built ([`Writer::missing`]) stays on its old one.
    pub fn apply(&mut self, dp: &mut Datapath, desired: &Desired) -> Applied {
        let mut out = Applied::default();
        // Backends whose entry could not be written: no table may point at them yet.
        let mut failed_backends = HashSet::new();
        let mut waiting = HashSet::new();
        let mut fail = |what: String, e: anyhow::Error| out_errors(&mut out.errors, what, e);
        // The kernel deletes a TX_PORTS entry when its interface goes away: read them afresh
        // (63 lookups) rather than trust what was written.
        self.tx_ports = dp.held_tx_ports().into_iter().collect();

        for (&port, &ifindex) in &desired.tx_ports {
            if self.tx_ports.get(&port) != Some(&ifindex) {
                match dp.set_tx_port(port, ifindex) {
                    Ok(()) => {
                        self.tx_ports.insert(port, ifindex);
                    }
                    Err(e) => fail(format!("TX port {port}"), e),
                }
            }
        }
        for (&id, b) in &desired.backends {
            let entry = backend_entry(b);
            if self.backends.get(&id) == Some(&entry) {
                continue;
            }
            // A backend id the kernel did not hold is new: its counters start from zero.
            let reset = if self.backends.contains_key(&id) {
                Ok(())
            } else {
                dp.reset_backend_stats(id)
            };
            match reset.and_then(|()| dp.set_backend(id, entry)) {
                Ok(()) => {
                    self.backends.insert(id, entry);
                }
                Err(e) => {
                    failed_backends.insert(id);
                    fail(format!("backend {id}"), e)
                }
            }
        }
        let mut wanted_keys = HashSet::new();
        for (addr, vip) in &desired.vips {
            let key = vip_key(addr);
            wanted_keys.insert(key);
            let alias =
                (vip.options.fragments && addr.port != 0).then(|| super::fragment_alias(addr));
            if let Some(a) = alias {
                wanted_keys.insert(a);
            }
            if self.current(addr, vip) {
                continue;
            }
            let held = self.vips.get(&key);
            let Some((input, built, configured, last)) = self.next_table(addr, vip, desired) else {
                waiting.insert(*addr);
                continue;
            };
            if !last {
                waiting.insert(*addr);
            }
            let (input, number) = input;
            if let Some(e) = input
                .taking
                .iter()
                .find(|e| failed_backends.contains(&e.id))
            {
                fail(
                    format!("VIP {addr}"),
                    anyhow!("its table waits for backend {} to be written", e.id),
                );
                continue;
            }
            if held.is_none_or(|h| h.id != vip.id)
                && let Err(e) = dp.reset_vip_stats(vip.id)
            {
                fail(format!("VIP {addr} counters"), e);
                continue;
            }
            let table = &built.table;
            let configured = configured.as_deref();
            if self.same_entry(addr, vip, alias)
                && alias.is_none_or(|a| alias_on_table(dp, &key, &a))
                && dp.table(addr).is_ok_and(|t| t == *table)
            {
                // The kernel holds this very table (an adopted data path's, after a restart):
                // nothing to write, and no run of TABLES to take.
                self.remember(addr, (&input, number), &built, configured);
                continue;
            }
            let old = self
                .built
                .get(addr)
                .and_then(|input| Some((dp.table(addr).ok()?, &input.taking)));
            let (mut moved, mut resized) = (None, None);
            if let Some((old, old_entries)) = &old {
                if old.is_empty() || table.is_empty() || old.len() == table.len() {
                    moved = Some(slots_moved(old, old_entries, table, &input.taking));
                } else {
                    let share = maglev::moved_share((old, old_entries), (table, &input.taking));
                    resized = Some((old.len(), share));
                }
            }
            match dp.set_vip(addr, vip.id, table, vip.options) {
                Ok(()) => {
                    self.remember(addr, (&input, number), &built, configured);
                    out.tables.push(TableSwitch {
                        vip: *addr,
                        backends: input.taking.len(),
                        standby: input.standby.len(),
                        size: table.len(),
                        moved,
                        resized,
                    });
                }
                Err(e) => {
                    // Its VIPS entry may already point at the new table (its alias not):
                    // rewritten next time, and what it names (and its digest, in status)
                    // read from the kernel till then, not from what was last switched.
                    self.forget(addr);
                    fail(format!("VIP {addr}"), e)
                }
            }
            // What the kernel holds now for the VIP and its alias (set_vip writes both).
            for k in [Some(key), alias].into_iter().flatten() {
                match dp.vip_info(&k) {
                    Some(info) => self.vips.insert(k, info),
                    None => self.vips.remove(&k),
                };
            }
        }
        // A new VIP waiting for its first table is not announced to the data path yet.
        let addrs = vip_addr_flags(
            desired
                .vips
                .iter()
                .filter(|(a, _)| !waiting.contains(*a) || self.vips.contains_key(&vip_key(a)))
                .map(|(a, v)| (a, v.options.fragments)),
        );
        if let Err(e) = dp.set_vip_filter(addrs.keys().map(|k| k.0)) {
            fail("VIP_FILTER".into(), e);
        }
        let wanted_addrs: HashMap<VipAddrKey, u32> =
            addrs.iter().map(|(k, &f)| (k.key(), f)).collect();
        for (key, &flags) in &wanted_addrs {
            if self.addrs.get(key) != Some(&flags) {
                match dp.set_vip_addr(*key, flags) {
                    Ok(()) => {
                        self.addrs.insert(*key, flags);
                    }
                    Err(e) => fail("VIP_ADDRS".into(), e),
                }
            }
        }

        // What is no longer wanted, once nothing wanted points at it.
        let gone: Vec<VipKey> = self
            .vips
            .keys()
            .filter(|k| !wanted_keys.contains(k))
            .copied()
            .collect();
        for key in gone {
            match dp.delete_vip_key(&key) {
                Ok(()) => {
                    self.vips.remove(&key);
                }
                Err(e) => fail("VIPS".into(), e),
            }
        }
        self.built.retain(|a, _| desired.vips.contains_key(a));
        self.digests.retain(|a, _| desired.vips.contains_key(a));
        self.slots.retain(|a, _| desired.vips.contains_key(a));
        self.configured_digests
            .retain(|a, _| desired.vips.contains_key(a));
        let gone: Vec<VipAddrKey> = self
            .addrs
            .keys()
            .filter(|k| !wanted_addrs.contains_key(k))
            .copied()
            .collect();
        for key in gone {
            match dp.set_vip_addr(key, 0) {
                Ok(()) => {
                    self.addrs.remove(&key);
                }
                Err(e) => fail("VIP_ADDRS".into(), e),
            }
        }
        // A backend entry goes once no table the kernel holds may name it, and a TX port once
        // no backend entry left names it: a VIP waiting for its table (or not switched) keeps
        // forwarding by its old one, to the old backends and through their ports, while
        // every other VIP's leftovers go.
        let candidates: HashSet<u32> = unwanted(&self.backends, &desired.backends)
            .into_iter()
            .collect();
        let gone: Vec<u32> = match self.named_backends(dp, desired, &candidates) {
            Some(named) => candidates.difference(&named).copied().collect(),
            None => Vec::new(),
        };
        for id in gone {
            match dp.set_backend(id, Backend::default()) {
                Ok(()) => {
                    self.backends.remove(&id);
                }
                Err(e) => fail(format!("backend {id}"), e),
            }
        }
        let used: HashSet<u32> = self.backends.values().map(|b| b.tx_port).collect();
        let gone: Vec<u32> = unwanted(&self.tx_ports, &desired.tx_ports)
            .into_iter()
            .filter(|port| !used.contains(port))
            .collect();
        for port in gone {
            match dp.clear_tx_port(port) {
                Ok(()) => {
                    self.tx_ports.remove(&port);
                }
                Err(e) => fail(format!("TX port {port}"), e),
            }
        }
        // Built tables are kept only until written.
        self.requested.retain(|a, r| {
            desired.vips.contains_key(a)
                && self.written_request.get(a).is_none_or(|&n| n < r.number)
        });
        self.written_request
            .retain(|a, _| desired.vips.contains_key(a));
        let wanted: HashSet<TableInput> = desired
            .vips
            .iter()
            .filter(|(a, v)| !self.current(a, v))
            .flat_map(|(_, v)| [Some(v.input()), v.configured_input()])
            .chain(
                self.requested
                    .values()
                    .flat_map(|r| [Some(r.input.clone()), r.configured.clone()]),
            )
            .flatten()
            .collect();
        self.prebuilt.retain(|i, _| wanted.contains(i));
        self.pending = out.errors.len();
        self.failures += out.errors.len() as u64;
        self.waiting = waiting.len();
        out
    }
}

impl Applied {
    /// As a result: an error lists every failed write.
    pub fn into_result(self) -> Result<Applied> {
        if self.errors.is_empty() {
            Ok(self)
        } else {
            Err(anyhow!(
                "{} map writes failed (retried): {}",
                self.errors.len(),
                self.errors.join("; ")
            ))
        }
    }
}

/// Whether the kernel's entry for `alias` points at the same TABLES run as `key`'s.
fn alias_on_table(dp: &Datapath, key: &VipKey, alias: &VipKey) -> bool {
    match (dp.vip_info(key), dp.vip_info(alias)) {
        (Some(m), Some(a)) => (a.table_base, a.table_size) == (m.table_base, m.table_size),
        _ => false,
    }
}

/// The keys `held` has and `wanted` has not.
fn unwanted<V, W>(held: &BTreeMap<u32, V>, wanted: &BTreeMap<u32, W>) -> Vec<u32> {
    held.keys()
        .filter(|k| !wanted.contains_key(k))
        .copied()
        .collect()
}

/// Slots whose backend address differs between two tables (an empty table has none).
fn slots_moved(
    old: &[u32],
    old_entries: &[maglev::Entry],
    new: &[u32],
    new_entries: &[maglev::Entry],
) -> usize {
    let address =
        |entries: &[maglev::Entry], id: u32| entries.iter().find(|e| e.id == id).map(|e| e.address);
    let n = old.len().max(new.len());
    let mut cache: (u32, Option<std::net::IpAddr>, u32, Option<std::net::IpAddr>) =
        (u32::MAX, None, u32::MAX, None);
    (0..n)
        .filter(|&i| {
            let (o, w) = (old.get(i).copied(), new.get(i).copied());
            let oa = o.and_then(|id| {
                if cache.0 != id {
                    cache.0 = id;
                    cache.1 = address(old_entries, id);
                }
                cache.1
            });
            let na = w.and_then(|id| {
                if cache.2 != id {
                    cache.2 = id;
                    cache.3 = address(new_entries, id);
                }
                cache.3
            });
            oa != na
        })
        .count()
}

fn out_errors(errors: &mut Vec<String>, what: String, e: anyhow::Error) {
    errors.push(format!("{what}: {e:#}"));
}

/// The BACKENDS entry for a desired backend.
pub fn backend_entry(b: &DesiredBackend) -> Backend {
    match b.mac {
        Some(mac) => Backend {
            mac: mac.0,
            _pad: [0; 2],
            flags: BACKEND_F_PRESENT
                | BACKEND_F_VALID
                | if b.keep_flows {
                    BACKEND_F_KEEP_FLOWS
                } else {
                    0
                },
            tx_port: b.egress.map_or(0, |e| e.port),
            vip: b.vip_id,
            src_mac: b.egress.map_or([0; 6], |e| e.src_mac.0),
            _pad2: [0; 2],
        },
        // No MAC: a table slot naming it drops. Still marked present: an all-zero entry is
        // a free id (and would have its counters zeroed when found at the next start).
        None => Backend {
            flags: BACKEND_F_PRESENT,
            vip: b.vip_id,
            ..Backend::default()
        },
    }
}

/// The VipInfo flags of a VIP's options.
pub fn vip_flags(opts: VipOptions) -> u32 {
    let mut flags = 0;
    if !opts.conntrack {
        flags |= VIP_F_NO_CONNTRACK;
    }
    if opts.fragments {
        flags |= VIP_F_FRAGMENTS;
    }
    flags
}
