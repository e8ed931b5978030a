//! `dsr explain` answered from the kernel's maps, in the data path's order: the VIP entry
//! (this VLAN before any, this port before all ports), the flow-table entry (followed only to
//! a backend of the VIP that keeps flows), else the table slot.

use dsr_common::{
    BACKEND_F_KEEP_FLOWS, BACKEND_F_VALID, FlowKey, FlowMapKey, VIP_F_FRAGMENT_ALIAS,
    VIP_F_NO_CONNTRACK, VipKey, flow_hash,
};

use super::Daemon;
use crate::control::{
    explain::{ChosenBy, Explained, FlowQuery},
    status::FlowStatus,
};
use crate::datapath::flowcount::coarse_now_ns;

/// Keys scanned at most for one `dsr flows` (a filtered listing of a huge table stops here).
const MAX_FLOWS_SCANNED: usize = 1 << 20;

fn addr_of(words: &[u32; 4]) -> Option<std::net::IpAddr> {
    (words != &[0; 4]).then(|| dsr_common::words_addr(words))
}

impl Daemon {
    /// Tracked flows as the kernel's flow table holds them, of one VIP (id) or all.
    pub(super) fn flows(&self, vip: Option<u32>, limit: usize) -> Vec<FlowStatus> {
        let now = coarse_now_ns();
        self.datapath
            .flow_entries(MAX_FLOWS_SCANNED)
            .into_iter()
            .filter(|(k, _)| vip.is_none_or(|id| k.vip == id))
            .take(limit)
            .map(|(k, e)| {
                let owner = self.state.vips.iter().find(|v| v.id == k.vip);
                let port = |p: u32| (p != 0).then(|| u16::from_be(p as u16));
                FlowStatus {
                    vip: owner.map_or(format!("id {}", k.vip), |v| v.spec.name.clone()),
                    client: addr_of(&k.src),
                    client_port: port(k.ports & 0xffff),
                    vip_port: port(k.ports >> 16),
                    vlan: k.vlan,
                    backend: owner
                        .and_then(|v| v.backends.iter().find(|b| b.id == e.backend))
                        .map(|b| b.spec.address),
                    backend_id: e.backend,
                    idle_ms: now.saturating_sub(e.last_seen_ns) / 1_000_000,
                    closing: e.flags & dsr_common::FLOW_F_CLOSING != 0,
                }
            })
            .collect()
    }

    pub(super) fn explain(&self, q: &FlowQuery) -> Explained {
        let mut e = Explained {
            verdict: "pass".into(),
            vip: None,
            chosen_by: None,
            slot: None,
            table_size: None,
            backend: None,
            backend_id: None,
            backend_role: None,
            steps: Vec::new(),
        };
        let proto = q.protocol.number();
        let flow = format!(
            "{} port {} -> {} port {}/{}{}",
            q.src,
            q.sport,
            q.dst,
            q.dport,
            q.protocol,
            if q.vlan != 0 {
                format!(" on VLAN {}", q.vlan)
            } else {
                String::new()
            }
        );
        // The data path's order: this VLAN before any VLAN, and within each the exact port
        // before all ports.
        let vlans: &[u16] = if q.vlan != 0 { &[q.vlan, 0] } else { &[0] };
        let keys: Vec<(u16, u16)> = vlans
            .iter()
            .flat_map(|&vlan| [(q.dport, vlan), (0, vlan)])
            .collect();
        let found = keys.iter().find_map(|&(port, vlan)| {
            let info = self
                .datapath
                .vip_info(&VipKey::new(q.dst, port, proto, vlan))?;
            (info.flags & VIP_F_FRAGMENT_ALIAS == 0).then_some((port, vlan, info))
        });
        let Some((port, vlan, info)) = found else {
            e.steps.push(format!(
                "{flow}: no VIP has this address, port and protocol"
            ));
            return e;
        };
        let vip = self.state.vips.iter().find(|v| v.id == info.id);
        let name = vip.map_or(format!("id {}", info.id), |v| v.spec.name.clone());
        e.vip = Some(name.clone());
        e.steps.push(format!(
            "{flow}: VIP {name} (entry for {} port {}{})",
            q.dst,
            if port == 0 {
                "*".into()
            } else {
                port.to_string()
            },
            if vlan != 0 {
                format!(" on VLAN {vlan}")
            } else {
                String::new()
            }
        ));
        let key = FlowKey::new(q.src, q.sport, q.dst, q.dport, proto).masked(info.hash_fields);
        if info.table_size > 0 {
            let slot = flow_hash(&key, self.datapath.hash_seed()) % info.table_size;
            e.slot = Some(slot);
            e.table_size = Some(info.table_size);
        }
        let backend_name = |id: u32| {
            vip.and_then(|v| v.backends.iter().find(|b| b.id == id))
                .map(|b| (b.spec.address, b.spec.role))
        };
        let tracked = info.flags & VIP_F_NO_CONNTRACK == 0;
        let entry = tracked
            .then(|| self.datapath.flow(&FlowMapKey::new(info.id, q.vlan, &key)))
            .flatten();
        let mut chosen = None;
        match entry {
            None if tracked => e
                .steps
                .push("no flow-table entry: a new flow, placed by the table".into()),
            None => e
                .steps
                .push("the VIP does not track flows: placed by the table".into()),
            Some(entry) => {
                let b = self.datapath.backend_entry(entry.backend);
                let keep = BACKEND_F_VALID | BACKEND_F_KEEP_FLOWS;
                let follows = b.is_some_and(|b| b.flags & keep == keep && b.vip == info.id);
                let who = backend_name(entry.backend)
                    .map_or(format!("id {}", entry.backend), |(a, _)| a.to_string());
                if follows {
                    e.steps.push(format!(
                        "flow-table entry: established on backend {who}, which keeps its flows"
                    ));
                    chosen = Some((entry.backend, ChosenBy::FlowEntry));
                } else {
                    e.steps.push(format!(
                        "flow-table entry names backend {who}, which no longer keeps flows: \
                         placed by the table again"
                    ));
                }
            }
        }
        if chosen.is_none() {
            match e.slot {
                None => {
                    e.verdict = "drop".into();
                    e.steps
                        .push(format!("VIP {name} has no usable backend: dropped"));
                    return e;
                }
                Some(slot) => match self.datapath.table_slot(&info, slot) {
                    Some(id) => {
                        e.steps.push(format!(
                            "slot {slot} of the VIP's {}-slot table holds backend id {id}",
                            info.table_size
                        ));
                        chosen = Some((id, ChosenBy::Table));
                    }
                    None => {
                        e.verdict = "drop".into();
                        e.steps
                            .push(format!("slot {slot} is outside the table: dropped"));
                        return e;
                    }
                },
            }
        }
        let (id, by) = chosen.expect("set above");
        let usable = self
            .datapath
            .backend_entry(id)
            .is_some_and(|b| b.flags & BACKEND_F_VALID != 0 && b.vip == info.id);
        e.chosen_by = Some(by);
        e.backend_id = Some(id);
        if let Some((address, role)) = backend_name(id) {
            e.backend = Some(address);
            e.backend_role = Some(role);
        }
        if usable {
            e.verdict = "forward".into();
            let b = vip.and_then(|v| v.backends.iter().find(|b| b.id == id));
            e.steps.push(match b {
                Some(b) => format!(
                    "backend {} ({}, {}, weight {}/{}, MAC {})",
                    b.spec.address,
                    b.spec.role,
                    match (b.health.up, b.load.said.down) {
                        (true, false) => "up",
                        (true, true) => "down by its agent",
                        (false, _) => "down",
                    },
                    b.spec.weight,
                    b.effective_weight(),
                    b.mac.map_or("unresolved".into(), |m| m.to_string())
                ),
                None => format!("backend id {id}"),
            });
        } else {
            e.verdict = "drop".into();
            e.steps.push(format!(
                "backend id {id} has no usable entry (no MAC): dropped"
            ));
        }
        e
    }
}
