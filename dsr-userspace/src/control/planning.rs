//! `dsr plan`: what a changed config or a CLI change would do before it is applied: per VIP,
//! how many table slots (and so what share of new flows) move, per backend its slots before
//! and after, and how many tracked flows would change backend.

use std::{fmt::Write, net::IpAddr};

use serde::{Deserialize, Serialize};

use crate::spec::model::VipAddr;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanReport {
    pub vips: Vec<VipPlan>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VipChange {
    Added,
    Removed,
    Changed,
    Unchanged,
}

impl std::fmt::Display for VipChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VipChange::Added => "added",
            VipChange::Removed => "removed",
            VipChange::Changed => "changed",
            VipChange::Unchanged => "unchanged",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VipPlan {
    pub name: String,
    pub addr: VipAddr,
    pub change: VipChange,
    /// Slots of its table after the change, and before (0: it had none).
    pub table_size: u32,
    #[serde(default)]
    pub table_size_before: u32,
    /// Slots whose backend (by address) changes; after a size change, the moved share of
    /// the new size.
    pub slots_moved: u32,
    /// The share of new flows whose backend (by address) changes. A size change (the config's
    /// backend count or `table_size` changed) moves nearly all of them.
    pub share_moved: f64,
    pub backends: Vec<BackendPlan>,
    /// Flows the flow table tracks for the VIP now, and how many of them would change backend
    /// (their backend leaves or stops keeping flows).
    pub tracked_flows: u64,
    pub tracked_flows_moving: u64,
    /// Entries a FIN or RST marked closing (in neither count above): they still forward.
    #[serde(default)]
    pub closing_flows: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendPlan {
    pub address: IpAddr,
    /// Not one of the VIP's backends before the change.
    #[serde(default)]
    pub new: bool,
    pub slots_before: u32,
    pub slots_after: u32,
}

pub fn render(p: &PlanReport) -> String {
    let mut out = String::new();
    let mut any = false;
    for v in &p.vips {
        if v.change == VipChange::Unchanged && v.slots_moved == 0 && v.tracked_flows_moving == 0 {
            continue;
        }
        any = true;
        if v.table_size_before != 0 && v.table_size != 0 && v.table_size_before != v.table_size {
            let _ = writeln!(
                out,
                "VIP {} {}: table resized from {} to {} slots (its configured backends or \
                 table_size changed): nearly all new flows move to other slots ({:.1}% to another \
                 backend); tracked flows keep their backends, but a VIP without conntrack moves \
                 its open connections too",
                v.name,
                v.addr,
                v.table_size_before,
                v.table_size,
                v.share_moved * 100.0
            );
        }
        let _ = writeln!(
            out,
            "VIP {} {}: {}; {} of {} slots move ({:.1}% of new flows); {} of {} tracked flows change backend{}",
            v.name,
            v.addr,
            v.change,
            v.slots_moved,
            v.table_size,
            v.share_moved * 100.0,
            v.tracked_flows_moving,
            v.tracked_flows,
            if v.closing_flows > 0 {
                format!(" (and {} closing)", v.closing_flows)
            } else {
                String::new()
            }
        );
        for b in &v.backends {
            if b.slots_before != b.slots_after {
                let _ = writeln!(
                    out,
                    "  -> {}: {} -> {} slots",
                    b.address, b.slots_before, b.slots_after
                );
            }
        }
    }
    if !any {
        out += "no VIP changes: no slot and no tracked flow moves\n";
    }
    let adds = p.vips.iter().any(|v| {
        v.change == VipChange::Added || v.backends.iter().any(|b| b.new && b.slots_after > 0)
    });
    if adds {
        out += "(new backends are counted as resolved and up, as once the change is in effect)\n";
    }
    out
}
