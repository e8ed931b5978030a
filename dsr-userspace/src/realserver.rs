//! `dsr realserver`: prepares a backend the way DSR needs it, and undoes exactly that.
//!
//! A DSR backend must accept packets addressed to the VIP (VIP on `lo`) without claiming the
//! VIP on the network (or it answers ARP for it and steals the load balancer's traffic):
//! `arp_ignore=1` (answer ARP only for addresses of the receiving interface) and
//! `arp_announce=2` (never use the VIP as ARP source). Strict reverse-path filtering
//! (`rp_filter=1`) drops client packets whose route back leaves by another interface; loose
//! mode (2) keeps the anti-spoofing check without that failure. The kernel applies the
//! maximum of `all` and the interface's value for all three, so `all` is what is set.
//!
//! Everything goes through netlink and sysctl files; every change is recorded with the value
//! it replaced, so `teardown` restores exactly what was there.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage};
use serde::{Deserialize, Serialize};

use crate::runtime::neighbour::Netlink;

/// The sysctls DSR needs: (path under /proc/sys, wanted value, acceptable values).
const SYSCTLS: [(&str, &str, &[&str]); 3] = [
    ("net/ipv4/conf/all/arp_ignore", "1", &["1", "2"]),
    ("net/ipv4/conf/all/arp_announce", "2", &["2"]),
    ("net/ipv4/conf/all/rp_filter", "2", &["0", "2"]),
];

/// What `setup` changed, so that `teardown` can undo it.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Record {
    pub vip: Option<IpAddr>,
    pub dev: String,
    /// The VIP address was added by us (it was not there before).
    pub added_address: bool,
    /// (sysctl path, previous value) for every sysctl we changed.
    pub sysctls: Vec<(String, String)>,
}

pub fn default_record_path(vip: IpAddr) -> PathBuf {
    PathBuf::from(format!("/var/lib/dsr/realserver-{vip}.json"))
}

fn read_sysctl(path: &str) -> Result<String> {
    let full = Path::new("/proc/sys").join(path);
    Ok(std::fs::read_to_string(&full)
        .with_context(|| format!("reading {}", full.display()))?
        .trim()
        .to_owned())
}

fn write_sysctl(path: &str, value: &str) -> Result<()> {
    let full = Path::new("/proc/sys").join(path);
    std::fs::write(&full, value).with_context(|| format!("writing {value} to {}", full.display()))
}

async fn find_address(nl: &Netlink, index: u32, vip: IpAddr) -> Result<Option<AddressMessage>> {
    let mut addrs = nl
        .handle()
        .address()
        .get()
        .set_link_index_filter(index)
        .set_address_filter(vip)
        .execute();
    Ok(addrs.try_next().await.ok().flatten())
}

/// Adds the VIP to `dev` and sets the sysctls. Returns what was done, one line per change.
pub async fn setup(vip: IpAddr, dev: &str, record_path: &Path) -> Result<Vec<String>> {
    let nl = Netlink::new()?;
    let (index, _) = nl.link(dev).await?;
    let mut record: Record = match std::fs::read_to_string(record_path) {
        Ok(text) => serde_json::from_str(&text)
            .with_context(|| format!("{} is not a dsr realserver record", record_path.display()))?,
        Err(_) => Record::default(),
    };
    if record.vip.is_some_and(|v| v != vip) || (!record.dev.is_empty() && record.dev != dev) {
        bail!(
            "{} records a setup of {:?} on {}; tear that down first or use another --state",
            record_path.display(),
            record.vip,
            record.dev
        );
    }
    record.vip = Some(vip);
    record.dev = dev.to_owned();
    let mut done = Vec::new();
    if find_address(&nl, index, vip).await?.is_none() {
        let prefix = if vip.is_ipv4() { 32 } else { 128 };
        let mut req = nl.handle().address().add(index, vip, prefix);
        if vip.is_ipv6() {
            // No duplicate address detection: every backend holds this address on purpose.
            req.message_mut().header.flags = AddressHeaderFlags::Nodad;
        }
        req.execute()
            .await
            .with_context(|| format!("adding {vip}/{prefix} to {dev}"))?;
        record.added_address = true;
        done.push(format!("added {vip}/{prefix} to {dev}"));
    }
    if vip.is_ipv4() {
        for (path, want, ok) in SYSCTLS {
            let old = read_sysctl(path)?;
            if !ok.contains(&old.as_str()) {
                write_sysctl(path, want)?;
                if !record.sysctls.iter().any(|(p, _)| p == path) {
                    record.sysctls.push((path.to_owned(), old.clone()));
                }
                done.push(format!("{} = {want} (was {old})", path.replace('/', ".")));
            }
        }
    } else {
        done.push(
            "note: Linux has no arp_ignore for IPv6: a backend answers neighbour solicitations \
             for the VIP; filter them (e.g. nftables: icmpv6 type nd-neighbor-solicit with the VIP \
             as target, drop) unless the VIP is routed to the load balancer"
                .into(),
        );
    }
    if let Some(dir) = record_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(record_path, serde_json::to_vec_pretty(&record)?)
        .with_context(|| format!("saving {}", record_path.display()))?;
    if done.is_empty() {
        done.push(format!(
            "nothing to do: {vip} on {dev} is already set up for DSR"
        ));
    }
    Ok(done)
}

/// Undoes what `setup` recorded, and only that.
pub async fn teardown(record_path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(record_path).with_context(|| {
        format!(
            "no setup recorded in {} (nothing to undo)",
            record_path.display()
        )
    })?;
    let record: Record = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a dsr realserver record", record_path.display()))?;
    let mut done = Vec::new();
    for (path, old) in record.sysctls.iter().rev() {
        write_sysctl(path, old)?;
        done.push(format!("{} = {old} (restored)", path.replace('/', ".")));
    }
    if record.added_address
        && let Some(vip) = record.vip
    {
        let nl = Netlink::new()?;
        let (index, _) = nl.link(&record.dev).await?;
        if let Some(msg) = find_address(&nl, index, vip).await? {
            nl.handle()
                .address()
                .del(msg)
                .execute()
                .await
                .with_context(|| format!("removing {vip} from {}", record.dev))?;
            done.push(format!("removed {vip} from {}", record.dev));
        }
    }
    std::fs::remove_file(record_path)?;
    if done.is_empty() {
        done.push("nothing to undo: setup had changed nothing".into());
    }
    Ok(done)
}

/// What a DSR backend for `vip` lacks: (what, ok, detail) per item.
pub async fn check(vip: IpAddr, dev: &str) -> Result<Vec<(String, bool, String)>> {
    let nl = Netlink::new()?;
    let (index, _) = nl.link(dev).await?;
    let mut out = Vec::new();
    let present = find_address(&nl, index, vip).await?.is_some_and(|m| {
        m.attributes.iter().any(
            |a| matches!(a, AddressAttribute::Address(a) | AddressAttribute::Local(a) if *a == vip),
        )
    });
    out.push((
        format!("{vip} on {dev}"),
        present,
        if present {
            "present".into()
        } else {
            "missing: the backend drops the VIP's packets".into()
        },
    ));
    if vip.is_ipv4() {
        for (path, want, ok) in SYSCTLS {
            let have = read_sysctl(path)?;
            let good = ok.contains(&have.as_str());
            out.push((
                path.replace('/', "."),
                good,
                if good {
                    have.clone()
                } else {
                    format!("{have}, needs {want}")
                },
            ));
        }
    }
    Ok(out)
}
