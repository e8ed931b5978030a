//! Runtime changes: what operators do with the CLI (add/remove VIPs and backends, weights,
//! drain, enable), kept as a journal replayed over the config. The desired state is always
//! `config + journal`, so a reload keeps runtime changes, `dsr reset` (an empty journal)
//! returns to the config, and `status` can say what differs from the config.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::spec::{
    model::{BackendSpec, VipAddr, VipSpec},
    validate::{self, Limits},
};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Change {
    AddVip {
        vip: VipSpec,
    },
    RemoveVip {
        vip: VipAddr,
    },
    /// Stop (or resume) announcing the VIP; it keeps forwarding.
    DrainVip {
        vip: VipAddr,
        drained: bool,
    },
    AddBackend {
        vip: VipAddr,
        backend: BackendSpec,
    },
    RemoveBackend {
        vip: VipAddr,
        address: IpAddr,
    },
    SetWeight {
        vip: VipAddr,
        address: IpAddr,
        weight: u32,
    },
    Drain {
        vip: VipAddr,
        address: IpAddr,
    },
    Enable {
        vip: VipAddr,
        address: IpAddr,
    },
}

impl Change {
    /// The VIP the change is about.
    pub fn vip(&self) -> VipAddr {
        match self {
            Change::AddVip { vip } => vip.addr,
            Change::DrainVip { vip, .. } => *vip,
            Change::RemoveVip { vip }
            | Change::AddBackend { vip, .. }
            | Change::RemoveBackend { vip, .. }
            | Change::SetWeight { vip, .. }
            | Change::Drain { vip, .. }
            | Change::Enable { vip, .. } => *vip,
        }
    }

    /// Applies the change to `vips` if the result passes the one validation, or says why it
    /// cannot apply (and leaves `vips` as is).
    pub fn apply(&self, vips: &mut Vec<VipSpec>, limits: Limits) -> Result<String, String> {
        let mut trial = vips.clone();
        let message = self.apply_unchecked(&mut trial)?;
        validate::vips(&trial, limits).map_err(|e| e.to_string())?;
        *vips = trial;
        Ok(message)
    }

    /// The change itself: what it refers to must exist (or must not, for an add).
    fn apply_unchecked(&self, vips: &mut Vec<VipSpec>) -> Result<String, String> {
        let find = |vips: &[VipSpec], addr: &VipAddr| {
            vips.iter()
                .position(|v| v.addr == *addr)
                .ok_or_else(|| format!("no VIP {addr}"))
        };
        let backend_at = |vip: &VipSpec, address: &IpAddr| {
            vip.backends
                .iter()
                .position(|b| b.address == *address)
                .ok_or_else(|| format!("VIP {} has no backend {address}", vip.name))
        };
        match self {
            Change::AddVip { vip } => {
                if vips.iter().any(|v| v.addr == vip.addr) {
                    return Err(format!("VIP {} exists already", vip.addr));
                }
                if vips.iter().any(|v| v.name == vip.name) {
                    return Err(format!("a VIP is already named {:?}", vip.name));
                }
                vips.push(vip.clone());
                Ok(format!("added VIP {} ({})", vip.name, vip.addr))
            }
            Change::DrainVip { vip, drained } => {
                let i = find(vips, vip)?;
                vips[i].drained = *drained;
                Ok(format!(
                    "VIP {}: {}",
                    vips[i].name,
                    if *drained {
                        "withdrawn (not announced; still forwarding what arrives)"
                    } else {
                        "announced again while usable"
                    }
                ))
            }
            Change::RemoveVip { vip } => {
                let i = find(vips, vip)?;
                let removed = vips.remove(i);
                Ok(format!(
                    "removed VIP {} ({}) and its {} backends",
                    removed.name,
                    removed.addr,
                    removed.backends.len()
                ))
            }
            Change::AddBackend { vip, backend } => {
                let i = find(vips, vip)?;
                if vips[i]
                    .backends
                    .iter()
                    .any(|b| b.address == backend.address)
                {
                    return Err(format!(
                        "VIP {} already has backend {}",
                        vips[i].name, backend.address
                    ));
                }
                vips[i].backends.push(backend.clone());
                // As in the file: a backend's own agent port gives a VIP whose load-aware
                // weights had no agent the agent settings (port 0: only such backends).
                if let Some(load) = vips[i].load.as_mut()
                    && backend.agent_port.is_some_and(|p| p != 0)
                    && load.agent.is_none()
                {
                    load.agent = Some(super::model::AgentSpec::backends_only());
                }
                Ok(format!(
                    "added backend {} to VIP {} (weight {}, {})",
                    backend.address, vips[i].name, backend.weight, backend.role
                ))
            }
            Change::RemoveBackend { vip, address } => {
                let i = find(vips, vip)?;
                let b = backend_at(&vips[i], address)?;
                vips[i].backends.remove(b);
                Ok(format!(
                    "removed backend {address} from VIP {}",
                    vips[i].name
                ))
            }
            Change::SetWeight {
                vip,
                address,
                weight,
            } => {
                let i = find(vips, vip)?;
                let b = backend_at(&vips[i], address)?;
                let old = std::mem::replace(&mut vips[i].backends[b].weight, *weight);
                Ok(format!(
                    "backend {address} of VIP {}: weight {old} -> {weight}",
                    vips[i].name
                ))
            }
            Change::Drain { vip, address } | Change::Enable { vip, address } => {
                let drain = matches!(self, Change::Drain { .. });
                let i = find(vips, vip)?;
                let b = backend_at(&vips[i], address)?;
                let backend = &mut vips[i].backends[b];
                backend.drained = drain;
                let what = match (drain, backend.weight) {
                    (true, _) => "draining (no new flows; established flows stay)",
                    (false, 0) => {
                        "enabled, but its weight is 0, so it still gets no new flows \
                         (`dsr backend weight` gives it a share)"
                    }
                    (false, _) => "enabled",
                };
                Ok(format!("backend {address} of VIP {}: {what}", vips[i].name))
            }
        }
    }
}

/// Brings runtime changes saved by an earlier dsr up to today's rules, instead of dropping
/// them at replay: a check timeout longer than its interval (refused since) is lowered to
/// the interval. Returns what was changed, for the log.
pub fn upgrade(journal: &mut [Change]) -> Vec<String> {
    let mut notes = Vec::new();
    let mut clamp = |check: &mut crate::spec::model::CheckSpec, what: String| {
        if check.timeout > check.interval {
            notes.push(format!(
                "runtime change: {what}: check timeout {:?} lowered to its interval {:?} \
                 (a longer timeout is refused now)",
                check.timeout, check.interval
            ));
            check.timeout = check.interval;
        }
    };
    for change in journal.iter_mut() {
        match change {
            Change::AddVip { vip } => {
                let name = vip.name.clone();
                clamp(&mut vip.check, format!("VIP {name}"));
                for b in &mut vip.backends {
                    clamp(&mut b.check, format!("VIP {name} backend {}", b.address));
                }
            }
            Change::AddBackend { vip, backend } => clamp(
                &mut backend.check,
                format!("VIP {vip} backend {}", backend.address),
            ),
            _ => {}
        }
    }
    notes
}

/// Replays `journal` over the config's VIPs. Changes that no longer apply (their VIP or
/// backend left the config) are skipped and reported, not fatal.
pub fn replay(
    config: &[VipSpec],
    journal: &[Change],
    limits: Limits,
) -> (Vec<VipSpec>, Vec<String>) {
    let mut vips = config.to_vec();
    let mut skipped = Vec::new();
    for change in journal {
        if let Err(e) = change.apply(&mut vips, limits) {
            skipped.push(format!("runtime change {change:?} no longer applies: {e}"));
        }
    }
    (vips, skipped)
}

/// The journal without what no longer makes a difference: changes that do not apply to
/// `config` any more (a skipped change must not come back when, months later, its address
/// returns), changes the config has caught up with, and changes a later one overrides.
pub fn prune(config: &[VipSpec], journal: &[Change], limits: Limits) -> Vec<Change> {
    let mut kept = effective(config, journal, limits);
    // A change whose removal leaves the result as it is, is overridden by a later one. Only
    // a change with a later one about the same VIP can be: the others are not tried (each try
    // is a replay, and this runs on every CLI change).
    let want = replay(config, &kept, limits).0;
    let mut i = 0;
    while i < kept.len() {
        let vip = kept[i].vip();
        if !kept[i + 1..].iter().any(|later| later.vip() == vip) {
            i += 1;
            continue;
        }
        let mut without = kept.clone();
        without.remove(i);
        if replay(config, &without, limits).0 == want {
            kept = without;
        } else {
            i += 1;
        }
    }
    // Without the overridden ones, a later change may now repeat what the config says.
    effective(config, &kept, limits)
}

/// The changes that apply and change something, in order.
fn effective(config: &[VipSpec], journal: &[Change], limits: Limits) -> Vec<Change> {
    let mut kept = Vec::new();
    let mut vips = config.to_vec();
    for change in journal {
        let before = vips.clone();
        if change.apply(&mut vips, limits).is_ok() && vips != before {
            kept.push(change.clone());
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::model::Protocol;

    fn backend(last: u8) -> BackendSpec {
        BackendSpec::plain(IpAddr::from([198, 18, 0, last]))
    }

    fn vip(port: u16) -> VipSpec {
        let addr = VipAddr {
            address: IpAddr::from([198, 18, 0, 100]),
            port,
            protocol: Protocol::Tcp,
            vlan: 0,
        };
        VipSpec::plain(&format!("v{port}"), addr, vec![backend(11), backend(12)])
    }

    const LIMITS: Limits = Limits {
        max_vips: 2,
        max_backends: 5,
        tables: crate::plan::sizing::TableSizing::DEFAULT,
    };

    #[test]
    fn changes_apply_or_leave_everything_untouched() {
        let config = vec![vip(80)];
        let mut vips = config.clone();
        let v80 = vips[0].addr;
        Change::SetWeight {
            vip: v80,
            address: backend(11).address,
            weight: 5,
        }
        .apply(&mut vips, LIMITS)
        .unwrap();
        assert_eq!(vips[0].backends[0].weight, 5);
        Change::Drain {
            vip: v80,
            address: backend(12).address,
        }
        .apply(&mut vips, LIMITS)
        .unwrap();
        assert!(vips[0].backends[1].drained);

        let before = vips.clone();
        for bad in [
            Change::RemoveBackend {
                vip: v80,
                address: backend(99).address,
            },
            Change::AddBackend {
                vip: v80,
                backend: backend(11),
            },
            Change::RemoveVip { vip: vip(81).addr },
            Change::AddVip { vip: vip(80) },
            Change::SetWeight {
                vip: v80,
                address: backend(11).address,
                weight: 2_000_000,
            },
        ] {
            assert!(bad.apply(&mut vips, LIMITS).is_err(), "{bad:?} should fail");
            assert_eq!(vips, before, "{bad:?} changed state although it failed");
        }
        // Limits: a second VIP fits (2 backends, total 4 of 5), a third backend then does
        // (5 of 5), a sixth does not.
        Change::AddVip { vip: vip(81) }
            .apply(&mut vips, LIMITS)
            .unwrap();
        Change::AddBackend {
            vip: v80,
            backend: backend(13),
        }
        .apply(&mut vips, LIMITS)
        .unwrap();
        let e = Change::AddBackend {
            vip: v80,
            backend: backend(14),
        }
        .apply(&mut vips, LIMITS);
        assert!(e.unwrap_err().contains("max_backends"));
    }

    #[test]
    fn replay_skips_what_no_longer_applies() {
        let journal = vec![
            Change::SetWeight {
                vip: vip(80).addr,
                address: backend(11).address,
                weight: 3,
            },
            Change::Drain {
                vip: vip(80).addr,
                address: backend(12).address,
            },
        ];
        let (vips, skipped) = replay(&[vip(80)], &journal, LIMITS);
        assert_eq!(vips[0].backends[0].weight, 3);
        assert!(skipped.is_empty());
        // The new config no longer has backend .12: the drain is skipped, the weight kept.
        let mut config = vip(80);
        config.backends.truncate(1);
        let (vips, skipped) = replay(&[config], &journal, LIMITS);
        assert_eq!(vips[0].backends[0].weight, 3);
        assert_eq!(skipped.len(), 1);
    }

    #[test]
    fn prune_keeps_only_real_differences() {
        let weight = |w| Change::SetWeight {
            vip: vip(80).addr,
            address: backend(11).address,
            weight: w,
        };
        let drain12 = Change::Drain {
            vip: vip(80).addr,
            address: backend(12).address,
        };
        // A weight overridden later, and a drain: the first weight goes.
        let journal = vec![weight(3), drain12.clone(), weight(5)];
        assert_eq!(
            prune(&[vip(80)], &journal, LIMITS),
            vec![drain12.clone(), weight(5)]
        );
        // The config caught up with the weight: only the drain is left.
        let mut caught_up = vip(80);
        caught_up.backends[0].weight = 5;
        assert_eq!(prune(&[caught_up], &journal, LIMITS), vec![drain12.clone()]);
        // Backend .12 left the config: its drain no longer applies and is dropped for good.
        let mut without = vip(80);
        without.backends.truncate(1);
        assert_eq!(prune(&[without], &journal, LIMITS), vec![weight(5)]);
    }

    #[test]
    fn an_earlier_dsrs_long_check_timeouts_are_lowered_not_dropped() {
        let mut v = vip(8080);
        v.check.interval = std::time::Duration::from_secs(1);
        v.check.timeout = std::time::Duration::from_secs(2);
        let mut journal = vec![Change::AddVip { vip: v }];
        let notes = upgrade(&mut journal);
        assert_eq!(notes.len(), 1, "{notes:?}");
        let (vips, skipped) = replay(&[vip(80)], &journal, LIMITS);
        assert!(skipped.is_empty(), "{skipped:?}");
        let added = vips.iter().find(|x| x.addr.port == 8080).expect("kept");
        assert_eq!(added.check.timeout, std::time::Duration::from_secs(1));
    }
}
