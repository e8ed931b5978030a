//! From a frame to the facts the decision needs: the flow, its VLAN, and what kind of packet
//! it is (plain TCP/UDP, a fragment, an ICMP "packet too big" about a flow).

//!
//! One source for both sides: the XDP program parses its context through
//! [`Frame`](crate::headers::Frame) (bounds checked against `data_end`), the host parses a
//! `&[u8]` (tests, the differential fuzz target) with the very same code.

use crate::{
    FlowKey, Reason,
    headers::{
        ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV4, ETH_P_IPV6, EthHdr, Frame, IPPROTO_FRAGMENT,
        IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, IcmpHdr, Ipv4Hdr, Ipv6FragHdr,
        Ipv6Hdr, Ports, VlanHdr,
    },
};

const TCP_MIN_HDR: usize = 20;
const UDP_HDR: usize = 8;
/// `::ffff:0:0/96` third word, as read from the packet: v4 flows are keyed as IPv4-mapped IPv6.
const V4_MAPPED: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
const ICMPV6_PKT_TOOBIG: u8 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A whole TCP/UDP packet.
    Plain,
    /// A fragment; `key.ports` is 0 unless it is the first one.
    Fragment { first: bool },
    /// An ICMP error about a flow to a VIP; `key` is that flow, seen from the client.
    TooBig,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    pub key: FlowKey,
    /// Outer VLAN id (0 = untagged).
    pub vlan: u16,
    pub kind: Kind,
    /// TCP flags (`TCP_*`) of a TCP packet with its header; 0 otherwise.
    pub tcp_flags: u8,
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;

/// Parses Ethernet (with up to two VLAN tags) and IPv4/IPv6. Errors are the reason to pass.
#[inline(always)]
pub fn parse<F: Frame>(ctx: &F) -> Result<Packet, Reason> {
    let eth: EthHdr = ctx.read(0).ok_or(Reason::Malformed)?;
    let mut ethertype = u16::from_be_bytes(eth.ethertype);
    let mut offset = EthHdr::LEN;
    let mut vlan = 0u16;
    // 802.1Q, or QinQ (802.1ad outer + 802.1Q inner). The tags stay on the frame: only
    // MAC addresses are rewritten.
    for depth in 0..2 {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let tag: VlanHdr = ctx.read(offset).ok_or(Reason::Malformed)?;
        if depth == 0 {
            vlan = u16::from_be_bytes(tag.tci) & 0x0fff;
        }
        ethertype = u16::from_be_bytes(tag.ethertype);
        offset += 4;
    }
    let (key, kind, l4) = match ethertype {
        ETH_P_IPV4 => ipv4(ctx, offset)?,
        ETH_P_IPV6 => ipv6(ctx, offset)?,
        ETH_P_8021Q | ETH_P_8021AD => return Err(Reason::TooManyVlanTags),
        _ => return Err(Reason::NotIp),
    };
    // `ports` checked that a TCP header's first 20 bytes are there whenever l4 is set.
    let tcp_flags = match l4 {
        Some(off) if key.proto == IPPROTO_TCP as u32 => ctx
            .read::<u8>(off + TCP_FLAGS_OFFSET)
            .ok_or(Reason::Malformed)?,
        _ => 0,
    };
    Ok(Packet {
        key,
        vlan,
        kind,
        tcp_flags,
    })
}

/// Offset of the flags byte in a TCP header.
const TCP_FLAGS_OFFSET: usize = 13;

/// Reads the ports of a TCP/UDP header at `offset`, checking that the minimum header is there,
/// inside both the frame and the IP packet (which ends at `end`), and for TCP that its data
/// offset is sane (at least the 5 words of the fixed header, within the packet).
#[inline(always)]
fn ports<F: Frame>(ctx: &F, offset: usize, proto: u8, end: usize) -> Result<u32, Reason> {
    let min = if proto == IPPROTO_TCP {
        TCP_MIN_HDR
    } else {
        UDP_HDR
    };
    // The frame checks come first, on their own: the compiler must not drop one as implied
    // by the packet-length checks (it would be right, but the verifier only trusts a
    // comparison against the frame's end).
    if !ctx.has(offset, min) {
        return Err(Reason::Malformed);
    }
    let p: Ports = ctx.read(offset).ok_or(Reason::Malformed)?;
    // (Only TCP has a data offset: a short UDP datagram may end right after its header.)
    let doff = if proto == IPPROTO_TCP {
        // Through a volatile copy of the offset, so that this read keeps a bounds check of its
        // own: derived from the check above, the compiler would drop it, and the verifier
        // does not follow that proof to a second pointer.
        // SAFETY: a plain read of a local.
        let at = unsafe { core::ptr::read_volatile(&offset) } + TCP_DOFF_OFFSET;
        ctx.read::<u8>(at).ok_or(Reason::Malformed)? >> 4
    } else {
        5
    };
    // Read through a volatile copy, so that the compiler knows nothing that relates `end` to
    // the frame's length.
    // SAFETY: a plain read of a local.
    let end = unsafe { core::ptr::read_volatile(&end) };
    if offset + min > end || proto == IPPROTO_TCP && (doff < 5 || offset + doff as usize * 4 > end)
    {
        return Err(Reason::Malformed);
    }
    Ok(p.src as u32 | (p.dst as u32) << 16)
}

/// Offset of the data-offset byte (high nibble, in 32-bit words) in a TCP header.
const TCP_DOFF_OFFSET: usize = 12;

/// What an IP parser found: the flow, its kind, and where its TCP/UDP header starts (if the
/// packet carries one).
type Parsed = (FlowKey, Kind, Option<usize>);

fn v4_words(addr: u32) -> [u32; 4] {
    [0, 0, V4_MAPPED, addr]
}

/// IPv4 with any IHL (options are skipped, not refused).
#[inline(always)]
fn ipv4<F: Frame>(ctx: &F, offset: usize) -> Result<Parsed, Reason> {
    let ip: Ipv4Hdr = ctx.read(offset).ok_or(Reason::Malformed)?;
    if ip.ver_ihl >> 4 != 4 {
        return Err(Reason::Malformed);
    }
    let ihl = (ip.ver_ihl & 0x0f) as usize;
    if ihl < 5 {
        return Err(Reason::Malformed);
    }
    // The packet must hold its own header and lie inside the frame (which may be longer:
    // Ethernet pads short frames).
    let tot_len = u16::from_be(ip.tot_len) as usize;
    if tot_len < ihl * 4 || !ctx.has(offset, tot_len) {
        return Err(Reason::Malformed);
    }
    let end = offset + tot_len;
    let l4 = offset + ihl * 4;
    if ip.proto == IPPROTO_ICMP {
        // Only an unfragmented datagram starts with an ICMP header: a non-first fragment's
        // payload is any bytes at all, and an ICMP error is never fragmented.
        if ip.is_fragment() {
            return Err(Reason::NotTcpUdp);
        }
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
            key.ports = ports(ctx, l4, ip.proto, end)?;
            return Ok((key, Kind::Fragment { first }, Some(l4)));
        }
        return Ok((key, Kind::Fragment { first }, None));
    }
    key.ports = ports(ctx, l4, ip.proto, end)?;
    Ok((key, Kind::Plain, Some(l4)))
}

/// ICMP "fragmentation needed" quoting a packet a backend sent from a VIP: the flow it
/// belongs to, seen from the client (source = the quoted destination, and so on).
#[inline(always)]
fn icmp4_too_big<F: Frame>(ctx: &F, l4: usize, outer: &Ipv4Hdr) -> Result<Parsed, Reason> {
    let icmp: IcmpHdr = ctx.read(l4).ok_or(Reason::Malformed)?;
    if icmp.kind != ICMP_DEST_UNREACH || icmp.code != ICMP_FRAG_NEEDED {
        return Err(Reason::NotTcpUdp);
    }
    let inner_off = l4 + IcmpHdr::LEN;
    let inner: Ipv4Hdr = ctx.read(inner_off).ok_or(Reason::Malformed)?;
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
    let quoted: Ports = ctx.read(inner_off + ihl * 4).ok_or(Reason::Malformed)?;
    let key = FlowKey {
        src: v4_words(inner.daddr),
        dst: v4_words(inner.saddr),
        ports: quoted.dst as u32 | (quoted.src as u32) << 16,
        proto: inner.proto as u32,
    };
    Ok((key, Kind::TooBig, None))
}

/// IPv6: TCP/UDP right after the fixed header, or after a fragment header; ICMPv6 "packet
/// too big". Other extension headers are passed: walking them costs a bounded loop on every
/// packet and real VIP traffic rarely carries them.
#[inline(always)]
fn ipv6<F: Frame>(ctx: &F, offset: usize) -> Result<Parsed, Reason> {
    let ip: Ipv6Hdr = ctx.read(offset).ok_or(Reason::Malformed)?;
    if ip.version() != 6 {
        return Err(Reason::Malformed);
    }
    // IPv4 VIPs are keyed as IPv4-mapped IPv6 addresses: an IPv6 packet to `::ffff:a.b.c.d`
    // must not match one (nor share its flows). Such packets are never valid on the wire
    // (RFC 4291 section 2.5.5.2).
    if ip.daddr[0] == 0 && ip.daddr[1] == 0 && ip.daddr[2] == V4_MAPPED {
        return Err(Reason::NotVip);
    }
    let l4 = offset + Ipv6Hdr::LEN;
    // The payload must lie inside the frame. A payload length of 0 means a jumbogram, which
    // needs a hop-by-hop header: invalid with anything dsr forwards.
    let payload_len = u16::from_be(ip.payload_len) as usize;
    if payload_len == 0 && ip.nexthdr != 0 || !ctx.has(l4, payload_len) {
        return Err(Reason::Malformed);
    }
    let end = l4 + payload_len;
    let mut key = FlowKey {
        src: ip.saddr,
        dst: ip.daddr,
        ports: 0,
        proto: ip.nexthdr as u32,
    };
    match ip.nexthdr {
        IPPROTO_TCP | IPPROTO_UDP => {
            key.ports = ports(ctx, l4, ip.nexthdr, end)?;
            Ok((key, Kind::Plain, Some(l4)))
        }
        IPPROTO_FRAGMENT => {
            let frag: Ipv6FragHdr = ctx.read(l4).ok_or(Reason::Malformed)?;
            if frag.nexthdr != IPPROTO_TCP && frag.nexthdr != IPPROTO_UDP {
                // A fragment of something else: an extension header chain, or another
                // protocol (ICMPv6 included), which is what the reason then says.
                return Err(match frag.nexthdr {
                    0 | 43 | 44 | 60 | 51 | 135 | 139 | 140 | 253 | 254 => Reason::Ipv6ExtHeader,
                    _ => Reason::NotTcpUdp,
                });
            }
            key.proto = frag.nexthdr as u32;
            let first = frag.offset() == 0;
            if first {
                let l4 = l4 + Ipv6FragHdr::LEN;
                key.ports = ports(ctx, l4, frag.nexthdr, end)?;
                return Ok((key, Kind::Fragment { first }, Some(l4)));
            }
            Ok((key, Kind::Fragment { first }, None))
        }
        IPPROTO_ICMPV6 => icmp6_too_big(ctx, l4, &ip),
        // hop-by-hop, routing, destination options, AH, mobility, HIP, shim6, experimental
        // (RFC 8200 section 4, RFC 7045).
        0 | 43 | 60 | 51 | 135 | 139 | 140 | 253 | 254 => Err(Reason::Ipv6ExtHeader),
        _ => Err(Reason::NotTcpUdp),
    }
}

#[inline(always)]
fn icmp6_too_big<F: Frame>(ctx: &F, l4: usize, outer: &Ipv6Hdr) -> Result<Parsed, Reason> {
    let icmp: IcmpHdr = ctx.read(l4).ok_or(Reason::Malformed)?;
    if icmp.kind != ICMPV6_PKT_TOOBIG {
        return Err(Reason::NotTcpUdp);
    }
    let inner_off = l4 + IcmpHdr::LEN;
    let inner: Ipv6Hdr = ctx.read(inner_off).ok_or(Reason::Malformed)?;
    if inner.version() != 6
        || inner.saddr != outer.daddr
        || (inner.nexthdr != IPPROTO_TCP && inner.nexthdr != IPPROTO_UDP)
    {
        return Err(Reason::NotTcpUdp);
    }
    let quoted: Ports = ctx
        .read(inner_off + Ipv6Hdr::LEN)
        .ok_or(Reason::Malformed)?;
    let key = FlowKey {
        src: inner.daddr,
        dst: inner.saddr,
        ports: quoted.dst as u32 | (quoted.src as u32) << 16,
        proto: inner.nexthdr as u32,
    };
    Ok((key, Kind::TooBig, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ethernet + IPv4 (IHL 5) + a TCP SYN from 10.0.0.1:4660 to 10.0.0.2:80.
    fn syn() -> [u8; 54] {
        let mut f = [0u8; 54];
        f[12..14].copy_from_slice(&ETH_P_IPV4.to_be_bytes());
        f[14] = 0x45;
        f[16..18].copy_from_slice(&40u16.to_be_bytes()); // total length: 20 + 20
        f[23] = IPPROTO_TCP;
        f[26..30].copy_from_slice(&[10, 0, 0, 1]);
        f[30..34].copy_from_slice(&[10, 0, 0, 2]);
        f[34..36].copy_from_slice(&4660u16.to_be_bytes());
        f[36..38].copy_from_slice(&80u16.to_be_bytes());
        f[46] = 0x50; // data offset: 5 words
        f[47] = TCP_SYN;
        f
    }

    #[test]
    fn lengths_that_lie_are_malformed() {
        let ok = syn();
        assert!(parse(&&ok[..]).is_ok());
        // An IPv4 total length shorter than the headers, or longer than the frame.
        for tot_len in [4u16, 20, 39, 41, 1500] {
            let mut f = ok;
            f[16..18].copy_from_slice(&tot_len.to_be_bytes());
            assert_eq!(
                parse(&&f[..]),
                Err(Reason::Malformed),
                "total length {tot_len}"
            );
        }
        // A TCP data offset below the fixed header, or past the packet.
        for doff in [0u8, 4, 6] {
            let mut f = ok;
            f[46] = doff << 4;
            assert_eq!(parse(&&f[..]), Err(Reason::Malformed), "data offset {doff}");
        }
        // Ethernet padding after the packet is fine.
        let mut padded = [0u8; 60];
        padded[..54].copy_from_slice(&ok);
        assert!(parse(&&padded[..]).is_ok());
    }

    #[test]
    fn a_slice_parses_like_the_wire() {
        let f = syn();
        let p = parse(&&f[..]).unwrap();
        assert_eq!(p.kind, Kind::Plain);
        assert_eq!(p.tcp_flags, TCP_SYN);
        assert_eq!(p.key.proto, IPPROTO_TCP as u32);
        assert_eq!(
            p.key.ports,
            4660u16.to_be() as u32 | (80u16.to_be() as u32) << 16
        );
        assert_eq!(p.key.dst, v4_words(u32::from_ne_bytes([10, 0, 0, 2])));
    }

    #[test]
    fn every_truncation_is_malformed() {
        let f = syn();
        for len in 0..f.len() {
            assert_eq!(parse(&&f[..len]), Err(Reason::Malformed), "{len} bytes");
        }
    }
}
