//! From a frame to the facts the decision needs: the flow, its VLAN, and what kind of packet
//! it is (plain TCP/UDP, a fragment, an ICMP "packet too big" about a flow).

use aya_ebpf::programs::XdpContext;
use dsr_common::{FlowKey, Reason};

use crate::headers::{
    ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV4, ETH_P_IPV6, EthHdr, IPPROTO_FRAGMENT, IPPROTO_ICMP,
    IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, IcmpHdr, Ipv4Hdr, Ipv6FragHdr, Ipv6Hdr, Ports,
    VlanHdr, read_at,
};

const TCP_MIN_HDR: usize = 20;
const UDP_HDR: usize = 8;
/// `::ffff:0:0/96` third word, as read from the packet: v4 flows are keyed as IPv4-mapped IPv6.
const V4_MAPPED: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
const ICMPV6_PKT_TOOBIG: u8 = 2;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A whole TCP/UDP packet.
    Plain,
    /// A fragment; `key.ports` is 0 unless it is the first one.
    Fragment { first: bool },
    /// An ICMP error about a flow to a VIP; `key` is that flow, seen from the client.
    TooBig,
}

#[derive(Clone, Copy)]
pub struct Packet {
    pub key: FlowKey,
    /// Outer VLAN id (0 = untagged).
    pub vlan: u16,
    pub kind: Kind,
}

/// Parses Ethernet (with up to two VLAN tags) and IPv4/IPv6. Errors are the reason to pass.
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Packet, Reason> {
    let eth: EthHdr = read_at(ctx, 0).ok_or(Reason::Malformed)?;
    let mut ethertype = u16::from_be_bytes(eth.ethertype);
    let mut offset = EthHdr::LEN;
    let mut vlan = 0u16;
    // 802.1Q, or QinQ (802.1ad outer + 802.1Q inner). The tags stay on the frame: only
    // MAC addresses are rewritten.
    for depth in 0..2 {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let tag: VlanHdr = read_at(ctx, offset).ok_or(Reason::Malformed)?;
        if depth == 0 {
            vlan = u16::from_be_bytes(tag.tci) & 0x0fff;
        }
        ethertype = u16::from_be_bytes(tag.ethertype);
        offset += 4;
    }
    let (key, kind) = match ethertype {
        ETH_P_IPV4 => ipv4(ctx, offset)?,
        ETH_P_IPV6 => ipv6(ctx, offset)?,
        ETH_P_8021Q | ETH_P_8021AD => return Err(Reason::TooManyVlanTags),
        _ => return Err(Reason::NotIp),
    };
    Ok(Packet { key, vlan, kind })
}

/// Reads the ports of a TCP/UDP header at `offset`, checking that the minimum header is there.
#[inline(always)]
fn ports(ctx: &XdpContext, offset: usize, proto: u8) -> Result<u32, Reason> {
    let min = if proto == IPPROTO_TCP {
        TCP_MIN_HDR
    } else {
        UDP_HDR
    };
    if ctx.data() + offset + min > ctx.data_end() {
        return Err(Reason::Malformed);
    }
    let p: Ports = read_at(ctx, offset).ok_or(Reason::Malformed)?;
    Ok(p.src as u32 | (p.dst as u32) << 16)
}

fn v4_words(addr: u32) -> [u32; 4] {
    [0, 0, V4_MAPPED, addr]
}

/// IPv4 with any IHL (options are skipped, not refused).
#[inline(always)]
fn ipv4(ctx: &XdpContext, offset: usize) -> Result<(FlowKey, Kind), Reason> {
    let ip: Ipv4Hdr = read_at(ctx, offset).ok_or(Reason::Malformed)?;
    if ip.ver_ihl >> 4 != 4 {
        return Err(Reason::Malformed);
    }
    let ihl = (ip.ver_ihl & 0x0f) as usize;
    if ihl < 5 {
        return Err(Reason::Malformed);
    }
    let l4 = offset + ihl * 4;
    if ip.proto == IPPROTO_ICMP {
        return icmp4_too_big(ctx, l4, &ip);
    }
    if ip.proto != IPPROTO_TCP && ip.proto != IPPROTO_UDP {
        return Err(Reason::NotTcpUdp);
    }
    let mut key = FlowKey {
        src: v4_words(ip.saddr),
        dst: v4_words(ip.daddr),
        ports: 0,
        proto: ip.proto as u32,
    };
    if ip.is_fragment() {
        let first = ip.is_first_fragment();
        if first {
            key.ports = ports(ctx, l4, ip.proto)?;
        }
        return Ok((key, Kind::Fragment { first }));
    }
    key.ports = ports(ctx, l4, ip.proto)?;
    Ok((key, Kind::Plain))
}

/// ICMP "fragmentation needed" quoting a packet a backend sent from a VIP: the flow it
/// belongs to, seen from the client (source = the quoted destination, and so on).
#[inline(always)]
fn icmp4_too_big(ctx: &XdpContext, l4: usize, outer: &Ipv4Hdr) -> Result<(FlowKey, Kind), Reason> {
    let icmp: IcmpHdr = read_at(ctx, l4).ok_or(Reason::Malformed)?;
    if icmp.kind != ICMP_DEST_UNREACH || icmp.code != ICMP_FRAG_NEEDED {
        return Err(Reason::NotTcpUdp);
    }
    let inner_off = l4 + IcmpHdr::LEN;
    let inner: Ipv4Hdr = read_at(ctx, inner_off).ok_or(Reason::Malformed)?;
    let ihl = (inner.ver_ihl & 0x0f) as usize;
    if inner.ver_ihl >> 4 != 4 || ihl < 5 {
        return Err(Reason::Malformed);
    }
    // Only an error sent to the quoted packet's source (the VIP) is about one of our flows.
    if inner.saddr != outer.daddr
        || (inner.proto != IPPROTO_TCP && inner.proto != IPPROTO_UDP)
        || inner.is_fragment() && !inner.is_first_fragment()
    {
        return Err(Reason::NotTcpUdp);
    }
    // RFC 792: the error quotes the IP header and at least 8 bytes of its payload.
    let quoted: Ports = read_at(ctx, inner_off + ihl * 4).ok_or(Reason::Malformed)?;
    let key = FlowKey {
        src: v4_words(inner.daddr),
        dst: v4_words(inner.saddr),
        ports: quoted.dst as u32 | (quoted.src as u32) << 16,
        proto: inner.proto as u32,
    };
    Ok((key, Kind::TooBig))
}

/// IPv6: TCP/UDP right after the fixed header, or after a fragment header; ICMPv6 "packet
/// too big". Other extension headers are passed: walking them costs a bounded loop on every
/// packet and real VIP traffic rarely carries them.
#[inline(always)]
fn ipv6(ctx: &XdpContext, offset: usize) -> Result<(FlowKey, Kind), Reason> {
    let ip: Ipv6Hdr = read_at(ctx, offset).ok_or(Reason::Malformed)?;
    if ip.version() != 6 {
        return Err(Reason::Malformed);
    }
    let l4 = offset + Ipv6Hdr::LEN;
    let mut key = FlowKey {
        src: ip.saddr,
        dst: ip.daddr,
        ports: 0,
        proto: ip.nexthdr as u32,
    };
    match ip.nexthdr {
        IPPROTO_TCP | IPPROTO_UDP => {
            key.ports = ports(ctx, l4, ip.nexthdr)?;
            Ok((key, Kind::Plain))
        }
        IPPROTO_FRAGMENT => {
            let frag: Ipv6FragHdr = read_at(ctx, l4).ok_or(Reason::Malformed)?;
            if frag.nexthdr != IPPROTO_TCP && frag.nexthdr != IPPROTO_UDP {
                return Err(Reason::Ipv6ExtHeader);
            }
            key.proto = frag.nexthdr as u32;
            let first = frag.offset() == 0;
            if first {
                key.ports = ports(ctx, l4 + Ipv6FragHdr::LEN, frag.nexthdr)?;
            }
            Ok((key, Kind::Fragment { first }))
        }
        IPPROTO_ICMPV6 => icmp6_too_big(ctx, l4, &ip),
        // hop-by-hop, routing, destination options, AH, mobility, HIP, shim6, experimental
        // (RFC 8200 section 4, RFC 7045).
        0 | 43 | 60 | 51 | 135 | 139 | 140 | 253 | 254 => Err(Reason::Ipv6ExtHeader),
        _ => Err(Reason::NotTcpUdp),
    }
}

#[inline(always)]
fn icmp6_too_big(ctx: &XdpContext, l4: usize, outer: &Ipv6Hdr) -> Result<(FlowKey, Kind), Reason> {
    let icmp: IcmpHdr = read_at(ctx, l4).ok_or(Reason::Malformed)?;
    if icmp.kind != ICMPV6_PKT_TOOBIG {
        return Err(Reason::NotTcpUdp);
    }
    let inner_off = l4 + IcmpHdr::LEN;
    let inner: Ipv6Hdr = read_at(ctx, inner_off).ok_or(Reason::Malformed)?;
    if inner.version() != 6
        || inner.saddr != outer.daddr
        || (inner.nexthdr != IPPROTO_TCP && inner.nexthdr != IPPROTO_UDP)
    {
        return Err(Reason::NotTcpUdp);
    }
    let quoted: Ports = read_at(ctx, inner_off + Ipv6Hdr::LEN).ok_or(Reason::Malformed)?;
    let key = FlowKey {
        src: inner.daddr,
        dst: inner.saddr,
        ports: quoted.dst as u32 | (quoted.src as u32) << 16,
        proto: inner.nexthdr as u32,
    };
    Ok((key, Kind::TooBig))
}
