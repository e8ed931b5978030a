//! The flow hash: Bob Jenkins' lookup3 `hashword`, the same function as the Linux kernel's
//! `jhash2` (include/linux/jhash.h), over a fixed 10-word flow key.
//!
//! Why jhash: it is cheap on BPF (adds, xors and rotates on 32-bit words, no multiplies, no
//! tables), well distributed, and a known reference exists (the kernel's), so anyone can check
//! a node's choice by hand. The seed is fixed per deployment and the same on every load
//! balancer: two nodes then pick the same backend for a flow, and a failover between them keeps
//! connections.

/// Default seed. Any value works as long as every node of a deployment uses the same one.
pub const DEFAULT_HASH_SEED: u32 = 0x6473_7231; // "dsr1"

const JHASH_INITVAL: u32 = 0xdead_beef;

/// The fields of a packet that select its backend. Addresses are IPv6 or IPv4-mapped IPv6
/// (`::ffff:a.b.c.d`), as 32-bit words in packet (network) byte order, read with native loads.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    /// Source port in the low 16 bits, destination port in the high 16 bits, both as read from
    /// the packet (network byte order, native load).
    pub ports: u32,
    pub proto: u32,
}

/// An address as the data path sees it: IPv6 as is, IPv4 as IPv4-mapped IPv6, four words
/// holding the bytes in network order.
pub fn addr_words(addr: core::net::IpAddr) -> [u32; 4] {
    let octets = match addr {
        core::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        core::net::IpAddr::V6(v6) => v6.octets(),
    };
    let w = |i: usize| u32::from_ne_bytes([octets[i], octets[i + 1], octets[i + 2], octets[i + 3]]);
    [w(0), w(4), w(8), w(12)]
}

/// The address [`addr_words`] made these words from.
pub fn words_addr(words: &[u32; 4]) -> core::net::IpAddr {
    let mut bytes = [0u8; 16];
    for (i, w) in words.iter().enumerate() {
        bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    let v6 = core::net::Ipv6Addr::from(bytes);
    match v6.to_ipv4_mapped() {
        Some(v4) => v4.into(),
        None => v6.into(),
    }
}

impl FlowKey {
    /// The key the data path builds for a packet from `src:sport` to `dst:dport`.
    pub fn new(
        src: core::net::IpAddr,
        sport: u16,
        dst: core::net::IpAddr,
        dport: u16,
        proto: u8,
    ) -> Self {
        FlowKey {
            src: addr_words(src),
            dst: addr_words(dst),
            ports: sport.to_be() as u32 | (dport.to_be() as u32) << 16,
            proto: proto as u32,
        }
    }

    /// The key with the fields a VIP does not hash on zeroed (`fields`: `HASH_*` bits).
    /// Connection tracking uses the masked key too, so a VIP hashing on the source address
    /// keeps one entry per client.
    #[inline(always)]
    pub fn masked(&self, fields: u32) -> FlowKey {
        let keep = |bit: u32| if fields & bit != 0 { u32::MAX } else { 0 };
        let (src, dst) = (keep(crate::HASH_SRC_ADDR), keep(crate::HASH_DST_ADDR));
        FlowKey {
            src: [
                self.src[0] & src,
                self.src[1] & src,
                self.src[2] & src,
                self.src[3] & src,
            ],
            dst: [
                self.dst[0] & dst,
                self.dst[1] & dst,
                self.dst[2] & dst,
                self.dst[3] & dst,
            ],
            // Source port in the low half, destination port in the high half.
            ports: self.ports
                & (keep(crate::HASH_SRC_PORT) & 0x0000_ffff
                    | keep(crate::HASH_DST_PORT) & 0xffff_0000),
            proto: self.proto & keep(crate::HASH_PROTO),
        }
    }

    #[inline(always)]
    pub fn words(&self) -> [u32; 10] {
        [
            self.src[0],
            self.src[1],
            self.src[2],
            self.src[3],
            self.dst[0],
            self.dst[1],
            self.dst[2],
            self.dst[3],
            self.ports,
            self.proto,
        ]
    }
}

/// Hash of a flow, with `seed` as jhash's `initval`.
#[inline(always)]
pub fn flow_hash(key: &FlowKey, seed: u32) -> u32 {
    jhash2(&key.words(), seed)
}

#[inline(always)]
fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(4);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(6);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(8);
    *b = b.wrapping_add(*a);
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(16);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(19);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(4);
    *b = b.wrapping_add(*a);
}

#[inline(always)]
fn final_mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(14));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(11));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(25));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(16));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(4));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(14));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(24));
}

/// The kernel's `jhash2(k, N, initval)`. `N` is a constant, so the BPF build unrolls it.
#[inline(always)]
pub fn jhash2<const N: usize>(k: &[u32; N], initval: u32) -> u32 {
    let init = JHASH_INITVAL
        .wrapping_add((N as u32) << 2)
        .wrapping_add(initval);
    let (mut a, mut b, mut c) = (init, init, init);
    let mut i = 0;
    while N - i > 3 {
        a = a.wrapping_add(k[i]);
        b = b.wrapping_add(k[i + 1]);
        c = c.wrapping_add(k[i + 2]);
        mix(&mut a, &mut b, &mut c);
        i += 3;
    }
    match N - i {
        3 => {
            c = c.wrapping_add(k[i + 2]);
            b = b.wrapping_add(k[i + 1]);
            a = a.wrapping_add(k[i]);
        }
        2 => {
            b = b.wrapping_add(k[i + 1]);
            a = a.wrapping_add(k[i]);
        }
        1 => a = a.wrapping_add(k[i]),
        _ => return c,
    }
    final_mix(&mut a, &mut b, &mut c);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    // Reference values from the Linux kernel's jhash2() (include/linux/jhash.h), computed with
    // a C copy of it: jhash2({1,2,3}, 3, 0), jhash2({1,2,3,4}, 4, 0x12345678) and
    // jhash2({0..9}, 10, DEFAULT_HASH_SEED).
    #[test]
    fn matches_kernel_jhash2() {
        assert_eq!(jhash2(&[1, 2, 3], 0), 0xa461_58f5);
        assert_eq!(jhash2(&[1, 2, 3, 4], 0x1234_5678), 0x2d00_1f70);
        assert_eq!(
            jhash2(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], DEFAULT_HASH_SEED),
            0xeee5_f90a
        );
    }

    #[test]
    fn keys_are_built_from_packet_order_words() {
        let k = FlowKey::new(
            "198.18.0.1".parse().unwrap(),
            8080,
            "198.18.0.100".parse().unwrap(),
            80,
            6,
        );
        assert_eq!(
            k.src,
            [
                0,
                0,
                u32::from_ne_bytes([0, 0, 0xff, 0xff]),
                u32::from_ne_bytes([198, 18, 0, 1])
            ]
        );
        assert_eq!(k.ports.to_ne_bytes(), [0x1f, 0x90, 0, 80]);
        let v6 = addr_words("2001:db8::1".parse().unwrap());
        assert_eq!(v6[0].to_ne_bytes(), [0x20, 0x01, 0x0d, 0xb8]);
        assert_eq!(v6[3].to_ne_bytes(), [0, 0, 0, 1]);
    }

    #[test]
    fn masking_keeps_only_the_chosen_fields() {
        let k = FlowKey::new(
            "10.0.0.1".parse().unwrap(),
            1111,
            "10.0.0.100".parse().unwrap(),
            80,
            6,
        );
        assert_eq!(k.masked(crate::HASH_ALL), k);
        let src_only = k.masked(crate::HASH_SRC_ADDR);
        assert_eq!(src_only.src, k.src);
        assert_eq!(
            (src_only.dst, src_only.ports, src_only.proto),
            ([0; 4], 0, 0)
        );
        let no_ports = k.masked(crate::HASH_ALL & !crate::HASH_PORTS);
        assert_eq!(no_ports.ports, 0);
        let dport = k.masked(crate::HASH_DST_PORT);
        assert_eq!(dport.ports, (80u16.to_be() as u32) << 16);
    }

    #[test]
    fn seed_and_every_field_change_the_hash() {
        let base = FlowKey::new(
            "10.0.0.1".parse().unwrap(),
            8080,
            "10.0.0.100".parse().unwrap(),
            80,
            6,
        );
        let h = flow_hash(&base, DEFAULT_HASH_SEED);
        assert_ne!(h, flow_hash(&base, DEFAULT_HASH_SEED ^ 1));
        for w in 0..10 {
            let mut words = base.words();
            words[w] ^= 1;
            assert_ne!(h, jhash2(&words, DEFAULT_HASH_SEED), "word {w} ignored");
        }
    }
}
