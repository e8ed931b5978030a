//! Building Ethernet frames byte by byte, so that tests can also build the odd ones (IP
//! options, truncated headers, wrong versions) that a packet library refuses to make.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;

pub fn ethernet(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// IPv4 header with `options` (padded to 4 bytes; IHL follows) and a correct checksum.
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, options: &[u8], payload: &[u8]) -> Vec<u8> {
    ipv4_frag(src, dst, proto, options, 0, payload)
}

/// Like [`ipv4`], with the flags/fragment-offset field set to `frag` (host order).
pub fn ipv4_frag(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    options: &[u8],
    frag: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut opts = options.to_vec();
    while !opts.len().is_multiple_of(4) {
        opts.push(0);
    }
    let ihl = 5 + opts.len() / 4;
    assert!(ihl <= 15, "too many IPv4 options");
    let total = ihl * 4 + payload.len();
    let mut h = vec![
        0x40 | ihl as u8,
        0,
        (total >> 8) as u8,
        total as u8,
        0x12,
        0x34,
        (frag >> 8) as u8,
        frag as u8,
        64,
        proto,
        0,
        0,
    ];
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(&opts);
    let sum = checksum(&h);
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, nexthdr: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.push(nexthdr);
    h.push(64);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(payload);
    h
}

/// A TCP SYN segment (20-byte header, no options; checksum left zero: XDP does not check it).
pub fn tcp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::with_capacity(20 + payload.len());
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&1u32.to_be_bytes()); // seq
    h.extend_from_slice(&0u32.to_be_bytes()); // ack
    h.extend_from_slice(&[0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]); // doff 5, SYN, window
    h.extend_from_slice(payload);
    h
}

pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::with_capacity(8 + payload.len());
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(payload);
    h
}

/// L4 segment for `proto` (TCP or UDP) with a small payload.
pub fn l4(proto: u8, sport: u16, dport: u16) -> Vec<u8> {
    match proto {
        TCP => tcp(sport, dport, b"hello"),
        UDP => udp(sport, dport, b"hello"),
        _ => panic!("l4: protocol {proto}"),
    }
}

/// A whole frame from `src:sport` to `dst:dport` over `proto`, v4 or v6 by address.
pub fn flow_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
    proto: u8,
) -> Vec<u8> {
    let seg = l4(proto, sport, dport);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            ethernet(dst_mac, src_mac, ETH_P_IPV4, &ipv4(s, d, proto, &[], &seg))
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            ethernet(dst_mac, src_mac, ETH_P_IPV6, &ipv6(s, d, proto, &seg))
        }
        _ => panic!("flow_frame: mixed address families"),
    }
}

/// An ARP request "who has `target`? tell `sender`".
pub fn arp_request(src_mac: [u8; 6], sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut p = vec![0, 1, 8, 0, 6, 4, 0, 1];
    p.extend_from_slice(&src_mac);
    p.extend_from_slice(&sender.octets());
    p.extend_from_slice(&[0; 6]);
    p.extend_from_slice(&target.octets());
    ethernet([0xff; 6], src_mac, ETH_P_ARP, &p)
}

/// The Internet checksum (RFC 1071).
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += word as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Inserts an 802.1Q (or, with `tpid` 0x88a8, 802.1ad) tag after the MAC addresses.
pub fn tagged(frame: &[u8], tpid: u16, vlan: u16) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    f.extend_from_slice(&tpid.to_be_bytes());
    f.extend_from_slice(&vlan.to_be_bytes());
    f.extend_from_slice(&frame[12..]);
    f
}

/// An IPv6 fragment header (next header `nexthdr`, offset in 8-byte units, more-fragments
/// flag) followed by `payload`.
pub fn ipv6_fragment(nexthdr: u8, offset: u16, more: bool, id: u32, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![nexthdr, 0];
    h.extend_from_slice(&(offset << 3 | more as u16).to_be_bytes());
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

/// ICMP "fragmentation needed" (type 3 code 4) quoting `quoted` (an IPv4 packet, of which
/// the header and 8 bytes are kept), with next-hop MTU `mtu`.
pub fn icmp4_frag_needed(mtu: u16, quoted: &[u8]) -> Vec<u8> {
    let ihl = (quoted[0] & 0x0f) as usize * 4;
    let mut m = vec![3, 4, 0, 0, 0, 0];
    m.extend_from_slice(&mtu.to_be_bytes());
    m.extend_from_slice(&quoted[..(ihl + 8).min(quoted.len())]);
    let sum = checksum(&m);
    m[2..4].copy_from_slice(&sum.to_be_bytes());
    m
}

/// ICMPv6 "packet too big" (type 2) quoting `quoted` (an IPv6 packet), with MTU `mtu`.
pub fn icmp6_packet_too_big(mtu: u32, quoted: &[u8]) -> Vec<u8> {
    let mut m = vec![2, 0, 0, 0];
    m.extend_from_slice(&mtu.to_be_bytes());
    m.extend_from_slice(&quoted[..quoted.len().min(1232)]);
    m
}
