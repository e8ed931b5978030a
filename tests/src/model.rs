//! A host-side model of the XDP program's whole decision for one frame: verdict, reason, the
//! VIP that matched and the backend chosen. It parses with the data path's own parser
//! (`dsr_common::parse`, over a `&[u8]`), hashes with the shared `flow_hash`, and reads the
//! Maglev tables the map writer built back from the kernel; the VIP lookup and the decision
//! around it are written here again from the design (README, "How the data path decides"),
//! so that a difference between the two is a bug on one side.
//!
//! Connection tracking is not modelled: with tables that do not change while frames are
//! pushed, an established flow's backend is the one its table gives (the flow-table key is
//! the matched VIP and the hashed fields, the very key the table is indexed by), so the
//! program's decisions do not depend on the frames before. A test that changes tables between
//! frames must not use this model.

use std::collections::HashMap;

use dsr::{
    plan::VipOptions,
    spec::model::{MacAddr, VipAddr},
};
use dsr_common::{
    FlowKey, Reason, VipKey, flow_hash,
    parse::{self, Kind},
};

use crate::testrun::{XDP_DROP, XDP_PASS, XDP_TX};

/// One configured VIP as the model sees it.
#[derive(Clone, Debug)]
pub struct ModelVip {
    pub addr: VipAddr,
    pub id: u32,
    pub options: VipOptions,
    /// Its active Maglev table (backend ids), as the data path reads it; empty: no backend.
    pub table: Vec<u32>,
    /// Its backends: id and MAC.
    pub backends: Vec<(u32, MacAddr)>,
}

/// The decision for one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub verdict: u32,
    pub reason: Reason,
    /// The VIP (id) the frame matched, if any (counted in VIP_STATS, forwarded or dropped).
    pub vip: Option<u32>,
    /// The backend (id) it was sent to, if forwarded.
    pub backend: Option<u32>,
}

impl Decision {
    fn stop(reason: Reason, vip: Option<u32>) -> Self {
        let verdict = match reason {
            Reason::NoBackend | Reason::NoTxPort | Reason::NotMaster => XDP_DROP,
            _ => XDP_PASS,
        };
        Decision {
            verdict,
            reason,
            vip,
            backend: None,
        }
    }
}

pub struct Model {
    /// The receiving interface's MAC.
    pub mac: [u8; 6],
    pub hash_seed: u32,
    pub vips: Vec<ModelVip>,
    /// The interface's VRRP virtual MACs, and whether this node is master of each.
    pub vmacs: Vec<([u8; 6], bool)>,
    /// VIPS keys -> (index in `vips`, fragment alias).
    keys: HashMap<VipKey, (usize, bool)>,
}

impl Model {
    pub fn new(mac: [u8; 6], hash_seed: u32, vips: Vec<ModelVip>) -> Self {
        let mut keys = HashMap::new();
        for (i, v) in vips.iter().enumerate() {
            let proto = v.addr.protocol.number();
            let key = VipKey::new(v.addr.address, v.addr.port, proto, v.addr.vlan);
            assert!(
                keys.insert(key, (i, false)).is_none(),
                "two VIPs on {key:?}"
            );
            // A VIP with a port that accepts fragments owns a port-0 alias: its non-first
            // fragments have no port to be found by.
            if v.options.fragments && v.addr.port != 0 {
                let alias = VipKey::new(v.addr.address, 0, proto, v.addr.vlan);
                assert!(
                    keys.insert(alias, (i, true)).is_none(),
                    "alias on {alias:?}"
                );
            }
        }
        Model {
            mac,
            hash_seed,
            vips,
            vmacs: Vec::new(),
            keys,
        }
    }

    /// The VIP a parsed packet is for: this VLAN before any VLAN, the exact port before all
    /// ports; a fragment alias only for fragments; a non-first fragment only by port 0.
    pub fn find(&self, key: &FlowKey, vlan: u16, kind: Kind) -> Option<usize> {
        let has_port = !matches!(kind, Kind::Fragment { first: false });
        let fragment = matches!(kind, Kind::Fragment { .. });
        let port = (key.ports >> 16) as u16;
        let mut order = Vec::with_capacity(4);
        for v in [vlan, 0] {
            if has_port {
                order.push((port, v));
            }
            order.push((0, v));
        }
        for (p, v) in order {
            let k = VipKey {
                addr: key.dst,
                port: p,
                proto: key.proto as u8,
                _pad: 0,
                vlan: v,
                _pad2: 0,
            };
            // The exact-port lookup of a port-0 packet is the same key as the port-0 one:
            // an alias is taken only by a fragment.
            if let Some(&(i, alias)) = self.keys.get(&k)
                && (!alias || fragment && p == 0)
            {
                return Some(i);
            }
        }
        None
    }

    pub fn decide(&self, frame: &[u8]) -> Decision {
        if frame.len() < 14 {
            return Decision::stop(Reason::Malformed, None);
        }
        if frame[..6] != self.mac {
            match self.vmacs.iter().find(|(m, _)| frame[..6] == *m) {
                Some((_, true)) => {}
                Some((_, false)) => return Decision::stop(Reason::NotMaster, None),
                None => return Decision::stop(Reason::NotOurMac, None),
            }
        }
        let packet = match parse::parse(&frame) {
            Ok(p) => p,
            Err(reason) => return Decision::stop(reason, None),
        };
        let Some(i) = self.find(&packet.key, packet.vlan, packet.kind) else {
            return Decision::stop(
                match packet.kind {
                    Kind::Plain => Reason::NotVip,
                    Kind::Fragment { .. } => Reason::Fragment,
                    Kind::TooBig => Reason::NotTcpUdp,
                },
                None,
            );
        };
        let vip = &self.vips[i];
        if matches!(packet.kind, Kind::Fragment { .. }) && !vip.options.fragments {
            return Decision::stop(Reason::Fragment, None);
        }
        let key = packet.key.masked(vip.options.hash_fields);
        if vip.table.is_empty() {
            return Decision::stop(Reason::NoBackend, Some(vip.id));
        }
        let slot = flow_hash(&key, self.hash_seed) % vip.table.len() as u32;
        let id = vip.table[slot as usize];
        if !vip.backends.iter().any(|(b, _)| *b == id) {
            return Decision::stop(Reason::NoBackend, Some(vip.id));
        }
        Decision {
            verdict: XDP_TX,
            reason: match packet.kind {
                Kind::Plain => Reason::Forwarded,
                Kind::Fragment { .. } => Reason::FragmentForwarded,
                Kind::TooBig => Reason::IcmpForwarded,
            },
            vip: Some(vip.id),
            backend: Some(id),
        }
    }

    /// The MAC of backend `id`.
    pub fn backend_mac(&self, id: u32) -> Option<[u8; 6]> {
        self.vips
            .iter()
            .flat_map(|v| &v.backends)
            .find(|(b, _)| *b == id)
            .map(|(_, m)| m.0)
    }

    /// The backend (and its VIP) a forwarded frame's destination MAC names.
    pub fn backend_by_mac(&self, mac: &[u8]) -> Option<(u32, u32)> {
        self.vips.iter().find_map(|v| {
            v.backends
                .iter()
                .find(|(_, m)| m.0[..] == *mac)
                .map(|(b, _)| (v.id, *b))
        })
    }
}
