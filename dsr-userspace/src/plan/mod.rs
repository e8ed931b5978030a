//! What the data path should hold, derived purely from the runtime state: every backend
//! entry, every VIP with its table's input, every egress port. The map writer
//! (`datapath::writer`) makes the kernel's maps equal to a [`Desired`]; nothing here does I/O.

pub mod maglev;
pub mod sizing;

use std::collections::{BTreeMap, HashMap};

use crate::{
    runtime::state::State,
    spec::model::{MacAddr, VipAddr},
};

/// How a VIP's packets are treated (its VipInfo flags and hash fields).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VipOptions {
    pub conntrack: bool,
    pub fragments: bool,
    pub hash_fields: u32,
}

impl Default for VipOptions {
    fn default() -> Self {
        VipOptions {
            conntrack: true,
            fragments: false,
            hash_fields: dsr_common::HASH_ALL,
        }
    }
}

/// Where a redirected backend's frames leave: TX_PORTS entry and that interface's MAC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Egress {
    pub port: u32,
    pub src_mac: MacAddr,
}

/// A BACKENDS entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DesiredBackend {
    /// The VIP this backend id belongs to: the data path follows a flow entry only to a
    /// backend of the VIP the packet matched.
    pub vip_id: u32,
    /// `None`: not usable at all (no MAC yet).
    pub mac: Option<MacAddr>,
    /// Its established flows stay on it (healthy, draining or inhibited).
    pub keep_flows: bool,
    /// Behind another interface: how frames leave for it.
    pub egress: Option<Egress>,
}

/// A VIP: its id, what its table is built from, and how its packets are treated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredVip {
    pub id: u32,
    /// Slots of its table (`sizing`: set by the config, never by health or weights).
    pub table_size: u32,
    /// The backends that take new flows now, sorted by id (empty: the VIP drops).
    pub entries: Vec<maglev::Entry>,
    /// The backends of the same role that take none now, sorted by id: the table is built
    /// around them and only lends their slots (`maglev::build_around`).
    pub standby: Vec<maglev::Entry>,
    /// Both with the configured weights, where load-aware weights changed them.
    pub configured_entries: Option<(Vec<maglev::Entry>, Vec<maglev::Entry>)>,
    pub options: VipOptions,
}

impl DesiredVip {
    /// Its table.
    pub fn table(&self) -> Vec<u32> {
        self.input().build()
    }

    /// What its table is built from.
    pub fn input(&self) -> TableInput {
        TableInput {
            size: self.table_size,
            taking: self.entries.clone(),
            standby: self.standby.clone(),
        }
    }

    /// Whether its table is built from `input` (what [`DesiredVip::input`] gives, without
    /// the copies: the writer asks for every VIP on every apply).
    pub fn is_built_from(&self, input: &TableInput) -> bool {
        input.size == self.table_size
            && input.taking == self.entries
            && input.standby == self.standby
    }

    /// What the table of its configured weights is built from, where load-aware weights
    /// changed them.
    pub fn configured_input(&self) -> Option<TableInput> {
        self.configured_entries
            .as_ref()
            .map(|(taking, standby)| TableInput {
                size: self.table_size,
                taking: taking.clone(),
                standby: standby.clone(),
            })
    }
}

/// Everything a VIP's table is built from: two VIPs with equal inputs get equal tables.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TableInput {
    pub size: u32,
    /// The backends taking new flows, and those standing by (`maglev::build_around`).
    pub taking: Vec<maglev::Entry>,
    pub standby: Vec<maglev::Entry>,
}

/// A built table with what is derived from it. Built once per input (off the daemon's
/// loop: a large table takes a second to build), then written and shown.
#[derive(Debug)]
pub struct BuiltTable {
    pub table: Vec<u32>,
    /// `maglev::digest` of the table, for nodes to compare.
    pub digest: u64,
    /// Slots per backend id.
    pub slots: HashMap<u32, u32>,
}

impl TableInput {
    /// What building the table costs, in slots built: each slot once, and each lent slot
    /// once per draw it takes to find a taking backend (`maglev::build_around`: as many as
    /// the weights' whole over the taking ones', up to 64 when nearly all stand by).
    pub fn cost(&self) -> u64 {
        let weight = |es: &[maglev::Entry]| es.iter().map(|e| u64::from(e.weight)).sum::<u64>();
        let (taking, standby) = (weight(&self.taking), weight(&self.standby));
        let size = u64::from(self.size);
        if taking == 0 || standby == 0 {
            return size;
        }
        let draws = ((taking + standby) / taking).min(64);
        size + size * standby / (taking + standby) * draws
    }

    pub fn build(&self) -> Vec<u32> {
        maglev::build_around(&self.taking, &self.standby, self.size)
    }

    /// The table with its digest (under the data path's hash seed) and slot counts.
    pub fn build_all(&self, seed: u32) -> BuiltTable {
        let table = self.build();
        let digest = maglev::digest(seed, &table, &self.taking);
        let mut slots = HashMap::new();
        for &id in &table {
            *slots.entry(id).or_insert(0) += 1;
        }
        BuiltTable {
            table,
            digest,
            slots,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Desired {
    /// Backend id -> BACKENDS entry.
    pub backends: BTreeMap<u32, DesiredBackend>,
    pub vips: BTreeMap<VipAddr, DesiredVip>,
    /// TX_PORTS entry -> the ifindex it redirects to.
    pub tx_ports: BTreeMap<u32, u32>,
}

/// What the data path should hold for `state`.
pub fn desired(state: &State) -> Desired {
    let mut d = Desired::default();
    for vip in &state.vips {
        for b in &vip.backends {
            // Behind a vanished interface: no TX port to write, and an entry that drops.
            let egress = b
                .egress
                .filter(|_| !b.egress_lost)
                .map(|(port, src_mac)| Egress { port, src_mac });
            if let Some(e) = egress {
                d.tx_ports.insert(e.port, b.ifindex);
            }
            d.backends.insert(
                b.id,
                DesiredBackend {
                    vip_id: vip.id,
                    mac: b.mac.filter(|_| !b.egress_lost),
                    keep_flows: b.keeps_flows(),
                    egress,
                },
            );
        }
        let (role, mut entries) = vip.serving();
        entries.sort_by_key(|e| e.id);
        let mut standby = vip.standing_by(role, false);
        standby.sort_by_key(|e| e.id);
        let configured_entries = vip.load_adjusted().then(|| {
            let mut c = vip.serving_as_configured();
            c.sort_by_key(|e| e.id);
            let mut s = vip.standing_by(role, true);
            s.sort_by_key(|e| e.id);
            (c, s)
        });
        d.vips.insert(
            vip.spec.addr,
            DesiredVip {
                id: vip.id,
                table_size: vip.table_size,
                entries,
                standby,
                configured_entries,
                options: VipOptions {
                    conntrack: vip.spec.conntrack,
                    fragments: vip.spec.fragments,
                    hash_fields: vip.spec.hash_fields,
                },
            },
        );
    }
    d
}
