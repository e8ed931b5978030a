//! Wire headers and the one bounds-checked way to touch packet memory.

use aya_ebpf::programs::XdpContext;

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_ICMPV6: u8 = 58;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ethertype: [u8; 2],
}

impl EthHdr {
    pub const LEN: usize = 14;
}

/// An 802.1Q / 802.1ad tag: the TCI and the ethertype that follows it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct VlanHdr {
    pub tci: [u8; 2],
    pub ethertype: [u8; 2],
}

/// Fields are in network byte order, loaded natively.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Hdr {
    pub ver_ihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check: u16,
    pub saddr: u32,
    pub daddr: u32,
}

impl Ipv4Hdr {
    /// More-fragments flag or a fragment offset.
    #[inline(always)]
    pub fn is_fragment(&self) -> bool {
        u16::from_be(self.frag_off) & 0x3fff != 0
    }

    /// Only the first fragment (offset 0) carries the L4 header.
    #[inline(always)]
    pub fn is_first_fragment(&self) -> bool {
        u16::from_be(self.frag_off) & 0x1fff == 0
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv6Hdr {
    pub vtc_flow: [u8; 4],
    pub payload_len: u16,
    pub nexthdr: u8,
    pub hop_limit: u8,
    pub saddr: [u32; 4],
    pub daddr: [u32; 4],
}

impl Ipv6Hdr {
    pub const LEN: usize = 40;

    #[inline(always)]
    pub fn version(&self) -> u8 {
        self.vtc_flow[0] >> 4
    }
}

/// IPv6 fragment extension header (RFC 8200 section 4.5).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv6FragHdr {
    pub nexthdr: u8,
    pub reserved: u8,
    /// Offset (13 bits) << 3 | M flag, network order.
    pub frag_off: [u8; 2],
    pub id: u32,
}

impl Ipv6FragHdr {
    pub const LEN: usize = 8;

    #[inline(always)]
    pub fn offset(&self) -> u16 {
        u16::from_be_bytes(self.frag_off) >> 3
    }
}

/// The first 8 bytes of an ICMP or ICMPv6 message.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct IcmpHdr {
    pub kind: u8,
    pub code: u8,
    pub check: u16,
    pub rest: u32,
}

impl IcmpHdr {
    pub const LEN: usize = 8;
}

/// The first four bytes of TCP and UDP headers alike.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ports {
    pub src: u16,
    pub dst: u16,
}

/// Pointer to a `T` at `offset` in the frame, if the whole `T` lies inside it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

/// A copy of the `T` at `offset`, if it lies inside the frame.
#[inline(always)]
pub fn read_at<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    // SAFETY: ptr_at checked that the whole T lies inside the frame; packet memory may be
    // unaligned, which BPF loads on this architecture allow.
    ptr_at::<T>(ctx, offset).map(|p| unsafe { *p })
}

#[inline(always)]
pub fn ptr_at_mut<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    ptr_at::<T>(ctx, offset).map(|p| p as *mut T)
}
