//! Netdev features ("offloads", what `ethtool -k` shows and `ethtool -K` sets) by their kernel
//! names, over the SIOCETHTOOL ioctl.
//!
//! No crate at the versions this workspace can use sets features (the ethtool netlink crate
//! only reads some of them), and the ioctl interface is small and stable: the kernel keeps it
//! for the `ethtool` tool itself. Layouts and numbers follow include/uapi/linux/ethtool.h.
//!
//! Every call works in the calling thread's network namespace (the socket it opens lives
//! there), like every other interface lookup in dsr.

use std::{
    ffi::CStr,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

const ETHTOOL_GDRVINFO: u32 = 0x03;
const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GSSET_INFO: u32 = 0x37;
const ETHTOOL_GFEATURES: u32 = 0x3a;
const ETHTOOL_SFEATURES: u32 = 0x3b;
/// `enum ethtool_stringset`: the names of the netdev feature bits.
const ETH_SS_FEATURES: u32 = 4;
const ETH_GSTRING_LEN: usize = 32;

/// `struct ethtool_drvinfo`.
#[repr(C)]
struct DrvInfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

/// `struct ethtool_sset_info` with room for the one set asked for.
#[repr(C)]
struct SsetInfo {
    cmd: u32,
    reserved: u32,
    sset_mask: u64,
    data: [u32; 1],
}

/// One netdev feature as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Feature {
    pub name: String,
    /// The driver lets it be turned on and off.
    pub available: bool,
    pub active: bool,
    /// Cannot be changed on this device (`ethtool -k` shows `[fixed]`).
    pub fixed: bool,
}

/// The name of the interface's driver ("veth", "mlx5_core", ...).
pub fn driver(ifname: &str) -> io::Result<String> {
    let sock = socket()?;
    // SAFETY: DrvInfo is plain old data; all zeroes is a valid value.
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    ioctl(
        &sock,
        ifname,
        "ETHTOOL_GDRVINFO",
        (&mut info as *mut DrvInfo).cast(),
    )?;
    Ok(c_string(&info.driver))
}

/// The named features of `ifname`, in the order asked for. A name the kernel does not know is
/// an error naming it.
pub fn features(ifname: &str, names: &[&str]) -> io::Result<Vec<Feature>> {
    let sock = socket()?;
    let table = feature_names(&sock, ifname)?;
    let blocks = get_features(&sock, ifname, table.len())?;
    names
        .iter()
        .map(|&name| {
            let bit = index_of(&table, ifname, name)?;
            let (word, mask) = (bit / 32, 1u32 << (bit % 32));
            let block = blocks[word];
            let available = block.available & mask != 0;
            Ok(Feature {
                name: name.to_owned(),
                available,
                active: block.active & mask != 0,
                fixed: !available || block.never_changed & mask != 0,
            })
        })
        .collect()
}

/// Turns the named features on or off, then reads them back: the kernel silently keeps a
/// feature it cannot change (or that a dependency holds), so only the read-back says whether
/// the request took. The error names the interface and the first feature that did not.
pub fn set_features(ifname: &str, wanted: &[(&str, bool)]) -> io::Result<()> {
    let sock = socket()?;
    let table = feature_names(&sock, ifname)?;
    let words = table.len().div_ceil(32);
    let before = get_features(&sock, ifname, table.len())?;
    // struct ethtool_sfeatures: cmd, size, then {valid, requested} per 32 features.
    let mut req = vec![0u32; 2 + 2 * words];
    req[0] = ETHTOOL_SFEATURES;
    req[1] = words as u32;
    for &(name, on) in wanted {
        let bit = index_of(&table, ifname, name)?;
        let (word, mask) = (bit / 32, 1u32 << (bit % 32));
        let was_on = before[word].active & mask != 0;
        if before[word].available & mask == 0 && was_on != on {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{ifname}: {name} is {} and fixed (the driver does not let it change)",
                    on_off(was_on)
                ),
            ));
        }
        req[2 + 2 * word] |= mask;
        if on {
            req[3 + 2 * word] |= mask;
        }
    }
    ioctl(&sock, ifname, "ETHTOOL_SFEATURES", req.as_mut_ptr().cast())?;
    let after = get_features(&sock, ifname, table.len())?;
    for &(name, on) in wanted {
        let bit = index_of(&table, ifname, name)?;
        if (after[bit / 32].active & (1 << (bit % 32)) != 0) != on {
            return Err(io::Error::other(format!(
                "{ifname}: asked the kernel to turn {name} {}, it is still {}",
                on_off(on),
                on_off(!on)
            )));
        }
    }
    Ok(())
}

fn on_off(on: bool) -> &'static str {
    if on { "on" } else { "off" }
}

#[derive(Clone, Copy, Default)]
struct Block {
    available: u32,
    #[allow(dead_code)] // part of the layout; what the user asked for is not needed here
    requested: u32,
    active: u32,
    never_changed: u32,
}

fn index_of(table: &[String], ifname: &str, name: &str) -> io::Result<usize> {
    table.iter().position(|n| n == name).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{ifname}: the kernel has no netdev feature named {name:?}"),
        )
    })
}

/// Bit i of the feature masks is named by string i of ETH_SS_FEATURES.
fn feature_names(sock: &OwnedFd, ifname: &str) -> io::Result<Vec<String>> {
    let mut info = SsetInfo {
        cmd: ETHTOOL_GSSET_INFO,
        reserved: 0,
        sset_mask: 1 << ETH_SS_FEATURES,
        data: [0],
    };
    ioctl(
        sock,
        ifname,
        "ETHTOOL_GSSET_INFO",
        (&mut info as *mut SsetInfo).cast(),
    )?;
    if info.sset_mask & (1 << ETH_SS_FEATURES) == 0 {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("{ifname}: the kernel reports no feature names"),
        ));
    }
    let n = info.data[0] as usize;
    // struct ethtool_gstrings: cmd, string_set, len, then n names of ETH_GSTRING_LEN bytes.
    // A u32 buffer keeps the header aligned.
    let mut buf = vec![0u32; 3 + (n * ETH_GSTRING_LEN).div_ceil(4)];
    buf[0] = ETHTOOL_GSTRINGS;
    buf[1] = ETH_SS_FEATURES;
    buf[2] = n as u32;
    ioctl(sock, ifname, "ETHTOOL_GSTRINGS", buf.as_mut_ptr().cast())?;
    let got = (buf[2] as usize).min(n);
    // SAFETY: viewing the u32 buffer we own as bytes, within its length.
    let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), buf.len() * 4) };
    Ok(bytes[12..12 + got * ETH_GSTRING_LEN]
        .chunks(ETH_GSTRING_LEN)
        .map(c_string)
        .collect())
}

fn get_features(sock: &OwnedFd, ifname: &str, n: usize) -> io::Result<Vec<Block>> {
    let words = n.div_ceil(32);
    // struct ethtool_gfeatures: cmd, size, then 4 u32 masks per 32 features.
    let mut buf = vec![0u32; 2 + 4 * words];
    buf[0] = ETHTOOL_GFEATURES;
    buf[1] = words as u32;
    ioctl(sock, ifname, "ETHTOOL_GFEATURES", buf.as_mut_ptr().cast())?;
    Ok(buf[2..]
        .chunks(4)
        .map(|b| Block {
            available: b[0],
            requested: b[1],
            active: b[2],
            never_changed: b[3],
        })
        .collect())
}

fn socket() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the fd is checked and then owned.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ioctl(sock: &OwnedFd, ifname: &str, what: &str, data: *mut libc::c_char) -> io::Result<()> {
    if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ || ifname.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{ifname:?} is not an interface name"),
        ));
    }
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in ifr.ifr_name.iter_mut().zip(ifname.as_bytes()) {
        *dst = src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = data;
    // SAFETY: `data` points to a command buffer sized for what its command returns.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut ifr) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what} on {ifname}: {e}")));
    }
    Ok(())
}

fn c_string(bytes: &[u8]) -> String {
    CStr::from_bytes_until_nul(bytes)
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|_| String::from_utf8_lossy(bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loopback exists in every namespace, has a driver-independent feature list, and its
    /// VLAN offloads are not changeable: enough to check the layouts without root changes.
    #[test]
    fn reads_loopback() {
        let f = features("lo", &["rx-vlan-hw-parse", "tx-checksum-ip-generic"]).unwrap();
        assert_eq!(f[0].name, "rx-vlan-hw-parse");
        assert!(f[0].fixed && !f[0].available, "{f:?}");
        assert!(f[1].active, "{f:?}");
        let e = features("lo", &["no-such-feature"]).unwrap_err();
        assert!(e.to_string().contains("lo") && e.to_string().contains("no-such-feature"));
        let e = set_features("lo", &[("rx-vlan-hw-parse", true)]).unwrap_err();
        assert!(e.to_string().contains("fixed"), "{e}");
    }
}
