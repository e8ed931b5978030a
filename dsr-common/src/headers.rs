//! Wire headers, and [`Frame`]: the one bounds-checked way the parser touches packet memory.
//! The XDP program implements it over its context (checked against `data_end`, which the
//! verifier needs to see); `&[u8]` implements it here, so the host runs the same parser.

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

/// Packet memory the parser can read. Every read is bounds-checked; implementations must be
/// `#[inline(always)]` (the XDP one must stay a comparison against `data_end` that the
/// verifier sees right before the load).
pub trait Frame {
    /// The frame's length in bytes.
    fn len(&self) -> usize;

    /// Whether the frame is empty.
    #[inline(always)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `len` bytes from `offset` lie inside the frame.
    #[inline(always)]
    fn has(&self, offset: usize, len: usize) -> bool {
        offset + len <= self.len()
    }

    /// A copy of the `T` at `offset`, if the whole `T` lies inside the frame. `T` is plain
    /// data (any bit pattern is a valid value): the header structs here, integers, arrays.
    fn read<T: Copy>(&self, offset: usize) -> Option<T>;
}

impl Frame for &[u8] {
    #[inline(always)]
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }

    #[inline(always)]
    fn read<T: Copy>(&self, offset: usize) -> Option<T> {
        let end = offset.checked_add(core::mem::size_of::<T>())?;
        let bytes = self.get(offset..end)?;
        // SAFETY: `bytes` holds size_of::<T>() bytes; the read is unaligned; T is plain data.
        Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr() as *const T) })
    }
}
