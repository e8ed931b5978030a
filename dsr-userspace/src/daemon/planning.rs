//! `dsr plan`: the tables and flows a change would move, computed on a copy of the state
//! (nothing is written). Slots are compared by backend address, as nodes are.

use std::{collections::HashMap, net::IpAddr, path::Path, time::SystemTime};

use super::{Daemon, MAX_FLOWS_SCANNED_FOR_PLAN, limits};
use crate::{
    control::{
        Request,
        planning::{BackendPlan, PlanReport, VipChange, VipPlan},
    },
    plan::maglev,
    runtime::state::Vip,
    spec::{journal, toml_file},
};

impl Daemon {
    pub(super) fn plan(
        &self,
        config: Option<&Path>,
        change: Option<&Request>,
    ) -> Result<PlanReport, String> {
        let (vips, tables) = match (config, change) {
            (Some(path), None) => {
                let new = toml_file::load(path).map_err(|e| e.to_string())?;
                let vips = journal::replay(&new.vips, &self.journal, limits(&new)).0;
                (vips, new.tables)
            }
            (None, Some(request)) => {
                let change = self.change_of(request)?;
                let mut vips = self.desired_vips().0;
                change.apply(&mut vips, limits(&self.config))?;
                (vips, self.config.tables)
            }
            _ => return Err("plan needs either a config file or one change".into()),
        };
        let mut after = self.state.clone();
        let r = after.reconcile(&vips, &tables, SystemTime::now());
        if !r.errors.is_empty() {
            return Err(format!("it cannot apply: {}", r.errors.join("; ")));
        }
        // A new backend takes flows once its MAC is resolved: planned as if it were (the
        // plan says where flows go once the change is in effect).
        for (vip, address) in &r.added {
            if let Some(b) = after.backend_entry(vip, *address)
                && b.mac.is_none()
            {
                b.mac = Some(crate::spec::model::MacAddr([0x02, 0, 0, 0, 0, 0x01]));
            }
        }
        let flows = self.datapath.flow_entries(MAX_FLOWS_SCANNED_FOR_PLAN);
        let mut report = PlanReport { vips: Vec::new() };
        let addrs: Vec<_> = {
            let mut a: Vec<_> = self.state.vips.iter().map(|v| v.spec.addr).collect();
            a.extend(after.vips.iter().map(|v| v.spec.addr));
            a.sort();
            a.dedup();
            a
        };
        for addr in addrs {
            let (old, new) = (self.state.vip(&addr), after.vip(&addr));
            let change = match (old, new) {
                (None, Some(_)) => VipChange::Added,
                (Some(_), None) => VipChange::Removed,
                (Some(o), Some(n)) if o.spec != n.spec || backends_differ(o, n) => {
                    VipChange::Changed
                }
                _ => VipChange::Unchanged,
            };
            let (size_before, size) = (
                old.map_or(0, |v| v.table_size),
                new.map_or(0, |v| v.table_size),
            );
            let (before_slots, after_slots) = (slots(old), slots(new));
            let share_moved = if old.is_some() && new.is_some() && size_before != size {
                let (o, n) = (tables_of(old), tables_of(new));
                maglev::moved_share((&o.0, &o.1), (&n.0, &n.1))
            } else {
                let moved = before_slots
                    .iter()
                    .zip(&after_slots)
                    .filter(|(a, b)| a != b)
                    .count();
                moved as f64 / before_slots.len().max(after_slots.len()).max(1) as f64
            };
            let mut per_backend: HashMap<IpAddr, (u32, u32)> = HashMap::new();
            for a in before_slots.iter().flatten() {
                per_backend.entry(*a).or_default().0 += 1;
            }
            for a in after_slots.iter().flatten() {
                per_backend.entry(*a).or_default().1 += 1;
            }
            let mut backends: Vec<BackendPlan> = per_backend
                .into_iter()
                .map(|(address, (b, a))| BackendPlan {
                    address,
                    new: old.is_none_or(|o| !o.backends.iter().any(|x| x.spec.address == address)),
                    slots_before: b,
                    slots_after: a,
                })
                .collect();
            backends.sort_by_key(|b| b.address);
            // A tracked flow stays while its backend is still this VIP's and keeps flows.
            // Closing entries are counted apart, as status counts them.
            let (mut tracked, mut moving, mut closing) = (0, 0, 0);
            if let Some(o) = old {
                for (_, e) in flows.iter().filter(|(k, _)| k.vip == o.id) {
                    if e.flags & dsr_common::FLOW_F_CLOSING != 0 {
                        closing += 1;
                        continue;
                    }
                    tracked += 1;
                    let keeps = new
                        .and_then(|n| n.backends.iter().find(|b| b.id == e.backend))
                        .is_some_and(|b| b.keeps_flows());
                    moving += u64::from(!keeps);
                }
            }
            let name = new
                .or(old)
                .map_or(addr.to_string(), |v| v.spec.name.clone());
            report.vips.push(VipPlan {
                name,
                addr,
                change,
                table_size: size,
                table_size_before: size_before,
                slots_moved: (share_moved * size.max(size_before) as f64).round() as u32,
                share_moved,
                backends,
                tracked_flows: tracked,
                tracked_flows_moving: moving,
                closing_flows: closing,
            });
        }
        Ok(report)
    }
}

fn backends_differ(a: &Vip, b: &Vip) -> bool {
    a.backends.len() != b.backends.len()
        || a.backends
            .iter()
            .zip(&b.backends)
            .any(|(x, y)| x.spec != y.spec)
}

/// The VIP's table as it would be built, with its entries.
fn tables_of(vip: Option<&Vip>) -> (Vec<u32>, Vec<maglev::Entry>) {
    let Some(vip) = vip else {
        return (Vec::new(), Vec::new());
    };
    let (role, entries) = vip.serving();
    let standby = vip.standing_by(role, false);
    (
        maglev::build_around(&entries, &standby, vip.table_size),
        entries,
    )
}

/// Each slot's backend address (`None`: no backend), as the VIP's table would hold it.
fn slots(vip: Option<&Vip>) -> Vec<Option<IpAddr>> {
    let Some(vip) = vip else {
        return Vec::new();
    };
    let size = vip.table_size;
    let (table, entries) = tables_of(Some(vip));
    if table.is_empty() {
        return vec![None; size as usize];
    }
    let address: HashMap<u32, IpAddr> = entries.iter().map(|e| (e.id, e.address)).collect();
    table.iter().map(|id| address.get(id).copied()).collect()
}
