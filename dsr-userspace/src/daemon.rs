//! `dsr run`: turns a validated model into a running data path and keeps it in step with the
//! neighbour table until told to stop.
//!
//! Every change ends in [`Daemon::sync_vip`], which rebuilds a VIP's table from the backends
//! usable now and hands it to the map writer; nothing else decides what the tables hold.

use std::{future::Future, net::IpAddr, time::Duration};

use anyhow::{Context, Result};
use dsr_common::VipKey;

use crate::{
    datapath::{Datapath, Sizes, vip_key},
    maglev,
    model::{BackendSpec, MacAddr, Model, VipSpec},
    neighbour::Netlink,
};

/// How long start-up waits for backends' MACs before going on without the missing ones.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the neighbour table is re-read (MAC changes, late resolutions).
const NEIGHBOUR_POLL: Duration = Duration::from_secs(1);
/// How often an unresolved backend is solicited again.
const RESOLICIT_EVERY: u32 = 5;

pub struct Daemon {
    model: Model,
    netlink: Netlink,
    datapath: Datapath,
    ifindex: u32,
    vips: Vec<VipState>,
}

struct VipState {
    spec: VipSpec,
    key: VipKey,
    id: u32,
    backends: Vec<BackendState>,
}

struct BackendState {
    spec: BackendSpec,
    id: u32,
    mac: Option<MacAddr>,
}

impl BackendState {
    fn usable(&self) -> bool {
        self.mac.is_some() && self.spec.weight > 0
    }
}

impl Daemon {
    /// Loads the program, resolves backends, fills the maps and attaches.
    pub async fn start(model: Model) -> Result<Self> {
        let netlink = Netlink::new()?;
        let (ifindex, if_mac) = netlink.link(&model.interface).await?;
        let sizes = Sizes {
            max_vips: model.max_vips,
            max_backends: model.max_backends,
            table_size: model.table_size,
        };
        let mut datapath = Datapath::load(sizes, model.hash_seed)?;
        datapath.set_iface(ifindex, if_mac)?;
        log::info!(
            "loaded XDP program: {} VIPs max, {} backends max, {}-slot tables ({} MiB), seed {:#010x}",
            sizes.max_vips,
            sizes.max_backends,
            sizes.table_size,
            sizes.table_bytes() >> 20,
            model.hash_seed
        );

        let mut next_backend = 0u32;
        let mut vips = Vec::new();
        for (id, spec) in model.vips.iter().enumerate() {
            let backends = spec
                .backends
                .iter()
                .map(|b| {
                    let id = next_backend;
                    next_backend += 1;
                    BackendState {
                        spec: b.clone(),
                        id,
                        mac: b.mac,
                    }
                })
                .collect();
            vips.push(VipState {
                key: vip_key(spec.address, spec.port, spec.protocol),
                spec: spec.clone(),
                id: id as u32,
                backends,
            });
        }

        let mut daemon = Daemon {
            model,
            netlink,
            datapath,
            ifindex,
            vips,
        };
        let dynamic = daemon.dynamic_addresses();
        let resolved = daemon
            .netlink
            .resolve(ifindex, &dynamic, RESOLVE_TIMEOUT)
            .await?;
        for b in daemon.vips.iter_mut().flat_map(|v| v.backends.iter_mut()) {
            if b.spec.mac.is_none() {
                b.mac = resolved.get(&b.spec.address).copied();
            }
        }
        for i in 0..daemon.vips.len() {
            for b in 0..daemon.vips[i].backends.len() {
                let (id, mac) = (
                    daemon.vips[i].backends[b].id,
                    daemon.vips[i].backends[b].mac,
                );
                daemon.datapath.set_backend(id, mac)?;
            }
            daemon.sync_vip(i)?;
        }
        let iface = daemon.model.interface.clone();
        daemon
            .datapath
            .attach(ifindex, &iface, daemon.model.xdp_mode)?;
        log::info!(
            "attached to {iface} (ifindex {ifindex}, {if_mac}, {:?} mode)",
            daemon.model.xdp_mode
        );
        daemon.log_state();
        Ok(daemon)
    }

    /// Runs until `shutdown` completes, then detaches.
    pub async fn run_until(mut self, shutdown: impl Future<Output = ()>) -> Result<()> {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(NEIGHBOUR_POLL);
        let mut ticks = 0u32;
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tick.tick() => {
                    ticks += 1;
                    if let Err(e) = self.follow_neighbours(ticks.is_multiple_of(RESOLICIT_EVERY)).await {
                        log::warn!("neighbour refresh failed: {e:#}");
                    }
                }
            }
        }
        self.datapath.detach()?;
        log::info!("detached from {}", self.model.interface);
        self.log_counters();
        Ok(())
    }

    fn dynamic_addresses(&self) -> Vec<IpAddr> {
        let mut addrs: Vec<IpAddr> = self
            .vips
            .iter()
            .flat_map(|v| v.backends.iter())
            .filter(|b| b.spec.mac.is_none())
            .map(|b| b.spec.address)
            .collect();
        addrs.sort();
        addrs.dedup();
        addrs
    }

    /// Re-reads the neighbour table: a backend whose MAC changed is re-pointed, one that got
    /// (or lost) a MAC enters (or leaves) its VIP's table.
    async fn follow_neighbours(&mut self, resolicit: bool) -> Result<()> {
        if self.dynamic_addresses().is_empty() {
            return Ok(());
        }
        let table = self.netlink.neighbours(self.ifindex).await?;
        for v in 0..self.vips.len() {
            let mut membership_changed = false;
            for b in 0..self.vips[v].backends.len() {
                let backend = &self.vips[v].backends[b];
                if backend.spec.mac.is_some() {
                    continue;
                }
                let now = table.get(&backend.spec.address).copied();
                if now.is_none()
                    && resolicit
                    && let Err(e) = self
                        .netlink
                        .solicit(self.ifindex, backend.spec.address)
                        .await
                {
                    log::debug!("{e:#}");
                }
                if now == backend.mac {
                    continue;
                }
                let was_usable = backend.usable();
                let (id, addr, old) = (backend.id, backend.spec.address, backend.mac);
                match (old, now) {
                    (None, Some(m)) => log::info!("backend {addr} resolved to {m}"),
                    (Some(o), Some(m)) => log::info!("backend {addr} moved from {o} to {m}"),
                    (Some(o), None) => log::warn!("backend {addr} ({o}) lost its neighbour entry"),
                    (None, None) => {}
                }
                // A vanished entry keeps the last MAC: an entry that expires is normal, the
                // backend did not go anywhere (health checks decide about dead backends).
                let Some(now) = now else { continue };
                self.vips[v].backends[b].mac = Some(now);
                self.datapath.set_backend(id, Some(now))?;
                membership_changed |= !was_usable && self.vips[v].backends[b].usable();
            }
            if membership_changed {
                self.sync_vip(v)?;
            }
        }
        Ok(())
    }

    /// Builds VIP `index`'s table from its usable backends and installs it.
    fn sync_vip(&mut self, index: usize) -> Result<()> {
        let vip = &self.vips[index];
        let entries: Vec<maglev::Entry> = vip
            .backends
            .iter()
            .filter(|b| b.usable())
            .map(|b| maglev::Entry {
                address: b.spec.address,
                id: b.id,
                weight: b.spec.weight,
            })
            .collect();
        let table = maglev::build(&entries, self.model.table_size);
        if table.is_empty() {
            log::warn!(
                "VIP {} has no usable backend: its packets are dropped",
                vip.spec.name
            );
        }
        self.datapath
            .set_vip(vip.key, vip.id, &table)
            .with_context(|| format!("installing the table of VIP {}", vip.spec.name))
    }

    fn log_state(&self) {
        for v in &self.vips {
            log::info!(
                "VIP {} = {}:{}/{} ({} backends)",
                v.spec.name,
                v.spec.address,
                v.spec.port,
                v.spec.protocol,
                v.backends.len()
            );
            for b in &v.backends {
                let mac = b
                    .mac
                    .map_or("unresolved (not used)".to_owned(), |m| m.to_string());
                log::info!(
                    "  -> {} weight {} mac {}",
                    b.spec.address,
                    b.spec.weight,
                    mac
                );
            }
        }
    }

    fn log_counters(&self) {
        for v in &self.vips {
            if let Ok(t) = self.datapath.vip_totals(v.id) {
                log::info!(
                    "VIP {}: {} packets, {} bytes",
                    v.spec.name,
                    t.packets,
                    t.bytes
                );
            }
            for b in &v.backends {
                if let Ok(t) = self.datapath.backend_totals(b.id) {
                    log::info!(
                        "  -> {}: {} packets, {} bytes",
                        b.spec.address,
                        t.packets,
                        t.bytes
                    );
                }
            }
        }
        if let Ok(reasons) = self.datapath.reason_totals() {
            let line: Vec<String> = reasons
                .iter()
                .filter(|(_, t)| t.packets > 0)
                .map(|(r, t)| format!("{}={}", r.name(), t.packets))
                .collect();
            log::info!("verdicts: {}", line.join(" "));
        }
    }
}
