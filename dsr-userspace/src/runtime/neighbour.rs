//! MAC addresses from the kernel, over rtnetlink: an interface's own MAC and ifindex, and the
//! neighbour (ARP/NDP) table, including asking the kernel to resolve an entry it lacks.

use std::{collections::HashMap, net::IpAddr, time::Duration};

use anyhow::{Context, Result, anyhow, bail};
use futures_util::{StreamExt, TryStreamExt};
use rtnetlink::{
    Handle,
    packet_core::NetlinkPayload,
    packet_route::{
        RouteNetlinkMessage,
        link::LinkAttribute,
        neighbour::{
            NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
        },
    },
    sys::{AsyncSocket, SocketAddr},
};
use tokio::sync::mpsc;

/// Legacy multicast group bitmask for neighbour-table changes (RTMGRP_NEIGH, linux/rtnetlink.h).
const RTMGRP_NEIGH: u32 = 0x4;

/// A neighbour entry that appeared or changed: (ifindex, address, MAC).
pub type NeighbourEvent = (u32, IpAddr, MacAddr);

use crate::spec::model::MacAddr;

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

    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// The interface the main routing table sends `addr` out of (longest prefix match).
    pub async fn route_ifindex(&self, addr: IpAddr) -> Result<Option<u32>> {
        use rtnetlink::packet_route::{
            AddressFamily,
            route::{RouteAddress, RouteAttribute, RouteMessage},
        };
        let mut query = RouteMessage::default();
        query.header.address_family = match addr {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        let mut routes = self.handle.route().get(query).execute();
        let mut best: Option<(u8, u32)> = None;
        while let Some(route) = routes.try_next().await.context("dumping routes")? {
            let table = route
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(route.header.table as u32);
            if table != 254 {
                continue;
            }
            let len = route.header.destination_prefix_length;
            let mut oif = None;
            let mut dst: Option<IpAddr> = None;
            for a in &route.attributes {
                match a {
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::Destination(RouteAddress::Inet(d)) => {
                        dst = Some(IpAddr::V4(*d))
                    }
                    RouteAttribute::Destination(RouteAddress::Inet6(d)) => {
                        dst = Some(IpAddr::V6(*d))
                    }
                    _ => {}
                }
            }
            let matches = match (dst, addr) {
                (None, _) => len == 0,
                (Some(IpAddr::V4(d)), IpAddr::V4(a)) => {
                    let mask = if len == 0 {
                        0
                    } else {
                        u32::MAX << (32 - len as u32)
                    };
                    u32::from(d) & mask == u32::from(a) & mask
                }
                (Some(IpAddr::V6(d)), IpAddr::V6(a)) => {
                    let mask = if len == 0 {
                        0
                    } else {
                        u128::MAX << (128 - len as u32)
                    };
                    u128::from(d) & mask == u128::from(a) & mask
                }
                _ => false,
            };
            if let (true, Some(oif)) = (matches, oif)
                && best.is_none_or(|(l, _)| len > l)
            {
                best = Some((len, oif));
            }
        }
        Ok(best.map(|(_, oif)| oif))
    }

    /// Name and MAC of the interface with index `ifindex`.
    pub async fn link_by_index(&self, ifindex: u32) -> Result<(String, MacAddr)> {
        let mut links = self.handle.link().get().match_index(ifindex).execute();
        let msg = match links.try_next().await {
            Ok(Some(msg)) => msg,
            _ => bail!("no interface with index {ifindex}"),
        };
        let mut name = String::new();
        let mut mac = None;
        for a in &msg.attributes {
            match a {
                LinkAttribute::IfName(n) => name = n.clone(),
                LinkAttribute::Address(b) if b.len() == 6 => {
                    mac = Some(MacAddr(b.as_slice().try_into().expect("6 bytes")))
                }
                _ => {}
            }
        }
        Ok((
            name,
            mac.ok_or_else(|| anyhow!("interface {ifindex} has no Ethernet address"))?,
        ))
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
            if let Some((_, addr, mac)) = usable_entry(&msg) {
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

    /// Makes the kernel forget `addr` and resolve it afresh (a broadcast ARP request or
    /// multicast solicitation): after a failed check the address may have moved to another
    /// host, which a unicast re-probe of the old MAC would never learn.
    pub async fn reprobe(&self, ifindex: u32, addr: IpAddr) -> Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = match addr {
            IpAddr::V4(_) => rtnetlink::packet_route::AddressFamily::Inet,
            IpAddr::V6(_) => rtnetlink::packet_route::AddressFamily::Inet6,
        };
        msg.header.ifindex = ifindex;
        msg.attributes
            .push(NeighbourAttribute::Destination(match addr {
                IpAddr::V4(a) => NeighbourAddress::Inet(a),
                IpAddr::V6(a) => NeighbourAddress::Inet6(a),
            }));
        // A missing entry is fine: there is nothing to forget.
        let _ = self.handle.neighbours().del(msg).execute().await;
        self.solicit(ifindex, addr).await
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

/// (ifindex, address, MAC) of an entry that can be used (resolved, not failed).
fn usable_entry(msg: &NeighbourMessage) -> Option<NeighbourEvent> {
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
        return None;
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
                mac = Some(MacAddr(l.as_slice().try_into().expect("6 bytes")))
            }
            _ => {}
        }
    }
    Some((msg.header.ifindex, addr?, mac?))
}

/// Subscribes to the kernel's neighbour-table changes (new or updated entries, e.g. after a
/// gratuitous ARP when an address moves to another host). Events arrive on the receiver.
pub fn subscribe() -> Result<mpsc::UnboundedReceiver<NeighbourEvent>> {
    let (mut conn, _handle, mut messages) =
        rtnetlink::new_connection().context("opening rtnetlink for neighbour events")?;
    conn.socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(0, RTMGRP_NEIGH))
        .context("joining the neighbour multicast group")?;
    tokio::spawn(conn);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some((message, _)) = messages.next().await {
            if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(msg)) =
                message.payload
                && let Some(event) = usable_entry(&msg)
                && tx.send(event).is_err()
            {
                return;
            }
        }
    });
    Ok(rx)
}
