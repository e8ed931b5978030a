//! Keeping VLAN tags where XDP can see them.
//!
//! A tag handed over as metadata instead of in the frame is invisible to XDP: the program
//! sees the frame untagged, a `vlan` VIP never matches, and XDP_TX sends the frame out on the
//! native VLAN. On a NIC that is `rx-vlan-hw-parse` / `rx-vlan-stag-hw-parse` (the tag goes
//! into the RX descriptor), which dsr turns off on the interface it attaches to. On a veth
//! it is the *sending* peer's `tx-vlan-hw-insert` / `tx-vlan-stag-hw-insert` (the tag stays
//! in the skb across the pair), which dsr cannot see or change from its side: there, and
//! where the driver will not let the rx flags go, only the operator can vouch for the tags.
//!
//! What dsr changed is saved in the state directory before it changes it, so that `dsr stop`
//! can put it back even after restarts and crashes; SIGTERM leaves it, as it leaves the data
//! path, because the data path keeps running and still needs the tags.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

use crate::{datapath::ethtool, spec::model::VlanTags};

/// The features that strip tags into metadata on receive.
pub const RX_PARSE: [&str; 2] = ["rx-vlan-hw-parse", "rx-vlan-stag-hw-parse"];

/// What [`prepare`] found and did.
#[derive(Debug, Default)]
pub struct Prepared {
    /// The features dsr turned off now, with the value each had (`true`).
    pub changed: Vec<(String, bool)>,
    /// Why tags may still arrive out of band, if they may.
    pub unsure: Option<String>,
}

/// interface -> feature -> the value it had before dsr first changed it.
type Saved = BTreeMap<String, BTreeMap<String, bool>>;

fn saved_file(state_dir: &Path) -> PathBuf {
    state_dir.join("offload.json")
}

/// Before dsr attaches to `ifname`: refuses (changing nothing) if a `vlan` VIP could never
/// match there, else turns off the RX tag stripping it can, remembering the old values.
pub fn prepare(
    ifname: &str,
    any_vip_uses_vlan: bool,
    vlan_tags: VlanTags,
    state_dir: &Path,
) -> Result<Prepared> {
    let (features, unsure) = assess(ifname)?;
    if let Some(why) = &unsure {
        match (any_vip_uses_vlan, vlan_tags) {
            (_, VlanTags::InBand) => {
                log::info!(
                    "vlan_tags = \"in-band\": trusting that tags reach {ifname} in the frame"
                )
            }
            (true, VlanTags::Auto) => return Err(refusal("refusing to start", ifname, why)),
            (false, VlanTags::Auto) => log::warn!(
                "VLAN tags may not reach XDP on {ifname} ({why}): tagged frames would be \
                 forwarded untagged, on the native VLAN. If VIP traffic is tagged: {}",
                remedy(ifname)
            ),
        }
    }
    let changed: Vec<(String, bool)> = features
        .iter()
        .filter(|f| f.active && f.available && !f.fixed)
        .map(|f| (f.name.clone(), true))
        .collect();
    if changed.is_empty() {
        return Ok(Prepared { changed, unsure });
    }
    // Saved first: if dsr dies between the two steps, `dsr stop` still knows the originals.
    // A value saved by an earlier start is the true original (now it reads dsr's own "off").
    let mut saved = read(state_dir)?;
    let entry = saved.entry(ifname.to_owned()).or_default();
    for (name, was) in &changed {
        entry.entry(name.clone()).or_insert(*was);
    }
    write(state_dir, &saved)?;
    let off: Vec<(&str, bool)> = changed.iter().map(|(n, _)| (n.as_str(), false)).collect();
    ethtool::set_features(ifname, &off).with_context(|| {
        format!("turning off VLAN tag stripping on {ifname}, so that XDP sees the tags")
    })?;
    let names: Vec<&str> = changed.iter().map(|(n, _)| n.as_str()).collect();
    log::info!(
        "turned off {} on {ifname} so that XDP sees VLAN tags (`dsr stop` turns them back on)",
        names.join(", ")
    );
    Ok(Prepared { changed, unsure })
}

/// For a `vlan` VIP added while running (reload, `dsr vip add`): the same refusal as at
/// start, without changing anything.
pub fn check(ifname: &str, any_vip_uses_vlan: bool, vlan_tags: VlanTags) -> Result<()> {
    check_as("refused", ifname, any_vip_uses_vlan, vlan_tags)
}

/// [`check`] for `dsr run`, before anything is touched.
pub fn check_start(ifname: &str, any_vip_uses_vlan: bool, vlan_tags: VlanTags) -> Result<()> {
    check_as("refusing to start", ifname, any_vip_uses_vlan, vlan_tags)
}

fn check_as(what: &str, ifname: &str, any_vip_uses_vlan: bool, vlan_tags: VlanTags) -> Result<()> {
    if !any_vip_uses_vlan || vlan_tags == VlanTags::InBand {
        return Ok(());
    }
    match assess(ifname)? {
        (_, Some(why)) => Err(refusal(what, ifname, &why)),
        (_, None) => Ok(()),
    }
}

/// The interface's RX tag stripping, and why tags may arrive out of band even with it off.
fn assess(ifname: &str) -> Result<(Vec<ethtool::Feature>, Option<String>)> {
    // Not every device reports a driver (loopback does not): that says nothing about tags.
    let driver = ethtool::driver(ifname).unwrap_or_default();
    let features = ethtool::features(ifname, &RX_PARSE)
        .with_context(|| format!("reading the VLAN offloads of {ifname}"))?;
    let stuck: Vec<&str> = features
        .iter()
        .filter(|f| f.active && f.fixed)
        .map(|f| f.name.as_str())
        .collect();
    let unsure = if driver == "veth" {
        Some(format!(
            "{ifname} is a veth: with tx-vlan-hw-insert or tx-vlan-stag-hw-insert on at its \
             peer (the default) a tag crosses the pair as metadata and XDP sees the frame \
             untagged"
        ))
    } else if !stuck.is_empty() {
        Some(format!(
            "{ifname} ({driver}) strips VLAN tags before XDP and will not stop: {} on [fixed]",
            stuck.join(", ")
        ))
    } else {
        None
    };
    Ok((features, unsure))
}

fn remedy(ifname: &str) -> String {
    format!(
        "turn off tx-vlan-hw-insert tx-vlan-stag-hw-insert on the peer that sends to {ifname} \
         (e.g. `ethtool -K PEER tx-vlan-hw-insert off tx-vlan-stag-hw-insert off`), or set \
         vlan_tags = \"in-band\" in the config to vouch that tags arrive in the frame"
    )
}

fn refusal(what: &str, ifname: &str, why: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{what}: a VIP sets `vlan` but dsr cannot see VLAN tags on {ifname} for \
         sure ({why}); such a VIP would never match and tagged traffic would be forwarded \
         untagged. Remedy: {}",
        remedy(ifname)
    )
}

/// Puts back every feature value saved by [`prepare`] (for `dsr stop`); returns what it did.
/// Values that cannot be put back (an interface gone) stay saved for the next stop.
pub fn restore(state_dir: &Path) -> Result<Vec<String>> {
    let saved = read(state_dir)?;
    let mut done = Vec::new();
    let mut left = Saved::new();
    let mut errors = Vec::new();
    for (ifname, features) in saved {
        let want: Vec<(&str, bool)> = features.iter().map(|(n, &v)| (n.as_str(), v)).collect();
        match ethtool::set_features(&ifname, &want) {
            Ok(()) => done.extend(
                want.iter()
                    .map(|(n, v)| format!("{n} {} on {ifname}", if *v { "on" } else { "off" })),
            ),
            Err(e) => {
                errors.push(format!("{e}"));
                left.insert(ifname, features);
            }
        }
    }
    if left.is_empty() {
        match std::fs::remove_file(saved_file(state_dir)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).context(format!("removing {}", saved_file(state_dir).display()));
            }
            _ => {}
        }
    } else {
        write(state_dir, &left)?;
    }
    if !errors.is_empty() {
        bail!(
            "could not restore the VLAN offloads dsr changed ({}); still saved in {}",
            errors.join("; "),
            saved_file(state_dir).display()
        );
    }
    Ok(done)
}

/// [`restore`] for the daemon's stop: logs what happened.
pub fn restore_logged(state_dir: &Path) {
    match restore(state_dir) {
        Ok(done) if !done.is_empty() => log::info!("restored {}", done.join(", ")),
        Ok(_) => {}
        Err(e) => log::error!("{e:#}"),
    }
}

/// For `dsr stop` without a running daemon: what is still saved, as the `ethtool` commands
/// that put it back. Not applied from here: the CLI may run in another network namespace than
/// the interface, where the same name can be another device.
pub fn pending(state_dir: &Path) -> Option<String> {
    let saved = read(state_dir).ok().filter(|s| !s.is_empty())?;
    let commands: Vec<String> = saved
        .iter()
        .map(|(ifname, features)| {
            let args: Vec<String> = features
                .iter()
                .map(|(n, &v)| format!("{n} {}", if v { "on" } else { "off" }))
                .collect();
            format!("`ethtool -K {ifname} {}`", args.join(" "))
        })
        .collect();
    Some(format!(
        "the VLAN offloads dsr changed were not restored (the daemon is not running): {} in \
         the interface's network namespace restores them, then remove {}",
        commands.join(", "),
        saved_file(state_dir).display()
    ))
}

fn read(state_dir: &Path) -> Result<Saved> {
    let path = saved_file(state_dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Saved::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn write(state_dir: &Path, saved: &Saved) -> Result<()> {
    let path = saved_file(state_dir);
    (|| -> Result<()> {
        std::fs::create_dir_all(state_dir)?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(saved)?)?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    })()
    .with_context(|| format!("saving the original VLAN offloads to {}", path.display()))
}
