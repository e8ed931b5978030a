//! A seeded generator of hostile frames: random and mutated Ethernet frames aimed at a set of
//! VIPs. Shapes: truncation at random offsets and, now and then, at every offset of one
//! frame; wrong lengths, versions and IHL; IPv4 options; every fragment shape (first, middle,
//! last, DF, garbage flags), ICMP in non-first fragments; IPv6 extension-header chains and
//! fragment headers; 0-3 VLAN tags (802.1Q and 802.1ad); ICMP / ICMPv6 errors with short,
//! forged or malformed quotes; every TCP flag byte; ports 0 and 65535; IPv4-mapped IPv6
//! destinations; frames for other MACs, broadcast and multicast; random byte flips.
//!
//! No crate: a xorshift64* generator, so that a seed names the same frames everywhere.

/// xorshift64* (Vigna): small, fast, and good enough to pick shapes.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        // A zero state would stay zero.
        Rng((seed ^ 0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    pub fn u8(&mut self) -> u8 {
        self.next_u64() as u8
    }

    pub fn u16(&mut self) -> u16 {
        self.next_u64() as u16
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.u8()).collect()
    }
}

/// What the frames aim at: the receiving interface's MAC and the configured VIPs.
#[derive(Clone, Debug, Default)]
pub struct Targets {
    pub our_mac: [u8; 6],
    /// VRRP virtual MACs the interface knows (master of some, not of others).
    pub vmacs: Vec<[u8; 6]>,
    pub v4: Vec<[u8; 4]>,
    pub v6: Vec<[u8; 16]>,
    /// VIP ports (host order).
    pub ports: Vec<u16>,
    /// VLAN ids some VIP is restricted to.
    pub vlans: Vec<u16>,
}

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;
const FRAGMENT: u8 = 44;
/// IPv6 extension headers the data path passes (hop-by-hop, routing, destination options,
/// AH, mobility, HIP, shim6, experimental).
const EXT: [u8; 9] = [0, 43, 60, 51, 135, 139, 140, 253, 254];

pub struct Generator {
    rng: Rng,
    t: Targets,
    /// Frames still to hand out (every truncation of one frame).
    pending: Vec<Vec<u8>>,
}

impl Generator {
    pub fn new(seed: u64, targets: Targets) -> Self {
        Generator {
            rng: Rng::new(seed),
            t: targets,
            pending: Vec::new(),
        }
    }

    /// The next frame: at least 14 bytes (BPF_PROG_TEST_RUN refuses shorter ones for XDP),
    /// at most about 1.2 KB.
    pub fn next_frame(&mut self) -> Vec<u8> {
        if let Some(f) = self.pending.pop() {
            return f;
        }
        let mut f = self.frame();
        let r = &mut self.rng;
        if r.chance(10) {
            // Flip a few bytes, mostly in the headers.
            for _ in 0..1 + r.below(3) {
                let limit = if r.chance(80) {
                    f.len().min(80)
                } else {
                    f.len()
                };
                let i = r.below(limit);
                f[i] = r.u8();
            }
        }
        if r.below(1000) < 3 && f.len() > 15 {
            // Every truncation of this frame, from 14 bytes up.
            self.pending = (14..f.len()).map(|n| f[..n].to_vec()).collect();
            return f;
        }
        if r.chance(15) && f.len() > 14 {
            let n = 14 + r.below(f.len() - 14);
            f.truncate(n);
        }
        f
    }

    fn frame(&mut self) -> Vec<u8> {
        let r = &mut self.rng;
        let mut f = Vec::with_capacity(160);
        let dst = match r.below(100) {
            0..82 => self.t.our_mac,
            82..85 if !self.t.vmacs.is_empty() => self.t.vmacs[r.below(self.t.vmacs.len())],
            82..85 => self.t.our_mac,
            85..90 => [0xff; 6],
            90..94 => [0x01, 0x00, 0x5e, r.u8() & 0x7f, r.u8(), r.u8()],
            94..97 => [0x33, 0x33, r.u8(), r.u8(), r.u8(), r.u8()],
            _ => {
                // One bit away from ours, or anything.
                let mut m = self.t.our_mac;
                if r.chance(50) {
                    m[r.below(6)] ^= 1 << r.below(8);
                } else {
                    m = [r.u8(), r.u8(), r.u8(), r.u8(), r.u8(), r.u8()];
                }
                m
            }
        };
        f.extend_from_slice(&dst);
        f.extend_from_slice(&[0x02, 0xc1, 0, 0, r.u8(), r.u8()]);
        let tags = match r.below(100) {
            0..70 => 0,
            70..85 => 1,
            85..95 => 2,
            _ => 3,
        };
        for _ in 0..tags {
            let tpid: u16 = r.pick(&[0x8100, 0x88a8]);
            let vid = match r.below(4) {
                0 if !self.t.vlans.is_empty() => r.pick(&self.t.vlans),
                1 => 0,
                _ => r.u16() & 0x0fff,
            };
            let tci = vid | (r.u16() & 0xf000);
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&tci.to_be_bytes());
        }
        let kind = r.below(100);
        let ethertype: u16 = match kind {
            0..47 => 0x0800,
            47..92 => 0x86dd,
            92..95 => 0x0806,
            _ => {
                let any = r.u16();
                r.pick(&[0x8100, 0x88a8, 0x88cc, 0x8847, any])
            }
        };
        f.extend_from_slice(&ethertype.to_be_bytes());
        match ethertype {
            0x0800 => {
                let p = self.ipv4(false);
                f.extend_from_slice(&p);
            }
            0x86dd => {
                let p = self.ipv6(false);
                f.extend_from_slice(&p);
            }
            _ => {
                let n = self.rng.below(64);
                f.extend(self.rng.bytes(n));
            }
        }
        f
    }

    fn v4_addr(&mut self, vip: bool) -> [u8; 4] {
        let r = &mut self.rng;
        if vip && !self.t.v4.is_empty() && r.chance(80) {
            return r.pick(&self.t.v4);
        }
        match r.below(3) {
            0 => [198, 18, 0, r.u8()],
            _ => [r.u8(), r.u8(), r.u8(), r.u8()],
        }
    }

    fn v6_addr(&mut self, vip: bool) -> [u8; 16] {
        let r = &mut self.rng;
        if vip && r.chance(80) {
            if r.chance(12) && !self.t.v4.is_empty() {
                // IPv4-mapped IPv6 of an IPv4 VIP: never valid on the wire, never a VIP.
                let v4 = r.pick(&self.t.v4);
                let mut a = [0u8; 16];
                a[10] = 0xff;
                a[11] = 0xff;
                a[12..].copy_from_slice(&v4);
                return a;
            }
            if !self.t.v6.is_empty() {
                return r.pick(&self.t.v6);
            }
        }
        let mut a = [0u8; 16];
        a[..2].copy_from_slice(&[0x20, 0x01]);
        for b in &mut a[2..] {
            *b = r.u8();
        }
        if r.chance(50) {
            a[2..15].copy_from_slice(&[0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        }
        a
    }

    fn port(&mut self) -> u16 {
        let r = &mut self.rng;
        match r.below(100) {
            0..55 if !self.t.ports.is_empty() => r.pick(&self.t.ports),
            55..65 => 0,
            65..75 => 65535,
            _ => r.u16(),
        }
    }

    /// A TCP or UDP header (and a little payload), or random bytes for other protocols.
    fn l4(&mut self, proto: u8) -> Vec<u8> {
        let (sport, dport) = (self.port(), self.port());
        let r = &mut self.rng;
        let mut h = Vec::with_capacity(40);
        h.extend_from_slice(&sport.to_be_bytes());
        h.extend_from_slice(&dport.to_be_bytes());
        match proto {
            TCP => {
                h.extend(r.bytes(8)); // seq, ack
                h.push(if r.chance(90) { 0x50 } else { r.u8() });
                h.push(r.u8()); // every flag combination
                h.extend(r.bytes(6)); // window, checksum, urgent
            }
            UDP => {
                let len = 8 + r.below(32) as u16;
                h.extend_from_slice(&len.to_be_bytes());
                h.extend_from_slice(&[0, 0]);
            }
            _ => {}
        }
        let n = r.below(40);
        h.extend(r.bytes(n));
        h
    }

    fn proto(&mut self) -> u8 {
        let r = &mut self.rng;
        match r.below(100) {
            0..40 => TCP,
            40..70 => UDP,
            70..90 => ICMP,
            _ => r.u8(),
        }
    }

    /// An IPv4 packet. `quoted`: the packet inside an ICMP error (no further nesting).
    fn ipv4(&mut self, quoted: bool) -> Vec<u8> {
        let proto = if quoted {
            let r = &mut self.rng;
            match r.below(10) {
                0..5 => TCP,
                5..8 => UDP,
                _ => r.u8(),
            }
        } else {
            self.proto()
        };
        let src = self.v4_addr(false);
        let dst = self.v4_addr(!quoted);
        let payload = if proto == ICMP && !quoted {
            self.icmp4(dst)
        } else {
            self.l4(proto)
        };
        let r = &mut self.rng;
        let opts_len = if r.chance(75) {
            0
        } else {
            4 * (1 + r.below(10))
        };
        let mut opts = r.bytes(opts_len);
        if r.chance(50) {
            // NOPs and an end-of-options: legal filler.
            opts.iter_mut().for_each(|b| *b = 1);
            if let Some(b) = opts.last_mut() {
                *b = 0;
            }
        }
        let mut ihl = 5 + opts_len / 4;
        if r.chance(7) {
            ihl = r.below(16);
        }
        let version = if r.chance(97) { 4 } else { r.below(16) };
        let frag: u16 = match r.below(100) {
            0..50 => 0,
            50..60 => 0x4000,                          // DF
            60..70 => 0x2000,                          // first fragment, more to come
            70..80 => 0x2000 | (1 + r.u16() % 0x1fff), // a middle fragment
            80..90 => 1 + r.u16() % 0x1fff,            // the last fragment
            90..95 => 0x4000 | (1 + r.u16() % 0x1fff), // DF and an offset: nonsense
            _ => r.u16(),
        };
        let mut total = (20 + opts_len + payload.len()) as u16;
        if r.chance(8) {
            total = r.u16();
        }
        let mut h = vec![
            (version as u8) << 4 | ihl as u8,
            r.u8(),
            (total >> 8) as u8,
            total as u8,
            r.u8(),
            r.u8(),
            (frag >> 8) as u8,
            frag as u8,
            r.u8(),
            proto,
            0,
            0,
        ];
        h.extend_from_slice(&src);
        h.extend_from_slice(&dst);
        h.extend_from_slice(&opts);
        h.extend_from_slice(&payload);
        h
    }

    /// An ICMP message to `outer_dst`: mostly "fragmentation needed" quoting a packet sent
    /// from it (or from elsewhere: forged), its quote cut short now and then.
    fn icmp4(&mut self, outer_dst: [u8; 4]) -> Vec<u8> {
        let r = &mut self.rng;
        let (kind, code) = match r.below(10) {
            0..7 => (3, 4),
            7 => (3, r.u8()),
            _ => (r.u8(), r.u8()),
        };
        let mut m = vec![kind, code, 0, 0, 0, 0, 0x05, 0xdc];
        let mut quote = self.ipv4(true);
        let r = &mut self.rng;
        if r.chance(75) {
            // Sent from the VIP (the usual, legitimate error); otherwise forged.
            quote[12..16].copy_from_slice(&outer_dst);
        }
        if r.chance(30) {
            let n = r.below(quote.len() + 1);
            quote.truncate(n);
        }
        m.extend_from_slice(&quote);
        m
    }

    /// An IPv6 packet. `quoted`: the packet inside an ICMPv6 error.
    fn ipv6(&mut self, quoted: bool) -> Vec<u8> {
        let src = self.v6_addr(false);
        let dst = self.v6_addr(!quoted);
        let r = &mut self.rng;
        let shape = r.below(100);
        let mut chain: Vec<u8> = Vec::new(); // extension headers after the fixed one
        let mut first_next;
        let last;
        match shape {
            0..50 => {
                first_next = if r.chance(55) { TCP } else { UDP };
                last = first_next;
            }
            50..65 => {
                first_next = FRAGMENT;
                last = match r.below(10) {
                    0..4 => TCP,
                    4..8 => UDP,
                    8 => ICMPV6,
                    _ => r.u8(),
                };
                chain.extend(self.frag6(last));
            }
            65..80 if !quoted => {
                first_next = ICMPV6;
                last = ICMPV6;
            }
            80..95 => {
                // A chain of 1-3 extension headers, then TCP/UDP or a fragment header.
                let n = 1 + r.below(3);
                let kinds: Vec<u8> = (0..n).map(|_| r.pick(&EXT)).collect();
                first_next = kinds[0];
                let end = match r.below(3) {
                    0 => TCP,
                    1 => UDP,
                    _ => FRAGMENT,
                };
                for (i, &k) in kinds.iter().enumerate() {
                    let next = kinds.get(i + 1).copied().unwrap_or(end);
                    let units = r.below(3);
                    if k == 51 {
                        // AH: length in 4-byte units, minus 2.
                        let len = (units + 2) * 4;
                        chain.push(next);
                        chain.push(units as u8);
                        chain.extend(r.bytes(len - 2));
                    } else {
                        let len = (units + 1) * 8;
                        chain.push(next);
                        chain.push(units as u8);
                        chain.extend(r.bytes(len - 2));
                    }
                }
                last = if end == FRAGMENT { TCP } else { end };
                if end == FRAGMENT {
                    chain.extend(self.frag6(last));
                }
            }
            _ => {
                first_next = r.u8();
                last = first_next;
            }
        }
        let fragment_payload_only = first_next == FRAGMENT && chain.len() >= 4 && {
            let off = u16::from_be_bytes([chain[2], chain[3]]) >> 3;
            off != 0
        };
        let body = if last == ICMPV6 && !quoted && !fragment_payload_only {
            self.icmp6(dst)
        } else if fragment_payload_only {
            let n = self.rng.below(48);
            self.rng.bytes(n)
        } else {
            self.l4(last)
        };
        let r2 = &mut self.rng;
        if quoted && r2.chance(5) {
            first_next = r2.u8();
        }
        let version = if r2.chance(97) { 6 } else { r2.below(16) as u8 };
        let mut plen = (chain.len() + body.len()) as u16;
        if r2.chance(8) {
            plen = r2.u16();
        }
        let mut h = vec![version << 4 | (r2.u8() & 0x0f), r2.u8(), r2.u8(), r2.u8()];
        h.extend_from_slice(&plen.to_be_bytes());
        h.push(first_next);
        h.push(r2.u8());
        h.extend_from_slice(&src);
        h.extend_from_slice(&dst);
        h.extend_from_slice(&chain);
        h.extend_from_slice(&body);
        h
    }

    /// An IPv6 fragment header for `next`: first (offset 0) or a later one, M flag either way.
    fn frag6(&mut self, next: u8) -> Vec<u8> {
        let r = &mut self.rng;
        let offset: u16 = if r.chance(50) {
            0
        } else {
            1 + r.u16() % 0x1fff
        };
        let field = offset << 3 | (r.u16() & 1);
        let mut h = vec![next, 0];
        h.extend_from_slice(&field.to_be_bytes());
        h.extend(r.bytes(4));
        h
    }

    /// An ICMPv6 message to `outer_dst`: mostly "packet too big" quoting a packet sent from it.
    fn icmp6(&mut self, outer_dst: [u8; 16]) -> Vec<u8> {
        let r = &mut self.rng;
        let kind = if r.chance(75) { 2 } else { r.u8() };
        let mut m = vec![kind, r.u8(), 0, 0, 0, 0, 0x05, 0x00];
        let mut quote = self.ipv6(true);
        let r = &mut self.rng;
        if r.chance(75) {
            quote[8..24].copy_from_slice(&outer_dst);
        }
        if r.chance(30) {
            let n = r.below(quote.len() + 1);
            quote.truncate(n);
        }
        m.extend_from_slice(&quote);
        m
    }
}

/// Lower-case hex, for failure messages.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
