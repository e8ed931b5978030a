//! Where each backend is reached: which interface (configured, or the routing table's),
//! its TX port when that is not the receiving interface, its MAC; and following an egress
//! interface that is deleted and created again.

use std::{collections::HashMap, net::IpAddr, time::Duration};

use anyhow::{Result, anyhow};

use super::Daemon;
use crate::spec::model::{MacAddr, VipAddr};

impl Daemon {
    /// Decides for every backend not yet placed which interface reaches it: the configured
    /// one, else the routing table's, else the receiving interface. Backends behind another
    /// interface get a TX_PORTS entry (frames leave by XDP_REDIRECT with that interface's
    /// MAC as source).
    pub(super) async fn place_backends(&mut self) {
        let mut unplaced: Vec<(VipAddr, IpAddr, Option<String>)> = Vec::new();
        for v in &self.state.vips {
            for b in &v.backends {
                if b.ifindex == 0 {
                    unplaced.push((v.spec.addr, b.spec.address, b.spec.interface.clone()));
                }
            }
        }
        for (vip, addr, iface) in unplaced {
            let ifindex = match &iface {
                // Never another interface than the one configured: left unplaced (and so
                // unused) until it exists.
                Some(name) => match self.netlink.link(name).await {
                    Ok((i, _)) => i,
                    Err(e) => {
                        log::error!("backend {addr}: {e:#}; not used until it exists");
                        continue;
                    }
                },
                None => match self.netlink.route_ifindex(addr).await {
                    Ok(Some(i)) => i,
                    _ => self.ifindex,
                },
            };
            let (egress, name) = if ifindex == self.ifindex {
                (None, None)
            } else {
                match self.tx_port(ifindex).await {
                    Ok((port, mac, name)) => (Some((port, mac)), Some(name)),
                    Err(e) => {
                        log::error!("backend {addr} behind interface {ifindex}: {e:#}");
                        continue;
                    }
                }
            };
            if let Some(b) = self.state.backend_entry(&vip, addr) {
                b.ifindex = ifindex;
                b.egress = egress;
                b.egress_ifname = name;
                if let Some((port, _)) = egress {
                    log::info!(
                        "backend {addr} is reached through interface {ifindex} (TX port {port})"
                    );
                }
            }
        }
    }

    /// The TX_PORTS entry for interface `ifindex`, created on first use, with the
    /// interface's MAC and name.
    pub(super) async fn tx_port(&mut self, ifindex: u32) -> Result<(u32, MacAddr, String)> {
        let (name, mac) = self.netlink.link_by_index(ifindex).await?;
        if let Some(&(port, _)) = self.ports.get(&ifindex) {
            return Ok((port, mac, name));
        }
        let port = (1..dsr_common::MAX_TX_PORTS)
            .find(|p| !self.ports.values().any(|(q, _)| q == p))
            .ok_or_else(|| anyhow!("all {} TX ports are in use", dsr_common::MAX_TX_PORTS - 1))?;
        self.ports.insert(ifindex, (port, mac));
        Ok((port, mac, name))
    }

    /// Egress interfaces that went away. Deleting an interface also deletes its TX_PORTS
    /// entry in the kernel: its backends become unusable (their new flows go to the others,
    /// their TX port is freed) until an interface of the same name returns, and then follow
    /// it to its new index. Returns whether any backend changed.
    pub(super) async fn follow_egress(&mut self) -> bool {
        let mut changed = false;
        let indexes: Vec<u32> = self.ports.keys().copied().collect();
        for ifindex in indexes {
            if self.netlink.link_by_index(ifindex).await.is_ok() {
                continue;
            }
            self.ports.remove(&ifindex);
            let mut names = Vec::new();
            for b in self
                .state
                .vips
                .iter_mut()
                .flat_map(|v| v.backends.iter_mut())
            {
                if b.ifindex == ifindex && b.egress.is_some() && !b.egress_lost {
                    b.egress_lost = true;
                    names.extend(b.egress_ifname.clone());
                    changed = true;
                }
            }
            names.dedup();
            log::warn!(
                "interface {} (index {ifindex}) is gone: the backends behind it get no flows \
                 until it returns",
                names.join(", ")
            );
        }
        let mut lost: Vec<String> = self
            .state
            .vips
            .iter()
            .flat_map(|v| v.backends.iter())
            .filter(|b| b.egress_lost)
            .filter_map(|b| b.egress_ifname.clone())
            .collect();
        lost.sort();
        lost.dedup();
        for name in lost {
            let Ok((new_index, _)) = self.netlink.link(&name).await else {
                continue;
            };
            let (port, mac, _) = match self.tx_port(new_index).await {
                Ok(p) => p,
                Err(e) => {
                    log::error!("interface {name} is back as index {new_index}: {e:#}");
                    continue;
                }
            };
            for b in self
                .state
                .vips
                .iter_mut()
                .flat_map(|v| v.backends.iter_mut())
            {
                if b.egress_lost && b.egress_ifname.as_deref() == Some(name.as_str()) {
                    b.ifindex = new_index;
                    b.egress = Some((port, mac));
                    b.egress_lost = false;
                }
            }
            log::info!(
                "interface {name} is back as index {new_index}: its backends follow it (TX port {port})"
            );
            changed = true;
        }
        changed
    }

    /// Resolves MACs of backends that have none yet, waiting up to `timeout`.
    pub(super) async fn resolve(&mut self, timeout: Duration) {
        let mut by_iface: HashMap<u32, Vec<IpAddr>> = HashMap::new();
        for b in self.state.vips.iter().flat_map(|v| v.backends.iter()) {
            if b.mac.is_none() && b.ifindex != 0 {
                by_iface.entry(b.ifindex).or_default().push(b.spec.address);
            }
        }
        for (ifindex, missing) in by_iface {
            match self.netlink.resolve(ifindex, &missing, timeout).await {
                Ok(found) => {
                    for (addr, mac) in found {
                        self.state.set_neighbour(ifindex, addr, mac);
                    }
                }
                Err(e) => log::warn!("resolving backend MACs: {e:#}"),
            }
        }
        for b in self.state.vips.iter().flat_map(|v| v.backends.iter()) {
            if b.mac.is_none() {
                log::warn!(
                    "backend {} has no MAC yet (not used until it resolves)",
                    b.spec.address
                );
            }
        }
    }

    /// The receiving interface deleted (its XDP link goes with it) and created again under
    /// its name: the program is attached to it anew, and the backends on it follow.
    pub(super) async fn follow_interface(&mut self) {
        let name = self.config.interface.clone();
        let (ifindex, mac) = match self.netlink.link(&name).await {
            Ok(found) => found,
            Err(_) => {
                if !self.interface_gone {
                    self.interface_gone = true;
                    log::warn!("interface {name} is gone: nothing is forwarded until it returns");
                }
                return;
            }
        };
        if ifindex == self.ifindex {
            return;
        }
        let old = self.ifindex;
        let mode = self.config.xdp_mode;
        let attached = self
            .datapath
            .set_iface(ifindex, mac)
            .and_then(|()| self.datapath.reattach(ifindex, &name, mode));
        match attached {
            Ok(()) => {
                self.ifindex = ifindex;
                self.interface_gone = false;
                for b in self
                    .state
                    .vips
                    .iter_mut()
                    .flat_map(|v| v.backends.iter_mut())
                {
                    if b.ifindex == old {
                        b.ifindex = ifindex;
                    }
                }
                log::warn!(
                    "interface {name} is back as index {ifindex} ({mac}): re-attached the data path"
                );
                self.save();
            }
            Err(e) => log::error!("interface {name} is back as index {ifindex}: {e:#}"),
        }
    }
}
