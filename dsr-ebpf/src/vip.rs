//! Which VIP a packet is for: VIP_FILTER first (a clear bit: not a VIP address, for the
//! price of an array read), then the exact VIPS key (the usual hit), then VIP_ADDRS (which
//! other keys exist for the address) and VIPS from the most specific key to the least: this VLAN
//! before any VLAN, the exact port before all ports.

use dsr_common::{
    ADDR_F_PORT0, ADDR_F_PORTS, ADDR_F_VLAN, FlowKey, VIP_F_FRAGMENT_ALIAS, VipAddrKey, VipInfo,
    VipKey, parse::Kind, vip_filter_bit,
};

use crate::maps::{VIP_ADDRS, VIP_FILTER, VIPS};

#[inline(always)]
fn lookup(addr: [u32; 4], port: u16, proto: u8, vlan: u16) -> Option<VipInfo> {
    let key = VipKey {
        addr,
        port,
        proto,
        _pad: 0,
        vlan,
        _pad2: 0,
    };
    // SAFETY: VIPS is BPF_F_NO_PREALLOC (elements are RCU-freed, never recycled under us),
    // and the value is copied out at once.
    unsafe { VIPS.get(&key) }.copied()
}

#[inline(always)]
pub fn find(key: &FlowKey, vlan: u16, kind: Kind) -> Option<VipInfo> {
    let bit = vip_filter_bit(&key.dst);
    let word = VIP_FILTER.get(bit / 64)?;
    if word & (1 << (bit % 64)) == 0 {
        return None;
    }
    let proto = key.proto as u8;
    let port = (key.ports >> 16) as u16;
    let has_port = !matches!(kind, Kind::Fragment { first: false });
    let fragment = matches!(kind, Kind::Fragment { .. });
    // The most specific key first (this port, this frame's VLAN or none): for most VIP
    // traffic it is the only lookup.
    if has_port
        && let Some(info) = lookup(key.dst, port, proto, vlan)
        && info.flags & VIP_F_FRAGMENT_ALIAS == 0
    {
        return Some(info);
    }
    let addr_key = VipAddrKey {
        addr: key.dst,
        proto,
        _pad: [0; 3],
    };
    // SAFETY: plain data, copied out at once.
    let flags = unsafe { VIP_ADDRS.get(&addr_key) }.copied()?.flags;
    let tagged = vlan != 0 && flags & ADDR_F_VLAN != 0;
    for pass in 0..2 {
        // First pass: the frame's VLAN (only if some key is VLAN-specific); second: any.
        let v = if pass == 0 && tagged { vlan } else { 0 };
        if pass == 1 && !tagged {
            break;
        }
        if has_port
            && v != vlan
            && flags & ADDR_F_PORTS != 0
            && let Some(info) = lookup(key.dst, port, proto, v)
            && info.flags & VIP_F_FRAGMENT_ALIAS == 0
        {
            return Some(info);
        }
        if flags & ADDR_F_PORT0 != 0
            && let Some(info) = lookup(key.dst, 0, proto, v)
            && (info.flags & VIP_F_FRAGMENT_ALIAS == 0 || fragment)
        {
            return Some(info);
        }
    }
    None
}
