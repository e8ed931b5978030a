//! MAC addresses from the kernel, over rtnetlink: an interface's own MAC and ifindex, and the
//! neighbour (ARP/NDP) table, including asking the kernel to resolve an entry it lacks.

use std::{collections::HashMap, net::IpAddr, time::Duration};

use anyhow::{Context, Result, anyhow, bail};
use futures_util::TryStreamExt;
use rtnetlink::{
    Handle,
    packet_route::{
        link::LinkAttribute,
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourState},
    },
};

use crate::model::MacAddr;

#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a netlink connection (in the caller's network namespace); needs a tokio runtime.
    pub fn new() -> Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// ifindex and MAC of the interface `name`.
    pub async fn link(&self, name: &str) -> Result<(u32, MacAddr)> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        let msg = match links.try_next().await {
            Ok(Some(msg)) => msg,
            Ok(None) | Err(_) => bail!("interface {name:?} not found"),
        };
        let mac = msg
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Address(bytes) if bytes.len() == 6 => {
                    Some(MacAddr(bytes.as_slice().try_into().unwrap()))
                }
                _ => None,
            })
            .ok_or_else(|| anyhow!("interface {name:?} has no Ethernet address"))?;
        Ok((msg.header.index, mac))
    }

    /// Usable neighbour entries on `ifindex`: address -> MAC. Entries that are incomplete or
    /// failed are left out.
    pub async fn neighbours(&self, ifindex: u32) -> Result<HashMap<IpAddr, MacAddr>> {
        let mut out = HashMap::new();
        let mut dump = self.handle.neighbours().get().execute();
        while let Some(msg) = dump
            .try_next()
            .await
            .context("dumping the neighbour table")?
        {
            if msg.header.ifindex != ifindex {
                continue;
            }
            let usable = matches!(
                msg.header.state,
                NeighbourState::Reachable
                    | NeighbourState::Stale
                    | NeighbourState::Delay
                    | NeighbourState::Probe
                    | NeighbourState::Permanent
                    | NeighbourState::Noarp
            );
            if !usable {
                continue;
            }
            let mut addr = None;
            let mut mac = None;
            for attr in &msg.attributes {
                match attr {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                        addr = Some(IpAddr::V4(*a))
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                        addr = Some(IpAddr::V6(*a))
                    }
                    NeighbourAttribute::LinkLocalAddress(l) if l.len() == 6 => {
                        mac = Some(MacAddr(l.as_slice().try_into().unwrap()))
                    }
                    _ => {}
                }
            }
            if let (Some(addr), Some(mac)) = (addr, mac) {
                out.insert(addr, mac);
            }
        }
        Ok(out)
    }

    /// Asks the kernel to resolve `addr` on `ifindex` (an ARP request or neighbour
    /// solicitation), creating the entry if needed: RTM_NEWNEIGH with NTF_USE, as
    /// `ip neigh replace ADDR dev DEV use` does. No packet of ours goes to the backend.
    pub async fn solicit(&self, ifindex: u32, addr: IpAddr) -> Result<()> {
        self.handle
            .neighbours()
            .add(ifindex, addr)
            .state(NeighbourState::None)
            .flags(NeighbourFlags::Use)
            .replace()
            .execute()
            .await
            .with_context(|| format!("asking the kernel to resolve {addr}"))
    }

    /// MACs of `addrs` on `ifindex`, soliciting the ones the table lacks and waiting up to
    /// `timeout` for them. Addresses still unresolved are missing from the result.
    pub async fn resolve(
        &self,
        ifindex: u32,
        addrs: &[IpAddr],
        timeout: Duration,
    ) -> Result<HashMap<IpAddr, MacAddr>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut solicited = false;
        loop {
            let table = self.neighbours(ifindex).await?;
            let missing: Vec<IpAddr> = addrs
                .iter()
                .copied()
                .filter(|a| !table.contains_key(a))
                .collect();
            if missing.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(addrs
                    .iter()
                    .filter_map(|a| table.get(a).map(|m| (*a, *m)))
                    .collect());
            }
            if !solicited {
                for a in &missing {
                    if let Err(e) = self.solicit(ifindex, *a).await {
                        log::warn!("{e:#}");
                    }
                }
                solicited = true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
