//! The XDP program, frame by frame: each row is a frame in, the verdict expected, and the frame
//! expected out, pushed through the loaded program with BPF_PROG_TEST_RUN (Katran's style of
//! packet test). Needs root (loading BPF), as CI has.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use dsr::{
    datapath::{Datapath, LoadOptions, Sizes, writer::Writer},
    plan::{Desired, DesiredBackend, DesiredVip, Egress, VipOptions, maglev},
    spec::model::{MacAddr, Protocol, VipAddr},
};
use dsr_common::{
    BACKEND_F_VALID, DEFAULT_HASH_SEED, DEFAULT_TABLE_SIZE, Event, FLOW_F_CLOSING, FlowKey,
    FlowMapKey, HASH_ALL, HASH_PORTS, HASH_SRC_ADDR, Reason, TABLE_CHUNK, addr_words, flow_hash,
};
use dsr_lab::{
    frames::{self, ETH_P_IPV4, ETH_P_IPV6, ICMP, TCP, UDP},
    testrun::{XDP_DROP, XDP_PASS, XDP_TX, run, verdict_name},
};

const LB_MAC: [u8; 6] = [0x02, 0x1b, 0, 0, 0, 0x01];
const CLIENT_MAC: [u8; 6] = [0x02, 0xc1, 0, 0, 0, 0x01];
const OTHER_MAC: [u8; 6] = [0x02, 0x99, 0, 0, 0, 0x99];
const LO: u32 = 1;

const VIP4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
const VIP4_EMPTY: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 101);
const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

fn options(max_vips: u32, max_backends: u32, table_size: u32, flow_idle: Duration) -> LoadOptions {
    LoadOptions {
        sizes: Sizes {
            max_vips,
            max_backends,
            table_budget: Sizes::budget_for(max_vips, table_size),
            flow_table_size: 4096,
        },
        hash_seed: DEFAULT_HASH_SEED,
        flow_idle,
        pin_dir: None,
        datapath_log: dsr::spec::model::DatapathLog::Off,
    }
}

#[derive(Clone, Copy)]
struct Backend {
    address: IpAddr,
    mac: [u8; 6],
    id: u32,
}

/// The fixture's VIPs, by id: 0 VIP4:80/tcp, 1 VIP4:53/udp (accepts fragments),
/// 2 [VIP6]:80/tcp, 3 [VIP6]:53/udp (accepts fragments), 4 VIP4_EMPTY:80/tcp (no backend),
/// 5 VIP4_ALL:*/tcp (all ports), 6 VIP4_VLAN:80/tcp@vlan100, 7 VIP4_AFFINITY:80/tcp (hashes
/// on the source address), 8 VIP4_SRC:80/tcp and 9 VIP4_SRC:5353/udp (both source-hashed,
/// one address).
const VIPS: usize = 10;

/// A loaded program filled through the real map writer. Every VIP has backends of its own
/// (distinct ids, addresses and MACs; weights 1:2:1, except VIP 8 with one backend and VIP 9
/// with two) and so a table of its own: a flow entry or a table slot that leaks from one VIP
/// to another shows as a wrong MAC.
struct Fixture {
    dp: Datapath,
    writer: Writer,
    desired: Desired,
    /// VIP 0's backends (ids 0..3).
    backends: Vec<Backend>,
    /// Every VIP's backends, by VIP id.
    all: Vec<Vec<Backend>>,
    /// VIP 0's table for weights 1:2:1.
    expected: Vec<u32>,
    vips: Vec<(VipAddr, VipOptions)>,
}

const VIP4_ALL: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 102);
const VIP4_VLAN: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 103);
const VIP4_AFFINITY: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 104);
const VIP4_SRC: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 105);

fn vip(address: impl Into<IpAddr>, port: u16, protocol: Protocol, vlan: u16) -> VipAddr {
    VipAddr {
        address: address.into(),
        port,
        protocol,
        vlan,
    }
}

impl Fixture {
    fn new() -> Self {
        Self::with_idle(Duration::from_secs(300))
    }

    fn with_idle(flow_idle: Duration) -> Self {
        Self::with_options(options(16, 64, DEFAULT_TABLE_SIZE, flow_idle))
    }

    fn with_options(options: LoadOptions) -> Self {
        let mut dp = Datapath::load(&options).expect("load (are you root?)");
        dp.set_iface(LO, MacAddr(LB_MAC)).unwrap();
        let writer = Writer::read(&dp).unwrap();
        let plain = VipOptions::default();
        let fragments = VipOptions {
            fragments: true,
            hash_fields: HASH_ALL & !HASH_PORTS,
            ..plain
        };
        let affinity = VipOptions {
            hash_fields: HASH_SRC_ADDR,
            ..plain
        };
        let vips = vec![
            (vip(VIP4, 80, Protocol::Tcp, 0), plain),
            (vip(VIP4, 53, Protocol::Udp, 0), fragments),
            (vip(VIP6, 80, Protocol::Tcp, 0), plain),
            (vip(VIP6, 53, Protocol::Udp, 0), fragments),
            (vip(VIP4_EMPTY, 80, Protocol::Tcp, 0), plain),
            (vip(VIP4_ALL, 0, Protocol::Tcp, 0), plain),
            (vip(VIP4_VLAN, 80, Protocol::Tcp, 100), plain),
            (vip(VIP4_AFFINITY, 80, Protocol::Tcp, 0), affinity),
            (vip(VIP4_SRC, 80, Protocol::Tcp, 0), affinity),
            (vip(VIP4_SRC, 5353, Protocol::Udp, 0), affinity),
        ];
        assert_eq!(vips.len(), VIPS);
        let all: Vec<Vec<Backend>> = (0..VIPS as u32)
            .map(|v| {
                let n = match v {
                    8 => 1,
                    9 => 2,
                    _ => 3,
                };
                (0..n)
                    .map(|i| Backend {
                        address: IpAddr::V4(Ipv4Addr::new(198, 18, v as u8, 11 + i as u8)),
                        mac: [0x02, 0xbe, 0, v as u8, 0, 0x11 + i as u8],
                        id: v * 3 + i,
                    })
                    .collect()
            })
            .collect();
        let mut f = Fixture {
            dp,
            writer,
            desired: Desired::default(),
            backends: all[0].clone(),
            all,
            expected: Vec::new(),
            vips,
        };
        for v in 0..VIPS {
            for b in f.all[v].clone() {
                f.desired.backends.insert(
                    b.id,
                    DesiredBackend {
                        vip_id: v as u32,
                        mac: Some(MacAddr(b.mac)),
                        keep_flows: true,
                        egress: None,
                    },
                );
            }
            let weights: &[u32] = match v {
                4 => &[0, 0, 0],
                8 => &[1],
                9 => &[1, 1],
                _ => &[1, 2, 1],
            };
            f.set_vip(v, weights, f.vips[v].1);
        }
        f.expected = f.table(&[1, 2, 1]);
        f
    }

    /// VIP `v`'s table input: its backends with these weights (0 = not in the table).
    fn entries(&self, v: usize, weights: &[u32]) -> Vec<maglev::Entry> {
        self.all[v]
            .iter()
            .zip(weights)
            .filter(|(_, w)| **w > 0)
            .map(|(b, &w)| maglev::Entry {
                address: b.address,
                id: b.id,
                weight: w,
            })
            .collect()
    }

    /// Installs VIP `v` with these backend weights and options, through the writer.
    fn set_vip(&mut self, v: usize, weights: &[u32], options: VipOptions) {
        self.vips[v].1 = options;
        let entries = self.entries(v, weights);
        self.desired.vips.insert(
            self.vips[v].0,
            DesiredVip {
                id: v as u32,
                table_size: DEFAULT_TABLE_SIZE,
                entries,
                standby: Vec::new(),
                configured_entries: None,
                options,
            },
        );
        self.apply();
    }

    /// Gives VIP `v` a table of `size` slots, through the writer.
    fn resize(&mut self, v: usize, size: u32) -> anyhow::Result<()> {
        let addr = self.vips[v].0;
        self.desired
            .vips
            .get_mut(&addr)
            .expect("a fixture VIP")
            .table_size = size;
        self.writer
            .apply_all(&mut self.dp, &self.desired)
            .map(|_| ())
    }

    /// Changes backend `id`'s entry through the writer.
    fn set_backend(&mut self, id: u32, change: impl FnOnce(&mut DesiredBackend)) {
        change(
            self.desired
                .backends
                .get_mut(&id)
                .expect("a fixture backend"),
        );
        self.apply();
    }

    fn apply(&mut self) {
        self.writer
            .apply_all(&mut self.dp, &self.desired)
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// VIP 0's table for these weights of its backends.
    fn table(&self, weights: &[u32]) -> Vec<u32> {
        maglev::build(&self.entries(0, weights), DEFAULT_TABLE_SIZE)
    }

    /// The VIP (index) a flow to `dst:dport/proto` is for.
    fn vip_of(&self, dst: IpAddr, dport: u16, proto: u8) -> usize {
        // Rows do not say their frame's VLAN: an untagged VIP first, then a VLAN one.
        let matching = |exact: bool, any_vlan: bool| {
            self.vips.iter().position(|(a, _)| {
                a.address == dst
                    && a.protocol.number() == proto
                    && (a.vlan == 0 || any_vlan)
                    && (a.port == dport || !exact && a.port == 0)
            })
        };
        matching(true, false)
            .or_else(|| matching(false, false))
            .or_else(|| matching(true, true))
            .unwrap_or_else(|| panic!("no fixture VIP for {dst}:{dport}/{proto}"))
    }

    /// The backend userspace predicts for a flow to one of the fixture's VIPs.
    fn expected_backend(
        &self,
        src: IpAddr,
        sport: u16,
        dst: IpAddr,
        dport: u16,
        proto: u8,
    ) -> &Backend {
        self.predict(
            self.vip_of(dst, dport, proto),
            src,
            sport,
            dst,
            dport,
            proto,
        )
    }

    /// The backend VIP `v`'s current table gives a flow.
    fn predict(
        &self,
        v: usize,
        src: IpAddr,
        sport: u16,
        dst: IpAddr,
        dport: u16,
        proto: u8,
    ) -> &Backend {
        let (addr, opts) = self.vips[v];
        let key = FlowKey::new(src, sport, dst, dport, proto).masked(opts.hash_fields);
        let desired = &self.desired.vips[&addr];
        let table = desired.table();
        let slot = flow_hash(&key, DEFAULT_HASH_SEED) % table.len() as u32;
        let id = table[slot as usize];
        self.all[v]
            .iter()
            .find(|b| b.id == id)
            .expect("a backend of the VIP")
    }

    /// The flow-table key of a flow to VIP `v`, untagged.
    fn flow_key(
        &self,
        v: usize,
        src: IpAddr,
        sport: u16,
        dst: IpAddr,
        dport: u16,
        proto: u8,
    ) -> FlowMapKey {
        let flow = FlowKey::new(src, sport, dst, dport, proto).masked(self.vips[v].1.hash_fields);
        FlowMapKey::new(v as u32, 0, &flow)
    }
}

fn v4(proto: u8, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    frames::flow_frame(
        LB_MAC,
        CLIENT_MAC,
        CLIENT4.into(),
        40000,
        dst.into(),
        dport,
        proto,
    )
}

fn v6(proto: u8, dport: u16) -> Vec<u8> {
    frames::flow_frame(
        LB_MAC,
        CLIENT_MAC,
        CLIENT6.into(),
        40000,
        VIP6.into(),
        dport,
        proto,
    )
}

/// An ICMP fragmentation-needed from a router to `vip`, quoting a packet the backend sent
/// from `vip:vport` to `client:cport` (a 1500-byte TCP segment, quoted in part).
fn icmp4_too_big(vip: Ipv4Addr, vport: u16, client: Ipv4Addr, cport: u16) -> Vec<u8> {
    let quoted = frames::ipv4(
        vip,
        client,
        TCP,
        &[],
        &frames::tcp(vport, cport, &[0u8; 1460]),
    );
    let icmp = frames::icmp4_frag_needed(1400, &quoted);
    let router = Ipv4Addr::new(198, 18, 0, 254);
    frames::ethernet(
        LB_MAC,
        CLIENT_MAC,
        ETH_P_IPV4,
        &frames::ipv4(router, vip, ICMP, &[], &icmp),
    )
}

fn icmp6_too_big(cport: u16) -> Vec<u8> {
    let quoted = frames::ipv6(VIP6, CLIENT6, TCP, &frames::tcp(80, cport, &[0u8; 1200]));
    let icmp = frames::icmp6_packet_too_big(1280, &quoted);
    let router = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xfe);
    frames::ethernet(
        LB_MAC,
        CLIENT_MAC,
        ETH_P_IPV6,
        &frames::ipv6(router, VIP6, 58, &icmp),
    )
}

fn v4_with_options(option_bytes: usize) -> Vec<u8> {
    // NOPs (type 1) then an end-of-options byte: legal filler of any length.
    let mut opts = vec![1u8; option_bytes];
    if let Some(last) = opts.last_mut() {
        *last = 0;
    }
    let seg = frames::tcp(40000, 80, b"opts");
    frames::ethernet(
        LB_MAC,
        CLIENT_MAC,
        ETH_P_IPV4,
        &frames::ipv4(CLIENT4, VIP4, TCP, &opts, &seg),
    )
}

enum Expect {
    /// Forwarded to the backend the flow hashes to: the frame out equals the frame in with
    /// destination MAC = that backend's, source MAC = ours, and nothing else changed.
    Tx,
    /// Forwarded, for this reason, to the backend that owns this flow (src, sport, dst,
    /// dport, proto): for frames whose flow is not simply their own 5-tuple (fragments,
    /// ICMP errors, tagged frames).
    TxFor(Reason, (IpAddr, u16, IpAddr, u16, u8)),
    /// Passed or dropped untouched, for this reason.
    Untouched(u32, Reason),
}

struct Row {
    what: &'static str,
    frame: Vec<u8>,
    expect: Expect,
}

fn rows() -> Vec<Row> {
    use Expect::*;
    let truncate = |mut f: Vec<u8>, len: usize| {
        f.truncate(len);
        f
    };
    let with_dst_mac = |mut f: Vec<u8>, mac: [u8; 6]| {
        f[..6].copy_from_slice(&mac);
        f
    };
    let hop_by_hop = {
        // Hop-by-hop options header (8 bytes: next header TCP, length 0, PadN) then TCP.
        let mut p = vec![TCP, 0, 1, 4, 0, 0, 0, 0];
        p.extend_from_slice(&frames::tcp(40000, 80, b"x"));
        frames::ethernet(
            LB_MAC,
            CLIENT_MAC,
            ETH_P_IPV6,
            &frames::ipv6(CLIENT6, VIP6, 0, &p),
        )
    };
    let fragment = |frag: u16| {
        let seg = frames::udp(40000, 53, &[7u8; 32]);
        frames::ethernet(
            LB_MAC,
            CLIENT_MAC,
            ETH_P_IPV4,
            &frames::ipv4_frag(CLIENT4, VIP4, UDP, &[], frag, &seg),
        )
    };
    let udp53 = (CLIENT4.into(), 40000, VIP4.into(), 53, UDP);
    let udp53_v6 = (CLIENT6.into(), 40000, VIP6.into(), 53, UDP);
    let tcp80 = (CLIENT4.into(), 40000, VIP4.into(), 80, TCP);
    let tcp_fragment = {
        let seg = frames::tcp(40000, 80, &[7u8; 32]);
        frames::ethernet(
            LB_MAC,
            CLIENT_MAC,
            ETH_P_IPV4,
            &frames::ipv4_frag(CLIENT4, VIP4, TCP, &[], 0x2000, &seg),
        )
    };
    let v6_fragment = |offset: u16, more: bool| {
        let seg = frames::udp(40000, 53, &[9u8; 48]);
        let payload = if offset == 0 { seg } else { vec![9u8; 48] };
        let frag = frames::ipv6_fragment(UDP, offset, more, 0x1234, &payload);
        frames::ethernet(
            LB_MAC,
            CLIENT_MAC,
            ETH_P_IPV6,
            &frames::ipv6(CLIENT6, VIP6, 44, &frag),
        )
    };
    let mut bad_version = v4(TCP, VIP4, 80);
    bad_version[14] = 0x65; // "version 6" inside an IPv4 ethertype
    let mut short_ihl = v4(TCP, VIP4, 80);
    short_ihl[14] = 0x44; // IHL 4 < the minimum 5
    let mut v6_bad_version = v6(TCP, 80);
    v6_bad_version[14] = 0x40;
    // A later fragment of an ICMP datagram: its payload is arbitrary bytes, here shaped like
    // a fragmentation-needed quoting a flow of VIP4 (a crafted frame was once forwarded as
    // forwarded_icmp).
    let icmp_in_fragment = {
        let quoted = frames::ipv4(VIP4, CLIENT4, TCP, &[], &frames::tcp(80, 40000, &[0u8; 16]));
        let payload = frames::icmp4_frag_needed(1400, &quoted);
        frames::ethernet(
            LB_MAC,
            CLIENT_MAC,
            ETH_P_IPV4,
            &frames::ipv4_frag(CLIENT4, VIP4, ICMP, &[], 0x0010, &payload),
        )
    };

    vec![
        Row {
            what: "IPv4 TCP to a VIP",
            frame: v4(TCP, VIP4, 80),
            expect: Tx,
        },
        Row {
            what: "IPv4 UDP to a VIP",
            frame: v4(UDP, VIP4, 53),
            expect: Tx,
        },
        Row {
            what: "IPv6 TCP to a VIP",
            frame: v6(TCP, 80),
            expect: Tx,
        },
        Row {
            what: "IPv6 UDP to a VIP",
            frame: v6(UDP, 53),
            expect: Tx,
        },
        Row {
            what: "IPv4 with 4 bytes of options (IHL 6)",
            frame: v4_with_options(4),
            expect: Tx,
        },
        Row {
            what: "IPv4 with 40 bytes of options (IHL 15)",
            frame: v4_with_options(40),
            expect: Tx,
        },
        Row {
            what: "frame for another MAC (flooded by a switch)",
            frame: with_dst_mac(v4(TCP, VIP4, 80), OTHER_MAC),
            expect: Untouched(XDP_PASS, Reason::NotOurMac),
        },
        Row {
            what: "broadcast frame to a VIP",
            frame: with_dst_mac(v4(UDP, VIP4, 53), [0xff; 6]),
            expect: Untouched(XDP_PASS, Reason::NotOurMac),
        },
        Row {
            what: "ARP request for the VIP",
            frame: with_dst_mac(frames::arp_request(CLIENT_MAC, CLIENT4, VIP4), LB_MAC),
            expect: Untouched(XDP_PASS, Reason::NotIp),
        },
        Row {
            what: "TCP to a non-VIP address",
            frame: v4(TCP, Ipv4Addr::new(198, 18, 0, 2), 80),
            expect: Untouched(XDP_PASS, Reason::NotVip),
        },
        Row {
            what: "TCP to a VIP address on a port that is not configured",
            frame: v4(TCP, VIP4, 81),
            expect: Untouched(XDP_PASS, Reason::NotVip),
        },
        Row {
            what: "UDP to a port configured for TCP only",
            frame: v4(UDP, VIP4, 80),
            expect: Untouched(XDP_PASS, Reason::NotVip),
        },
        Row {
            what: "IPv6 TCP to a port that is not configured",
            frame: v6(TCP, 443),
            expect: Untouched(XDP_PASS, Reason::NotVip),
        },
        Row {
            what: "VIP with no usable backend",
            frame: v4(TCP, VIP4_EMPTY, 80),
            expect: Untouched(XDP_DROP, Reason::NoBackend),
        },
        Row {
            what: "ICMP echo to a VIP address",
            frame: frames::ethernet(
                LB_MAC,
                CLIENT_MAC,
                ETH_P_IPV4,
                &frames::ipv4(CLIENT4, VIP4, ICMP, &[], &[8, 0, 0, 0, 0, 1, 0, 1]),
            ),
            expect: Untouched(XDP_PASS, Reason::NotTcpUdp),
        },
        Row {
            what: "IPv6 with a hop-by-hop header before TCP",
            frame: hop_by_hop,
            expect: Untouched(XDP_PASS, Reason::Ipv6ExtHeader),
        },
        Row {
            what: "IPv4 first fragment (MF set)",
            frame: fragment(0x2000),
            expect: TxFor(Reason::FragmentForwarded, udp53),
        },
        Row {
            what: "IPv4 non-first fragment",
            frame: fragment(0x0003),
            expect: TxFor(Reason::FragmentForwarded, udp53),
        },
        Row {
            what: "IPv4 fragment for a VIP that does not accept fragments",
            frame: tcp_fragment.clone(),
            expect: Untouched(XDP_PASS, Reason::Fragment),
        },
        Row {
            what: "IPv6 first fragment (fragment header, then UDP)",
            frame: v6_fragment(0, true),
            expect: TxFor(Reason::FragmentForwarded, udp53_v6),
        },
        Row {
            what: "IPv6 non-first fragment",
            frame: v6_fragment(185, false),
            expect: TxFor(Reason::FragmentForwarded, udp53_v6),
        },
        Row {
            what: "802.1Q-tagged TCP to a VIP (tag kept)",
            frame: frames::tagged(&v4(TCP, VIP4, 80), 0x8100, 42),
            expect: TxFor(Reason::Forwarded, tcp80),
        },
        Row {
            what: "QinQ (802.1ad + 802.1Q) TCP to a VIP (both tags kept)",
            frame: frames::tagged(&frames::tagged(&v4(TCP, VIP4, 80), 0x8100, 42), 0x88a8, 7),
            expect: TxFor(Reason::Forwarded, tcp80),
        },
        Row {
            what: "three VLAN tags",
            frame: frames::tagged(
                &frames::tagged(&frames::tagged(&v4(TCP, VIP4, 80), 0x8100, 3), 0x8100, 2),
                0x88a8,
                1,
            ),
            expect: Untouched(XDP_PASS, Reason::TooManyVlanTags),
        },
        Row {
            what: "VLAN 100 frame to a VIP restricted to VLAN 100",
            frame: frames::tagged(&v4(TCP, VIP4_VLAN, 80), 0x8100, 100),
            expect: TxFor(
                Reason::Forwarded,
                (CLIENT4.into(), 40000, VIP4_VLAN.into(), 80, TCP),
            ),
        },
        Row {
            what: "VLAN 200 frame to a VIP restricted to VLAN 100",
            frame: frames::tagged(&v4(TCP, VIP4_VLAN, 80), 0x8100, 200),
            expect: Untouched(XDP_PASS, Reason::NotVip),
        },
        Row {
            what: "untagged frame to a VIP restricted to VLAN 100",
            frame: v4(TCP, VIP4_VLAN, 80),
            expect: Untouched(XDP_PASS, Reason::NotVip),
        },
        Row {
            what: "TCP to any port of an all-ports VIP",
            frame: v4(TCP, VIP4_ALL, 5555),
            expect: Tx,
        },
        Row {
            what: "UDP to an all-ports TCP VIP",
            frame: v4(UDP, VIP4_ALL, 5555),
            expect: Untouched(XDP_PASS, Reason::NotVip),
        },
        Row {
            what: "ICMP fragmentation-needed about a VIP flow, sent to the VIP",
            frame: icmp4_too_big(VIP4, 80, CLIENT4, 40123),
            expect: TxFor(
                Reason::IcmpForwarded,
                (CLIENT4.into(), 40123, VIP4.into(), 80, TCP),
            ),
        },
        Row {
            what: "ICMPv6 packet-too-big about a VIP flow, sent to the VIP",
            frame: icmp6_too_big(40123),
            expect: TxFor(
                Reason::IcmpForwarded,
                (CLIENT6.into(), 40123, VIP6.into(), 80, TCP),
            ),
        },
        Row {
            what: "ICMP fragmentation-needed about a port that is no VIP",
            frame: icmp4_too_big(VIP4, 81, CLIENT4, 40123),
            expect: Untouched(XDP_PASS, Reason::NotTcpUdp),
        },
        Row {
            what: "ICMP fragmentation-needed quoting a packet not from the VIP",
            frame: icmp4_too_big(Ipv4Addr::new(198, 18, 0, 7), 80, CLIENT4, 40123),
            expect: Untouched(XDP_PASS, Reason::NotTcpUdp),
        },
        Row {
            what: "Ethernet header only",
            frame: truncate(v4(TCP, VIP4, 80), 14),
            expect: Untouched(XDP_PASS, Reason::Malformed),
        },
        Row {
            what: "IPv4 header cut at 19 bytes",
            frame: truncate(v4(TCP, VIP4, 80), 14 + 19),
            expect: Untouched(XDP_PASS, Reason::Malformed),
        },
        Row {
            what: "IPv4 options cut short (IHL 15, frame ends in the options)",
            frame: truncate(v4_with_options(40), 14 + 30),
            expect: Untouched(XDP_PASS, Reason::Malformed),
        },
        Row {
            what: "TCP header cut at 19 bytes",
            frame: truncate(v4(TCP, VIP4, 80), 14 + 20 + 19),
            expect: Untouched(XDP_PASS, Reason::Malformed),
        },
        Row {
            what: "TCP with only its ports",
            frame: truncate(v4(TCP, VIP4, 80), 14 + 20 + 4),
            expect: Untouched(XDP_PASS, Reason::Malformed),
        },
        Row {
            what: "UDP header cut at 7 bytes",
            frame: truncate(v4(UDP, VIP4, 53), 14 + 20 + 7),
            expect: Untouched(XDP_PASS, Reason::Malformed),
        },
        Row {
            what: "IPv6 header cut at 39 bytes",
            frame: truncate(v6(TCP, 80), 14 + 39),
            expect: Untouched(XDP_PASS, Reason::Malformed),
        },
        Row {
            what: "IPv6 TCP header cut at 10 bytes",
            frame: truncate(v6(TCP, 80), 14 + 40 + 10),
            expect: Untouched(XDP_PASS, Reason::Malformed),
        },
        Row {
            what: "IPv6 UDP header cut at 6 bytes",
            frame: truncate(v6(UDP, 53), 14 + 40 + 6),
            expect: Untouched(XDP_PASS, Reason::Malformed),
        },
        Row {
            what: "IPv4 ethertype with version 6 in the header",
            frame: bad_version,
            expect: Untouched(XDP_PASS, Reason::Malformed),
        },
        Row {
            what: "IPv4 with IHL 4",
            frame: short_ihl,
            expect: Untouched(XDP_PASS, Reason::Malformed),
        },
        Row {
            what: "IPv6 ethertype with version 4 in the header",
            frame: v6_bad_version,
            expect: Untouched(XDP_PASS, Reason::Malformed),
        },
        Row {
            what: "non-first IPv4 fragment with protocol ICMP whose bytes look like a too-big",
            frame: icmp_in_fragment,
            expect: Untouched(XDP_PASS, Reason::NotTcpUdp),
        },
        Row {
            what: "IPv6 TCP to the IPv4-mapped form of an IPv4 VIP",
            frame: frames::ethernet(
                LB_MAC,
                CLIENT_MAC,
                ETH_P_IPV6,
                &frames::ipv6(
                    CLIENT6,
                    VIP4.to_ipv6_mapped(),
                    TCP,
                    &frames::tcp(40000, 80, b"x"),
                ),
            ),
            expect: Untouched(XDP_PASS, Reason::NotVip),
        },
        Row {
            what: "IPv4 total length shorter than its own headers",
            frame: {
                let mut f = v4(TCP, VIP4, 80);
                f[16..18].copy_from_slice(&20u16.to_be_bytes());
                f
            },
            expect: Untouched(XDP_PASS, Reason::Malformed),
        },
        Row {
            what: "IPv4 total length past the end of the frame",
            frame: {
                let mut f = v4(TCP, VIP4, 80);
                f[16..18].copy_from_slice(&1500u16.to_be_bytes());
                f
            },
            expect: Untouched(XDP_PASS, Reason::Malformed),
        },
        Row {
            what: "TCP data offset 0",
            frame: {
                let mut f = v4(TCP, VIP4, 80);
                f[14 + 20 + 12] = 0;
                f
            },
            expect: Untouched(XDP_PASS, Reason::Malformed),
        },
        Row {
            what: "IPv6 payload length 0 (a jumbogram without its header)",
            frame: {
                let mut f = v6(TCP, 80);
                f[18..20].copy_from_slice(&0u16.to_be_bytes());
                f
            },
            expect: Untouched(XDP_PASS, Reason::Malformed),
        },
        Row {
            what: "TCP RST to a VIP (no flow entry)",
            frame: with_tcp_flags(flow(40100), TCP_RST),
            expect: Tx,
        },
        Row {
            what: "TCP ACK to a VIP (no flow entry: adopted)",
            frame: with_tcp_flags(flow(40101), TCP_ACK),
            expect: Tx,
        },
    ]
}

const TCP_FIN: u8 = 0x01;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// An untagged IPv4 TCP frame (no options) with its TCP flags replaced.
fn with_tcp_flags(mut frame: Vec<u8>, flags: u8) -> Vec<u8> {
    frame[14 + 20 + 13] = flags;
    frame
}

/// Source/destination of a well-formed TCP/UDP frame built by this file (for predicting the
/// backend): parsed from the frame itself so rows stay plain data.
fn flow_of(frame: &[u8]) -> (IpAddr, u16, IpAddr, u16, u8) {
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    let (src, dst, proto, l4) = if ethertype == ETH_P_IPV4 {
        let ihl = (frame[14] & 0x0f) as usize * 4;
        let s: [u8; 4] = frame[26..30].try_into().unwrap();
        let d: [u8; 4] = frame[30..34].try_into().unwrap();
        (IpAddr::from(s), IpAddr::from(d), frame[23], 14 + ihl)
    } else {
        let s: [u8; 16] = frame[22..38].try_into().unwrap();
        let d: [u8; 16] = frame[38..54].try_into().unwrap();
        (IpAddr::from(s), IpAddr::from(d), frame[20], 54)
    };
    let sport = u16::from_be_bytes([frame[l4], frame[l4 + 1]]);
    let dport = u16::from_be_bytes([frame[l4 + 2], frame[l4 + 3]]);
    (src, sport, dst, dport, proto)
}

#[test]
fn frame_table() {
    let f = Fixture::new();
    let mut failures = Vec::new();
    for row in rows() {
        let before = f.dp.reason_totals().unwrap();
        let (verdict, out) = run(f.dp.program(), &row.frame, LO);
        let after = f.dp.reason_totals().unwrap();
        let (want_verdict, want_frame, want_reason) = match row.expect {
            Expect::Tx => {
                let (src, sport, dst, dport, proto) = flow_of(&row.frame);
                let backend = f.expected_backend(src, sport, dst, dport, proto);
                let mut want = row.frame.clone();
                want[..6].copy_from_slice(&backend.mac);
                want[6..12].copy_from_slice(&LB_MAC);
                (XDP_TX, want, Reason::Forwarded)
            }
            Expect::TxFor(reason, (src, sport, dst, dport, proto)) => {
                let backend = f.expected_backend(src, sport, dst, dport, proto);
                let mut want = row.frame.clone();
                want[..6].copy_from_slice(&backend.mac);
                want[6..12].copy_from_slice(&LB_MAC);
                (XDP_TX, want, reason)
            }
            Expect::Untouched(v, reason) => (v, row.frame.clone(), reason),
        };
        let counted: Vec<&str> = Reason::ALL
            .iter()
            .filter(|r| after[**r as usize].1.packets != before[**r as usize].1.packets)
            .map(|r| r.name())
            .collect();
        if verdict != want_verdict || out != want_frame || counted != [want_reason.name()] {
            failures.push(format!(
                "{}: verdict {} (want {}), frame {}, counted {:?} (want [{:?}])",
                row.what,
                verdict_name(verdict),
                verdict_name(want_verdict),
                if out == want_frame {
                    "as expected"
                } else {
                    "DIFFERS"
                },
                counted,
                want_reason.name()
            ));
        }
    }
    assert!(failures.is_empty(), "rows failed:\n{}", failures.join("\n"));
}

#[test]
fn many_flows_land_where_userspace_predicts() {
    let f = Fixture::new();
    let mut per_backend = [0u32; 3];
    for i in 0..3000u16 {
        let (client, vip): (IpAddr, IpAddr) = if i % 2 == 0 {
            (
                IpAddr::V4(Ipv4Addr::new(198, 18, 7, (i % 251) as u8)),
                VIP4.into(),
            )
        } else {
            (
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 7, 0, 0, 0, 0, i)),
                VIP6.into(),
            )
        };
        let sport = 1024 + i.wrapping_mul(7919) % 60000;
        let frame = frames::flow_frame(LB_MAC, CLIENT_MAC, client, sport, vip, 80, TCP);
        let (verdict, out) = run(f.dp.program(), &frame, LO);
        assert_eq!(verdict, XDP_TX, "flow {i}");
        let want = f.expected_backend(client, sport, vip, 80, TCP);
        assert_eq!(
            out[..6],
            want.mac,
            "flow {i} ({client}:{sport}) went to the wrong backend"
        );
        assert_eq!(
            out[12..],
            frame[12..],
            "flow {i}: bytes past the MACs changed"
        );
        // VIP 0's backends have ids 0..3, VIP 2's (the IPv6 VIP) 6..9: same weights.
        per_backend[want.id as usize % 3] += 1;
    }
    // Weights 1:2:1 => 25% / 50% / 25% of 3000 flows, within 15% of each share.
    for (id, (&n, w)) in per_backend.iter().zip([750.0, 1500.0, 750.0]).enumerate() {
        assert!(
            (n as f64 / w - 1.0).abs() < 0.15,
            "backend {id} got {n} of 3000 flows"
        );
    }
    // Per-VIP and per-backend counters saw every packet.
    let vip_packets: u64 = [0, 2]
        .iter()
        .map(|&id| f.dp.vip_totals(id).unwrap().packets)
        .sum();
    assert_eq!(vip_packets, 3000);
    let backend_packets: Vec<u64> = (0..3)
        .map(|id| {
            f.dp.backend_totals(id).unwrap().packets + f.dp.backend_totals(id + 6).unwrap().packets
        })
        .collect();
    assert_eq!(backend_packets, per_backend.map(u64::from).to_vec());
}

#[test]
fn table_switch_takes_effect_and_reads_back() {
    let mut f = Fixture::new();
    let key = vip(VIP4, 80, Protocol::Tcp, 0);
    let first = f.dp.table(&key).unwrap();
    assert_eq!(first, f.table(&[1, 2, 1]));
    // Drain everything to backend 2: every flow must now go there.
    let only_two = f.table(&[0, 0, 1]);
    f.set_vip(0, &[0, 0, 1], VipOptions::default());
    assert_eq!(f.dp.table(&key).unwrap(), only_two);
    for sport in 2000..2100 {
        let frame = frames::flow_frame(
            LB_MAC,
            CLIENT_MAC,
            CLIENT4.into(),
            sport,
            VIP4.into(),
            80,
            TCP,
        );
        let (verdict, out) = run(f.dp.program(), &frame, LO);
        assert_eq!((verdict, &out[..6]), (XDP_TX, &f.backends[2].mac[..]));
    }
    // And back again, through the other row.
    f.set_vip(0, &[1, 2, 1], VipOptions::default());
    assert_eq!(f.dp.table(&key).unwrap(), first);
    // A backend entry invalidated under a table drops rather than sending to a zero MAC.
    for id in 0..3 {
        f.set_backend(id, |b| b.mac = None);
    }
    let (verdict, _) = run(f.dp.program(), &v4(TCP, VIP4, 80), LO);
    assert_eq!(verdict, XDP_DROP);
}

/// A switch the data path has no room for changes nothing: the VIP keeps its old table and
/// the backends that table names (backend 0, no longer wanted), and it is retried until room
/// appears. The room is taken by a table written past the writer, as a stand-in for any
/// write the kernel refuses.
#[test]
fn a_switch_without_room_keeps_the_old_table_and_what_it_names() {
    let mut f = Fixture::new();
    let key = vip(VIP4, 80, Protocol::Tcp, 0);
    let on_zero = flows_on(&f, 0, 1)[0];
    let usage = f.dp.table_usage();
    let free = usage.budget_slots - usage.used_slots;
    assert_eq!(
        usage.largest_free_slots, free,
        "the fixture's tables lie packed"
    );
    // Everything but one chunk: far less than VIP 0's next table needs.
    let filler = vip(Ipv4Addr::new(198, 18, 1, 1), 80, Protocol::Tcp, 0);
    let filler_table = vec![1u32; (free - u64::from(TABLE_CHUNK)) as usize];
    f.dp.set_vip(&filler, 15, &filler_table, VipOptions::default())
        .unwrap_or_else(|e| panic!("{e:#}"));

    f.desired.backends.remove(&0);
    f.desired.vips.get_mut(&key).unwrap().entries = f.entries(0, &[0, 2, 1]);
    for attempt in 0..2 {
        let err = f
            .writer
            .apply_all(&mut f.dp, &f.desired)
            .expect_err("no room for VIP 0's new table");
        assert!(
            format!("{err:#}").contains("no room in TABLES for VIP 198.18.0.100:80/tcp"),
            "attempt {attempt}: {err:#}"
        );
        assert_eq!(f.dp.table(&key).unwrap(), f.expected, "the old table stays");
        assert!(
            valid(&f, 0),
            "attempt {attempt}: the old table still names backend 0"
        );
        assert_eq!(backend_of(&f, &flow(on_zero)), Some(0));
    }

    f.dp.delete_vip_key(&dsr::datapath::vip_key(&filler))
        .unwrap();
    f.writer
        .apply_all(&mut f.dp, &f.desired)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(f.dp.table(&key).unwrap(), f.table(&[0, 2, 1]));
    assert!(!valid(&f, 0), "cleared once no table names it");
    assert_ne!(backend_of(&f, &flow(on_zero)), Some(0));

    // An entry the writer did not write is the kernel's all the same: a backend its table
    // names stays until it is gone.
    let stray = vip(Ipv4Addr::new(198, 18, 1, 2), 80, Protocol::Tcp, 0);
    f.dp.set_vip(&stray, 15, &[2u32; 251], VipOptions::default())
        .unwrap_or_else(|e| panic!("{e:#}"));
    f.desired.backends.remove(&2);
    f.desired.vips.get_mut(&key).unwrap().entries = f.entries(0, &[0, 1, 0]);
    f.apply();
    assert_eq!(f.dp.table(&key).unwrap(), f.table(&[0, 1, 0]));
    assert!(valid(&f, 2), "the stray entry's table names backend 2");
    f.dp.delete_vip_key(&dsr::datapath::vip_key(&stray))
        .unwrap();
    f.apply();
    assert!(!valid(&f, 2), "cleared once that entry is gone");
}

/// A switch that half-fails (the VIP's entry written, its fragment entry refused because
/// VIPS is full) is reported, judged by what the kernel now holds, and completed by the next
/// apply: the fragment entry then points at the VIP's new table.
#[test]
fn a_half_written_switch_is_completed_next_time() {
    let mut f = Fixture::new();
    let key = vip(VIP4, 80, Protocol::Tcp, 0);
    let alias = dsr::datapath::vip_key(&vip(VIP4, 0, Protocol::Tcp, 0));
    let on_zero = flows_on(&f, 0, 1)[0];
    let non_first = {
        let seg = frames::tcp(40000, 80, &[7u8; 32]);
        frames::ethernet(
            LB_MAC,
            CLIENT_MAC,
            ETH_P_IPV4,
            &frames::ipv4_frag(CLIENT4, VIP4, TCP, &[], 0x0003, &seg),
        )
    };
    // VIPS full (twice max_vips entries) with entries the writer never wrote.
    let held = f.dp.held_vips().unwrap().len() as u32;
    let fillers: Vec<VipAddr> = (0..2 * f.dp.sizes().max_vips - held)
        .map(|i| vip(Ipv4Addr::new(198, 18, 2, i as u8), 80, Protocol::Tcp, 0))
        .collect();
    for a in &fillers {
        f.dp.set_vip(a, 15, &[], VipOptions::default())
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    // VIP 0 starts taking fragments (so hashes no ports, as validation requires), without
    // backend 0.
    f.desired.backends.remove(&0);
    let options = VipOptions {
        fragments: true,
        hash_fields: HASH_ALL & !HASH_PORTS,
        ..f.vips[0].1
    };
    f.vips[0].1 = options;
    let entries = f.entries(0, &[0, 2, 1]);
    let v = f.desired.vips.get_mut(&key).unwrap();
    (v.options, v.entries) = (options, entries);
    let err = f
        .writer
        .apply_all(&mut f.dp, &f.desired)
        .expect_err("no room in VIPS for the fragment entry");
    assert!(
        format!("{err:#}").contains("writing the fragment entry of VIP 198.18.0.100:80/tcp"),
        "{err:#}"
    );
    assert_eq!(
        f.dp.table(&key).unwrap(),
        f.table(&[0, 2, 1]),
        "the VIP's own entry switched"
    );
    assert!(f.dp.vip_info(&alias).is_none());
    assert!(
        !valid(&f, 0),
        "the table the kernel holds names backend 0 no more"
    );
    assert_ne!(backend_of(&f, &flow(on_zero)), Some(0));
    let (verdict, _) = run(f.dp.program(), &non_first, LO);
    assert_eq!(verdict, XDP_PASS, "no fragment entry yet");

    for a in &fillers {
        f.dp.delete_vip_key(&dsr::datapath::vip_key(a)).unwrap();
    }
    f.writer
        .apply_all(&mut f.dp, &f.desired)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let (main, frag) = (
        f.dp.vip_info(&dsr::datapath::vip_key(&key)).unwrap(),
        f.dp.vip_info(&alias)
            .expect("the fragment entry, written now"),
    );
    assert_eq!(
        (frag.id, frag.table_base, frag.table_size),
        (main.id, main.table_base, main.table_size),
        "on the VIP's new table"
    );
    assert!(f.writer.missing(&f.desired).is_empty());
    let (verdict, out) = run(f.dp.program(), &non_first, LO);
    assert_eq!(verdict, XDP_TX, "fragments forwarded now");
    assert_ne!(&out[..6], &f.backends[0].mac[..]);
}

/// The daemon builds large tables off its loop and writes what is ready: a VIP whose new
/// table is not built yet keeps forwarding by its old one, the backend that table still names
/// keeps its entry and its TX port (while another VIP's leftovers go), and a new VIP is not a
/// VIP to the data path until its table is written.
#[test]
fn a_vip_waiting_for_its_table_keeps_the_old_one_and_what_it_names() {
    let mut f = Fixture::new();
    let key = vip(VIP4, 80, Protocol::Tcp, 0);
    let other = f.vips[1].0;
    let on_zero = flows_on(&f, 0, 1)[0];
    // Backends 0 (of VIP 0) and 3 (of VIP 1) sit behind TX ports 3 and 4.
    for (id, port) in [(0, 3), (3, 4)] {
        f.desired.tx_ports.insert(port, LO);
        f.set_backend(id, |b| {
            b.egress = Some(Egress {
                port,
                src_mac: MacAddr([0x02, 0xee, 0, 0, 0, port as u8]),
            })
        });
    }
    // Backend 0 leaves VIP 0, backend 3 leaves VIP 1 (their ports with them), and a VIP with
    // a backend of its own arrives.
    f.desired.backends.remove(&0);
    f.desired.backends.remove(&3);
    f.desired.tx_ports.clear();
    f.desired.vips.get_mut(&key).unwrap().entries = f.entries(0, &[0, 2, 1]);
    f.desired.vips.get_mut(&other).unwrap().entries = f.entries(1, &[0, 2, 1]);
    let new_vip = vip(Ipv4Addr::new(198, 18, 0, 106), 80, Protocol::Tcp, 0);
    let new_mac = [0x02, 0xbe, 0, 10, 0, 0x11];
    f.desired.backends.insert(
        40,
        DesiredBackend {
            vip_id: 10,
            mac: Some(MacAddr(new_mac)),
            keep_flows: true,
            egress: None,
        },
    );
    f.desired.vips.insert(
        new_vip,
        DesiredVip {
            id: 10,
            table_size: 251,
            entries: vec![maglev::Entry {
                address: Ipv4Addr::new(198, 18, 10, 11).into(),
                id: 40,
                weight: 1,
            }],
            standby: Vec::new(),
            configured_entries: None,
            options: VipOptions::default(),
        },
    );
    let to_new = frames::flow_frame(
        LB_MAC,
        CLIENT_MAC,
        CLIENT4.into(),
        4000,
        new_vip.address,
        80,
        TCP,
    );

    let ports = |f: &Fixture| -> Vec<u32> { f.dp.held_tx_ports().iter().map(|p| p.0).collect() };
    let addrs = f.dp.held_vip_addrs().unwrap().len();
    let applied = f.writer.apply(&mut f.dp, &f.desired);
    assert!(applied.errors.is_empty(), "{:?}", applied.errors);
    assert!(applied.tables.is_empty(), "{:?}", applied.tables);
    assert_eq!(f.writer.waiting, 3);
    assert!(
        valid(&f, 0) && valid(&f, 3),
        "the old tables still name them"
    );
    assert_eq!(
        ports(&f),
        [3, 4],
        "their backends still go out through them"
    );

    // VIP 1's table is built first: its leftovers go while VIP 0 still waits.
    let first: Vec<_> = f
        .writer
        .missing(&f.desired)
        .into_iter()
        .filter(|r| r.vip == other)
        .collect();
    let built = dsr::datapath::writer::build(first, f.dp.hash_seed());
    f.writer.add_built(built);
    let applied = f.writer.apply(&mut f.dp, &f.desired);
    assert!(applied.errors.is_empty(), "{:?}", applied.errors);
    assert_eq!((applied.tables.len(), f.writer.waiting), (1, 2));
    assert!(!valid(&f, 3), "no table names backend 3 now");
    assert!(valid(&f, 0), "VIP 0's old table still names backend 0");
    assert_eq!(ports(&f), [3], "backend 0 still goes out through port 3");
    let (verdict, out) = run(f.dp.program(), &flow(on_zero), LO);
    assert_eq!(verdict_name(verdict), "REDIRECT");
    assert_eq!(out[..6], f.backends[0].mac);
    assert_eq!(
        f.dp.held_vip_addrs().unwrap().len(),
        addrs,
        "no VIP_ADDRS entry yet"
    );
    assert_eq!(f.dp.table(&key).unwrap(), f.expected, "the old table stays");
    let (verdict, out) = run(f.dp.program(), &flow(on_zero), LO);
    assert_eq!(
        verdict_name(verdict),
        "REDIRECT",
        "out through port 3 still"
    );
    assert_eq!(out[..6], f.backends[0].mac);
    let (verdict, _) = run(f.dp.program(), &to_new, LO);
    assert_eq!(verdict, XDP_PASS, "no VIP before its table");

    let missing = f.writer.missing(&f.desired);
    assert_eq!(missing.len(), 2, "{missing:?}");
    let built = dsr::datapath::writer::build(missing, f.dp.hash_seed());
    f.writer.add_built(built);
    let applied = f.writer.apply(&mut f.dp, &f.desired);
    assert!(applied.errors.is_empty(), "{:?}", applied.errors);
    assert_eq!(applied.tables.len(), 2, "{:?}", applied.tables);
    assert_eq!(f.writer.waiting, 0);
    assert!(f.writer.missing(&f.desired).is_empty());
    assert_eq!(f.dp.table(&key).unwrap(), f.table(&[0, 2, 1]));
    assert!(!valid(&f, 0), "cleared once no table names it");
    assert!(ports(&f).is_empty(), "and its port with it");
    assert_eq!(f.dp.held_vip_addrs().unwrap().len(), addrs + 1);
    let (verdict, out) = run(f.dp.program(), &to_new, LO);
    assert_eq!((verdict, &out[..6]), (XDP_TX, &new_mac[..]));

    // Changes faster than builds: a build that arrives after the VIP changed again is still
    // written (it is newer than the kernel's table), then the newest one.
    let weights = |f: &mut Fixture, w: &[u32]| {
        let e = f.entries(0, w);
        f.desired.vips.get_mut(&key).unwrap().entries = e;
    };
    weights(&mut f, &[0, 1, 1]);
    let first = dsr::datapath::writer::build(f.writer.missing(&f.desired), f.dp.hash_seed());
    weights(&mut f, &[0, 1, 3]);
    f.writer.add_built(first);
    let applied = f.writer.apply(&mut f.dp, &f.desired);
    assert_eq!((applied.tables.len(), f.writer.waiting), (1, 1));
    assert_eq!(f.dp.table(&key).unwrap(), f.table(&[0, 1, 1]));
    f.writer
        .apply_all(&mut f.dp, &f.desired)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(f.dp.table(&key).unwrap(), f.table(&[0, 1, 3]));
    weights(&mut f, &[0, 2, 2]);
    let late = dsr::datapath::writer::build(f.writer.missing(&f.desired), f.dp.hash_seed());
    weights(&mut f, &[0, 1, 3]);
    assert!(
        f.writer.missing(&f.desired).is_empty(),
        "back to the written table"
    );
    // An older build arriving after a newer table was written is never written over it.
    weights(&mut f, &[0, 3, 1]);
    f.writer.add_built(late);
    let applied = f.writer.apply(&mut f.dp, &f.desired);
    assert_eq!((applied.tables.len(), f.writer.waiting), (0, 1));
    assert_eq!(f.dp.table(&key).unwrap(), f.table(&[0, 1, 3]));

    // A build for a backend that came up and went down again while it ran is not written:
    // it would give new flows to a backend neither taking them now nor in the kernel's table.
    weights(&mut f, &[0, 0, 1]);
    f.apply();
    weights(&mut f, &[0, 1, 1]);
    let came_up = dsr::datapath::writer::build(f.writer.missing(&f.desired), f.dp.hash_seed());
    weights(&mut f, &[0, 0, 2]);
    f.writer.add_built(came_up);
    let applied = f.writer.apply(&mut f.dp, &f.desired);
    assert_eq!((applied.tables.len(), f.writer.waiting), (0, 1));
    assert_eq!(f.dp.table(&key).unwrap(), f.table(&[0, 0, 1]));

    // After a restart the writer knows none of the tables in the kernel: theirs say what a
    // waiting VIP still names (backend 2, the only one VIP 0's table names).
    f.writer = Writer::read(&f.dp).unwrap();
    f.desired.backends.remove(&2);
    weights(&mut f, &[0, 1, 0]);
    let applied = f.writer.apply(&mut f.dp, &f.desired);
    assert!(applied.tables.is_empty(), "{:?}", applied.tables);
    assert!(valid(&f, 2), "the kernel's table still names backend 2");
    f.apply();
    assert_eq!(f.dp.table(&key).unwrap(), f.table(&[0, 1, 0]));
    assert!(!valid(&f, 2), "cleared once no table names it");
}

#[test]
fn unconfigured_interface_passes_everything() {
    let mut dp = Datapath::load(&options(2, 2, 251, Duration::from_secs(300))).unwrap();
    let mut desired = Desired::default();
    desired.backends.insert(
        0,
        DesiredBackend {
            vip_id: 0,
            mac: Some(MacAddr([2, 0, 0, 0, 0, 1])),
            keep_flows: true,
            egress: None,
        },
    );
    desired.vips.insert(
        vip(VIP4, 80, Protocol::Tcp, 0),
        DesiredVip {
            id: 0,
            table_size: 251,
            entries: vec![maglev::Entry {
                address: Ipv4Addr::new(198, 18, 0, 11).into(),
                id: 0,
                weight: 1,
            }],
            standby: Vec::new(),
            configured_entries: None,
            options: VipOptions::default(),
        },
    );
    Writer::read(&dp)
        .unwrap()
        .apply_all(&mut dp, &desired)
        .unwrap();
    // No IFACES entry for lo: the program must not guess a MAC; it passes.
    let frame = v4(TCP, VIP4, 80);
    let (verdict, out) = run(dp.program(), &frame, LO);
    assert_eq!((verdict, out), (XDP_PASS, frame));
    let reasons = dp.reason_totals().unwrap();
    assert_eq!(reasons[Reason::NotConfigured as usize].1.packets, 1);
}

/// A frame of a TCP flow from the client's `sport` to the IPv4 VIP's port 80.
fn flow(sport: u16) -> Vec<u8> {
    frames::flow_frame(
        LB_MAC,
        CLIENT_MAC,
        CLIENT4.into(),
        sport,
        VIP4.into(),
        80,
        TCP,
    )
}

/// Whether BACKENDS holds a valid entry `id` (one a table may send to).
fn valid(f: &Fixture, id: u32) -> bool {
    f.dp.backend_entry(id)
        .is_some_and(|b| b.flags & BACKEND_F_VALID != 0)
}

/// Source ports of flows that the 1:2:1 table puts on `backend`.
fn flows_on(f: &Fixture, backend: usize, n: usize) -> Vec<u16> {
    (10000..)
        .filter(|&p| {
            f.expected_backend(CLIENT4.into(), p, VIP4.into(), 80, TCP)
                .id as usize
                == backend
        })
        .take(n)
        .collect()
}

fn backend_of(f: &Fixture, frame: &[u8]) -> Option<usize> {
    let (verdict, out) = run(f.dp.program(), frame, LO);
    assert_eq!(verdict, XDP_TX, "flow not forwarded");
    f.backends.iter().position(|b| out[..6] == b.mac)
}

/// Each VIP's table has a size of its own in the shared TABLES map: a resize is one switch
/// to a table of the new size, which new flows follow at once, and the elements the old table
/// took are freed (the VIPS entries are the truth: a data path loaded again sees the same).
#[test]
fn each_vip_has_a_table_of_its_own_size() {
    let mut f = Fixture::new();
    let addr = f.vips[0].0;
    let used = |f: &Fixture| f.dp.table_usage().used_slots;
    let before = used(&f);
    let mut ports = 20000u16..;
    for size in [251u32, 1009, 1_300_021, DEFAULT_TABLE_SIZE] {
        f.resize(0, size).unwrap();
        let table = f.dp.table(&addr).unwrap();
        assert_eq!(table.len(), size as usize);
        assert_eq!(table, {
            let d = &f.desired.vips[&addr];
            maglev::build_around(&d.entries, &d.standby, size)
        });
        let info = f.dp.vip_info(&dsr::datapath::vip_key(&addr)).unwrap();
        assert_eq!(info.table_size, size);
        // New flows (fresh ports: tracked flows keep their backends) follow the new table.
        for p in ports.by_ref().take(48) {
            let want = f.predict(0, CLIENT4.into(), p, VIP4.into(), 80, TCP).id as usize;
            assert_eq!(
                backend_of(&f, &flow(p)),
                Some(want),
                "{size} slots, port {p}"
            );
        }
        // The other VIPs' tables are untouched, and only VIP 0's share changed.
        assert_eq!(
            f.dp.table(&f.vips[1].0).unwrap().len(),
            DEFAULT_TABLE_SIZE as usize
        );
        let chunk = |s: u32| s.div_ceil(dsr_common::TABLE_CHUNK) as u64 * 16;
        assert_eq!(
            used(&f),
            before - chunk(DEFAULT_TABLE_SIZE) + chunk(size),
            "{size} slots"
        );
    }
}

/// A table that does not fit what is left of `table_budget` is refused with the reason, and
/// the VIP keeps forwarding with the table it had.
#[test]
fn a_table_beyond_the_budget_changes_nothing() {
    let mut opts = options(16, 64, DEFAULT_TABLE_SIZE, Duration::from_secs(300));
    // Room for the fixture's tables and one more of 65537 slots.
    opts.sizes.table_budget = (VIPS as u32 + 1) * DEFAULT_TABLE_SIZE.div_ceil(16) * 16;
    let mut f = Fixture::with_options(opts);
    let addr = f.vips[0].0;
    let old = f.dp.table(&addr).unwrap();
    let e = f.resize(0, 1_300_021).unwrap_err().to_string();
    assert!(
        e.contains("no room in TABLES") && e.contains("table_budget"),
        "{e}"
    );
    assert_eq!(f.dp.table(&addr).unwrap(), old);
    for p in 21000..21016u16 {
        let id = old[(flow_hash(
            &FlowKey::new(CLIENT4.into(), p, VIP4.into(), 80, TCP),
            DEFAULT_HASH_SEED,
        ) % DEFAULT_TABLE_SIZE) as usize];
        assert_eq!(backend_of(&f, &flow(p)), Some(id as usize), "port {p}");
    }
    // What fits still goes in (the freed run of the old table waits out its cooling).
    f.resize(0, 65521).unwrap();
    f.resize(0, DEFAULT_TABLE_SIZE).unwrap();
    assert_eq!(
        f.dp.table(&addr).unwrap().len(),
        DEFAULT_TABLE_SIZE as usize
    );
}

/// Free space cut into holes too small for a table is merged by moving other VIPs' tables
/// (each move a switch like any other): the table goes in, and every VIP keeps its table.
#[test]
fn tables_move_to_make_room_in_a_fragmented_budget() {
    let mut opts = options(16, 64, DEFAULT_TABLE_SIZE, Duration::from_secs(300));
    let chunks = DEFAULT_TABLE_SIZE.div_ceil(16);
    opts.sizes.table_budget = (VIPS as u32 + 1) * chunks * 16;
    let mut f = Fixture::with_options(opts);
    // VIP 1 shrinks: its new table goes to the free end, its old run becomes a hole in the
    // middle. Free now: that hole and what is left at the end, neither 9376 chunks long.
    f.resize(1, 251).unwrap();
    let usage = f.dp.table_usage();
    let free = usage.budget_slots - usage.used_slots;
    assert!(
        free >= 150_001 && usage.largest_free_slots < 150_001,
        "{usage:?}"
    );
    f.resize(0, 150_001).unwrap();
    for (v, size) in [
        (0, 150_001),
        (1, 251),
        (2, DEFAULT_TABLE_SIZE),
        (9, DEFAULT_TABLE_SIZE),
    ] {
        let addr = f.vips[v].0;
        let want = {
            let d = &f.desired.vips[&addr];
            maglev::build_around(&d.entries, &d.standby, size)
        };
        assert_eq!(f.dp.table(&addr).unwrap(), want, "VIP {v}'s table");
    }
    for p in 22000..22032u16 {
        let want = f.predict(0, CLIENT4.into(), p, VIP4.into(), 80, TCP).id as usize;
        assert_eq!(backend_of(&f, &flow(p)), Some(want), "port {p}");
    }
}

#[test]
fn established_flows_stay_while_their_backend_keeps_them() {
    let mut f = Fixture::new();
    let on_one = flows_on(&f, 1, 20);
    for &p in &on_one {
        assert_eq!(backend_of(&f, &flow(p)), Some(1));
    }
    // Backend 1 drains: out of the table, still keeping flows.
    f.set_vip(0, &[1, 0, 1], VipOptions::default());
    for &p in &on_one {
        assert_eq!(
            backend_of(&f, &flow(p)),
            Some(1),
            "established flow {p} left a draining backend"
        );
    }
    for p in 30000..30200 {
        assert_ne!(
            backend_of(&f, &flow(p)),
            Some(1),
            "new flow {p} sent to a draining backend"
        );
    }
    // Backend 1 fails: it no longer keeps flows; they go where the table says now, and the
    // flow entry follows.
    f.set_backend(1, |b| b.keep_flows = false);
    let now_table = f.table(&[1, 0, 1]);
    for &p in &on_one {
        let k = f.flow_key(0, CLIENT4.into(), p, VIP4.into(), 80, TCP);
        let hashed = k.flow(addr_words(VIP4.into()), TCP, f.vips[0].1.hash_fields);
        let want =
            now_table[(flow_hash(&hashed, DEFAULT_HASH_SEED) % now_table.len() as u32) as usize];
        assert_eq!(
            backend_of(&f, &flow(p)),
            Some(want as usize),
            "flow {p} of a failed backend"
        );
        assert_eq!(f.dp.flow(&k).map(|e| e.backend), Some(want));
    }
}

#[test]
fn idle_flows_are_forgotten() {
    let mut f = Fixture::with_idle(Duration::from_millis(200));
    let on_one = flows_on(&f, 1, 5);
    for &p in &on_one {
        backend_of(&f, &flow(p));
    }
    f.set_vip(0, &[1, 0, 1], VipOptions::default());
    for &p in &on_one {
        assert_eq!(backend_of(&f, &flow(p)), Some(1));
    }
    std::thread::sleep(Duration::from_millis(500));
    for &p in &on_one {
        assert_ne!(
            backend_of(&f, &flow(p)),
            Some(1),
            "flow {p} outlived its idle timeout"
        );
    }
}

#[test]
fn untracked_vip_follows_the_table_alone() {
    let mut f = Fixture::new();
    f.set_vip(
        0,
        &[1, 2, 1],
        VipOptions {
            conntrack: false,
            ..VipOptions::default()
        },
    );
    let on_one = flows_on(&f, 1, 10);
    for &p in &on_one {
        assert_eq!(backend_of(&f, &flow(p)), Some(1));
        let k = f.flow_key(0, CLIENT4.into(), p, VIP4.into(), 80, TCP);
        assert_eq!(f.dp.flow(&k), None, "untracked VIP created a flow entry");
    }
    f.set_vip(
        0,
        &[1, 0, 1],
        VipOptions {
            conntrack: false,
            ..VipOptions::default()
        },
    );
    for &p in &on_one {
        assert_ne!(backend_of(&f, &flow(p)), Some(1));
    }
    assert_eq!(f.dp.vip_totals(0).unwrap().flows, 0);
}

#[test]
fn new_flows_are_counted_once() {
    let f = Fixture::new();
    for _ in 0..3 {
        for p in 50000..50010 {
            backend_of(&f, &flow(p));
        }
    }
    let vip = f.dp.vip_totals(0).unwrap();
    assert_eq!((vip.packets, vip.flows), (30, 10));
    let per_backend: u64 = (0..3)
        .map(|id| f.dp.backend_totals(id).unwrap().flows)
        .sum();
    assert_eq!(per_backend, 10);
}

#[test]
fn source_affinity_keeps_a_client_on_one_backend() {
    let f = Fixture::new();
    let mut seen = std::collections::HashSet::new();
    let mut clients = std::collections::HashSet::new();
    for c in 1..60u8 {
        let client = Ipv4Addr::new(198, 18, 3, c);
        let mut mine = std::collections::HashSet::new();
        for sport in [1000u16, 2000, 30000, 40000, 65000] {
            let frame = frames::flow_frame(
                LB_MAC,
                CLIENT_MAC,
                client.into(),
                sport,
                VIP4_AFFINITY.into(),
                80,
                TCP,
            );
            let (verdict, out) = run(f.dp.program(), &frame, LO);
            assert_eq!(verdict, XDP_TX);
            mine.insert(out[..6].to_vec());
        }
        assert_eq!(
            mine.len(),
            1,
            "client {client} spread over {} backends",
            mine.len()
        );
        seen.extend(mine);
        clients.insert(client);
    }
    assert_eq!(seen.len(), 3, "59 clients should reach all three backends");
}

#[test]
fn icmp_errors_follow_flows_without_creating_them() {
    let f = Fixture::new();
    // The flow exists: the ICMP goes where its packets went.
    let frame = frames::flow_frame(
        LB_MAC,
        CLIENT_MAC,
        CLIENT4.into(),
        40555,
        VIP4.into(),
        80,
        TCP,
    );
    let (_, out) = run(f.dp.program(), &frame, LO);
    let (verdict, icmp_out) = run(f.dp.program(), &icmp4_too_big(VIP4, 80, CLIENT4, 40555), LO);
    assert_eq!((verdict, &icmp_out[..6]), (XDP_TX, &out[..6]));
    // No flow: the ICMP is placed by the table and leaves no flow entry behind.
    let (verdict, _) = run(f.dp.program(), &icmp4_too_big(VIP4, 80, CLIENT4, 40556), LO);
    assert_eq!(verdict, XDP_TX);
    let k = f.flow_key(0, CLIENT4.into(), 40556, VIP4.into(), 80, TCP);
    assert_eq!(f.dp.flow(&k), None);
    assert_eq!(f.dp.vip_totals(0).unwrap().flows, 1);
}

#[test]
fn backends_behind_another_interface_are_redirected() {
    let mut f = Fixture::new();
    // Backend 1 sits behind interface 1 (lo here; a real deployment's eth1), TX port 3.
    let egress_mac = MacAddr([0x02, 0xee, 0, 0, 0, 0x01]);
    f.desired.tx_ports.insert(3, LO);
    f.set_backend(1, |b| {
        b.egress = Some(Egress {
            port: 3,
            src_mac: egress_mac,
        })
    });
    let on_one = flows_on(&f, 1, 5);
    for p in on_one {
        let frame = flow(p);
        let (verdict, out) = run(f.dp.program(), &frame, LO);
        assert_eq!(verdict_name(verdict), "REDIRECT", "flow {p}");
        assert_eq!(out[..6], f.backends[1].mac);
        assert_eq!(
            out[6..12],
            egress_mac.0,
            "source MAC must be the egress interface's"
        );
        assert_eq!(out[12..], frame[12..]);
    }
    // Backends on the receiving interface still go out with XDP_TX.
    let p = flows_on(&f, 0, 1)[0];
    assert_eq!(run(f.dp.program(), &flow(p), LO).0, XDP_TX);
}

#[test]
fn vip_filter_collisions_fall_back_to_the_exact_lookup() {
    let f = Fixture::new();
    let vip_bit = dsr_common::vip_filter_bit(&dsr_common::addr_words(VIP4.into()));
    // Another address whose filter bit is the VIP's: the filter lets it through, VIP_ADDRS
    // must still say "no VIP".
    let twin = (0..=u32::MAX)
        .map(|i| Ipv4Addr::from(0x0a00_0000u32.wrapping_add(i)))
        .find(|a| {
            *a != VIP4
                && dsr_common::vip_filter_bit(&dsr_common::addr_words((*a).into())) == vip_bit
        })
        .expect("a colliding address");
    let (verdict, out) = run(f.dp.program(), &v4(TCP, twin, 80), LO);
    assert_eq!(
        (verdict, out),
        (XDP_PASS, v4(TCP, twin, 80)),
        "{twin} collides with {VIP4}"
    );
    // And the VIP itself still forwards.
    assert_eq!(run(f.dp.program(), &v4(TCP, VIP4, 80), LO).0, XDP_TX);
}

#[test]
fn flow_entries_belong_to_their_vip() {
    // Two source-hashed VIPs on one address: tcp :80 (VIP 8, one backend) and udp :5353
    // (VIP 9, two others). A client's TCP connection to :80 must not take its datagrams to
    // :5353 to :80's backend.
    let f = Fixture::new();
    let client: IpAddr = Ipv4Addr::new(198, 18, 9, 1).into();
    let tcp = frames::flow_frame(LB_MAC, CLIENT_MAC, client, 40000, VIP4_SRC.into(), 80, TCP);
    let (verdict, out) = run(f.dp.program(), &tcp, LO);
    assert_eq!((verdict, &out[..6]), (XDP_TX, &f.all[8][0].mac[..]));
    for sport in 1000..1005 {
        let udp = frames::flow_frame(
            LB_MAC,
            CLIENT_MAC,
            client,
            sport,
            VIP4_SRC.into(),
            5353,
            UDP,
        );
        let (verdict, out) = run(f.dp.program(), &udp, LO);
        let want = f.predict(9, client, sport, VIP4_SRC.into(), 5353, UDP);
        assert_eq!(
            (verdict, &out[..6]),
            (XDP_TX, &want.mac[..]),
            "datagram from port {sport} to :5353 went to the wrong backend"
        );
    }
    // Each VIP holds its own entry for the client.
    let tcp_entry =
        f.dp.flow(&f.flow_key(8, client, 40000, VIP4_SRC.into(), 80, TCP));
    let udp_entry =
        f.dp.flow(&f.flow_key(9, client, 1000, VIP4_SRC.into(), 5353, UDP));
    assert_eq!(tcp_entry.map(|e| e.backend), Some(f.all[8][0].id));
    assert!(udp_entry.is_some_and(|e| f.all[9].iter().any(|b| b.id == e.backend)));
}

#[test]
fn vlans_have_flow_entries_of_their_own() {
    // VIP 0 takes any VLAN. A flow seen on VLAN 100 stays on its backend when it drains;
    // the same 5-tuple on VLAN 200 is another flow, placed by the new table.
    let mut f = Fixture::new();
    let on_one = flows_on(&f, 1, 8);
    let tagged = |p: u16, vlan: u16| frames::tagged(&flow(p), 0x8100, vlan);
    for &p in &on_one {
        assert_eq!(backend_of(&f, &tagged(p, 100)), Some(1));
    }
    f.set_vip(0, &[1, 0, 1], VipOptions::default());
    for &p in &on_one {
        assert_eq!(
            backend_of(&f, &tagged(p, 100)),
            Some(1),
            "flow {p} on VLAN 100 left its backend"
        );
        assert_ne!(
            backend_of(&f, &tagged(p, 200)),
            Some(1),
            "flow {p} on VLAN 200 used VLAN 100's entry"
        );
    }
}

#[test]
fn a_flow_entry_is_followed_only_to_a_backend_of_its_vip() {
    let mut f = Fixture::new();
    let p = flows_on(&f, 1, 1)[0];
    assert_eq!(backend_of(&f, &flow(p)), Some(1));
    // Backend id 1 leaves VIP 0 and is given to VIP 5 at once (no quarantine): VIP 0's flow
    // entry still names id 1, and id 1 is valid and keeps flows.
    f.set_vip(0, &[1, 0, 1], VipOptions::default());
    f.set_backend(1, |b| b.vip_id = 5);
    let out = backend_of(&f, &flow(p));
    let now = f.predict(0, CLIENT4.into(), p, VIP4.into(), 80, TCP);
    assert_eq!(
        out,
        Some(now.id as usize),
        "VIP 0's flow followed its entry to VIP 5's backend"
    );
    let entry =
        f.dp.flow(&f.flow_key(0, CLIENT4.into(), p, VIP4.into(), 80, TCP));
    assert_eq!(
        entry.map(|e| e.backend),
        Some(now.id),
        "the entry follows the table's owner"
    );
}

#[test]
fn redirect_without_a_tx_port_is_a_counted_drop() {
    let mut f = Fixture::new();
    // Backend 1 sits behind TX port 7, which has no entry (its interface went away: the
    // kernel deletes the devmap entry).
    f.set_backend(1, |b| {
        b.egress = Some(Egress {
            port: 7,
            src_mac: MacAddr([0x02, 0xee, 0, 0, 0, 0x07]),
        })
    });
    let frame = flow(flows_on(&f, 1, 1)[0]);
    let (reasons, backend) = (
        f.dp.reason_totals().unwrap(),
        f.dp.backend_totals(1).unwrap(),
    );
    let (verdict, out) = run(f.dp.program(), &frame, LO);
    assert_eq!((verdict_name(verdict), out), ("DROP", frame));
    let after = f.dp.reason_totals().unwrap();
    let delta = |r: Reason| after[r as usize].1.packets - reasons[r as usize].1.packets;
    assert_eq!((delta(Reason::NoTxPort), delta(Reason::Forwarded)), (1, 0));
    assert_eq!(
        f.dp.backend_totals(1).unwrap(),
        backend,
        "a dropped frame counted on the backend"
    );
}

#[test]
fn resets_create_no_flow_and_mid_stream_segments_are_adopted() {
    let f = Fixture::new();
    let event = |e: Event| f.dp.event_totals().unwrap()[e as usize].1;
    let key = |p: u16| f.flow_key(0, CLIENT4.into(), p, VIP4.into(), 80, TCP);
    // The end of a connection another node carried: forwarded by the table, not remembered,
    // not a new flow.
    for (i, flags) in [TCP_RST, TCP_RST | TCP_ACK, TCP_FIN | TCP_ACK]
        .into_iter()
        .enumerate()
    {
        let p = 51000 + i as u16;
        let want = f.predict(0, CLIENT4.into(), p, VIP4.into(), 80, TCP);
        let (verdict, out) = run(f.dp.program(), &with_tcp_flags(flow(p), flags), LO);
        assert_eq!(
            (verdict, &out[..6]),
            (XDP_TX, &want.mac[..]),
            "flags {flags:#x}"
        );
        assert_eq!(
            f.dp.flow(&key(p)),
            None,
            "flags {flags:#x} created a flow entry"
        );
    }
    assert_eq!(event(Event::UntrackedClose), 3);
    assert_eq!(f.dp.vip_totals(0).unwrap().flows, 0);
    // A mid-stream segment (a connection taken over): remembered, counted as adopted.
    let (verdict, _) = run(f.dp.program(), &with_tcp_flags(flow(52000), TCP_ACK), LO);
    assert_eq!(verdict, XDP_TX);
    assert!(f.dp.flow(&key(52000)).is_some());
    assert_eq!(
        (event(Event::Adopted), f.dp.vip_totals(0).unwrap().flows),
        (1, 0)
    );
    // A SYN is a new flow.
    run(f.dp.program(), &flow(52001), LO);
    assert!(f.dp.flow(&key(52001)).is_some());
    assert_eq!(f.dp.vip_totals(0).unwrap().flows, 1);
    // A RST of an established flow follows its entry, like any of its packets.
    let entry = f.dp.flow(&key(52001)).unwrap().backend;
    let (verdict, out) = run(f.dp.program(), &with_tcp_flags(flow(52001), TCP_RST), LO);
    let mac = f.all[0].iter().find(|b| b.id == entry).unwrap().mac;
    assert_eq!((verdict, &out[..6]), (XDP_TX, &mac[..]));
    assert_eq!(
        event(Event::UntrackedClose),
        3,
        "a tracked RST is no untracked close"
    );
}

#[test]
fn a_full_flow_table_filled_from_one_cpu_keeps_every_flow() {
    // BPF_PROG_TEST_RUN runs the program on the calling CPU, as veth runs XDP on the sending
    // one: pin this thread, then send exactly flow_table_size new flows.
    // SAFETY: plain libc calls on a zeroed cpu_set_t for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set),
            0
        );
    }
    let f = Fixture::new();
    let n = 4096u32; // the fixture's flow_table_size
    let client = |i: u32| IpAddr::V4(Ipv4Addr::new(198, 20, (i / 250) as u8, (i % 250) as u8 + 1));
    for i in 0..n {
        let frame = frames::flow_frame(LB_MAC, CLIENT_MAC, client(i), 40000, VIP4.into(), 80, TCP);
        assert_eq!(run(f.dp.program(), &frame, LO).0, XDP_TX);
    }
    let kept = (0..n)
        .filter(|&i| {
            f.dp.flow(&f.flow_key(0, client(i), 40000, VIP4.into(), 80, TCP))
                .is_some()
        })
        .count();
    assert_eq!(
        kept, n as usize,
        "of {n} flows the table of {n} remembered {kept}"
    );
}

/// After a restart over pinned maps, which TABLES runs are in use is read from VIPS: the
/// writer finds every table already there and writes none, and a new table goes into free
/// chunks, never over an adopted one.
#[test]
fn an_adopted_data_path_keeps_its_tables_and_their_runs() {
    let dir = dsr::datapath::pin_dir(&format!("adopt-tables-{}", std::process::id()));
    let _ = dsr::datapath::remove_pinned(&dir);
    let mut opts = options(16, 64, DEFAULT_TABLE_SIZE, Duration::from_secs(300));
    opts.pin_dir = Some(dir.clone());
    let mut f = Fixture::with_options(opts.clone());
    f.resize(1, 251).unwrap();
    let (desired, vips) = (f.desired.clone(), f.vips.clone());
    let usage = f.dp.table_usage();
    let tables: Vec<Vec<u32>> = vips.iter().map(|(a, _)| f.dp.table(a).unwrap()).collect();
    drop(f);

    let mut dp = Datapath::load(&opts).expect("adopting the pinned maps");
    let mut writer = Writer::read(&dp).unwrap();
    let applied = writer.apply_all(&mut dp, &desired);
    let result = (|| {
        let applied = applied.map_err(|e| format!("{e:#}"))?;
        if !applied.tables.is_empty() {
            return Err(format!(
                "tables rewritten after adoption: {:?}",
                applied.tables
            ));
        }
        if dp.table_usage() != usage {
            return Err(format!("{:?} != {usage:?}", dp.table_usage()));
        }
        let mut grown = desired.clone();
        grown.vips.get_mut(&vips[0].0).unwrap().table_size = 1_300_021;
        writer
            .apply_all(&mut dp, &grown)
            .map_err(|e| format!("{e:#}"))?;
        for (i, (a, _)) in vips.iter().enumerate().skip(1) {
            if dp.table(a).unwrap() != tables[i] {
                return Err(format!("VIP {i}'s table changed"));
            }
        }
        Ok(())
    })();
    drop(dp);
    dsr::datapath::remove_pinned(&dir).unwrap();
    result.unwrap();
}

#[test]
fn pins_of_another_layout_are_refused_with_the_remedy() {
    let dir = dsr::datapath::pin_dir(&format!("layout-test-{}", std::process::id()));
    let _ = dsr::datapath::remove_pinned(&dir);
    let mut opts = options(2, 2, 251, Duration::from_secs(300));
    opts.pin_dir = Some(dir.clone());
    drop(Datapath::load(&opts).expect("a first load pins the maps"));
    // What a dsr of the previous layout would have left pinned.
    let settings = aya::maps::MapData::from_pin(dir.join(dsr_common::names::SETTINGS)).unwrap();
    let mut settings: aya::maps::Array<_, dsr_common::Settings> =
        aya::maps::Map::Array(settings).try_into().unwrap();
    let mut old = settings.get(&0, 0).unwrap();
    old.layout_version = dsr_common::LAYOUT_VERSION - 1;
    settings.set(0, old, 0).unwrap();
    drop(settings);
    let refused = Datapath::load(&opts).err().map(|e| format!("{e:#}"));
    dsr::datapath::remove_pinned(&dir).unwrap();
    let refused = refused.expect("pins of another layout were adopted");
    assert!(
        refused.contains(&format!("map layout {}", dsr_common::LAYOUT_VERSION - 1))
            && refused.contains("`dsr stop` removes the pinned data path"),
        "{refused}"
    );
}

#[test]
fn a_syn_flood_filling_the_flow_table_moves_no_established_flow() {
    // The fixture's flow table holds 4096 flows. Established flows first...
    let mut f = Fixture::new();
    let established: Vec<u16> = (20000..20200).collect();
    let mut first = Vec::new();
    for &p in &established {
        first.push(backend_of(&f, &flow(p)).expect("a backend of VIP 0"));
    }
    // ...then a flood of SYNs from random sources, five times what the table holds, evicts
    // (nearly) all of their entries.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..5 * 4096 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let src = Ipv4Addr::from((seed >> 32) as u32 | 0x0a00_0000);
        let frame = frames::flow_frame(
            LB_MAC,
            CLIENT_MAC,
            src.into(),
            seed as u16 | 1024,
            VIP4.into(),
            80,
            TCP,
        );
        run(f.dp.program(), &frame, LO);
    }
    let key = |p: u16| f.flow_key(0, CLIENT4.into(), p, VIP4.into(), 80, TCP);
    let evicted = established
        .iter()
        .filter(|&&p| f.dp.flow(&key(p)).is_none())
        .count();
    assert!(
        evicted > established.len() / 2,
        "the flood evicted only {evicted} entries"
    );
    // While the table is unchanged, an evicted flow is placed where it was: nothing moves.
    for (&p, &was) in established.iter().zip(&first) {
        assert_eq!(
            backend_of(&f, &with_tcp_flags(flow(p), TCP_ACK)),
            Some(was),
            "flow {p}"
        );
    }
    // Full table *and* a backend change: the flows of the drained backend whose entry the
    // flood evicted move (as for any flow without an entry); the others stay.
    for _ in 0..5 * 4096 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let frame = frames::flow_frame(
            LB_MAC,
            CLIENT_MAC,
            Ipv4Addr::from((seed >> 32) as u32 | 0x0a00_0000).into(),
            seed as u16 | 1024,
            VIP4.into(),
            80,
            TCP,
        );
        run(f.dp.program(), &frame, LO);
    }
    let on_one: Vec<u16> = established
        .iter()
        .zip(&first)
        .filter(|(_, b)| **b == 1)
        .map(|(p, _)| *p)
        .collect();
    let kept_entries = on_one
        .iter()
        .filter(|&&p| f.dp.flow(&key(p)).is_some())
        .count();
    f.set_vip(0, &[1, 0, 1], VipOptions::default());
    let stayed = on_one
        .iter()
        .filter(|&&p| backend_of(&f, &with_tcp_flags(flow(p), TCP_ACK)) == Some(1))
        .count();
    assert_eq!(
        stayed, kept_entries,
        "exactly the flows that kept their entry stay"
    );
    println!(
        "flood: {evicted} of {} established entries evicted; after a drain, {stayed} of {} \
         flows of the drained backend stayed (the others had lost their entry)",
        established.len(),
        on_one.len()
    );
}

#[test]
fn trace_records_each_decision_only_while_switched_on_and_as_filtered() {
    use dsr_common::{
        TRACE_F_BACKEND, TRACE_F_FLOW, TRACE_F_FLOW_HIT, TRACE_F_REMEMBERED, TRACE_F_SLOT,
        TRACE_F_VIP, TRACE_FILTER_CLIENT, TRACE_FILTER_VIP, TraceFilter, addr_words,
    };
    let mut f = Fixture::new();
    let (mut switch, mut ring) = f.dp.take_trace().expect("the trace maps");
    let drain = |ring: &mut dsr::datapath::trace::TraceRing| {
        std::iter::from_fn(|| ring.read().unwrap()).collect::<Vec<_>>()
    };
    let p = flows_on(&f, 1, 1)[0];

    // Off: the program writes nothing.
    run(f.dp.program(), &flow(p), LO);
    assert!(drain(&mut ring).is_empty(), "records while tracing is off");

    switch.set(Some(TraceFilter::default())).unwrap();
    let q = flows_on(&f, 2, 1)[0];
    // While tracing, dsr_trace returns the verdict in dsr's place: it must be dsr's, on
    // the frame dsr rewrote.
    for _ in 0..2 {
        // New flow (placed by the table), then established (the flow table).
        let (verdict, out) = run(f.dp.program(), &flow(q), LO);
        assert_eq!(verdict, XDP_TX);
        assert_eq!(out[..6], f.backends[2].mac, "rewritten for backend 2");
    }
    let not_vip = v4(TCP, VIP4, 8080);
    assert_eq!(
        run(f.dp.program(), &not_vip, LO),
        (XDP_PASS, not_vip.clone())
    );
    let mut other = flow(q);
    other[..6].copy_from_slice(&OTHER_MAC);
    assert_eq!(run(f.dp.program(), &other, LO), (XDP_PASS, other.clone()));
    let records = drain(&mut ring);
    assert_eq!(records.len(), 4, "{records:?}");

    let key = FlowKey::new(CLIENT4.into(), q, VIP4.into(), 80, TCP);
    let (placed, hit) = (records[0], records[1]);
    assert_eq!(placed.reason, Reason::Forwarded as u32);
    assert_eq!(placed.action, XDP_TX);
    assert_eq!(placed.flow, key);
    assert_eq!(
        placed.flags,
        TRACE_F_FLOW | TRACE_F_VIP | TRACE_F_BACKEND | TRACE_F_SLOT | TRACE_F_REMEMBERED
    );
    assert_eq!((placed.vip, placed.backend), (0, 2));
    assert_eq!(
        placed.slot,
        flow_hash(&key, DEFAULT_HASH_SEED) % DEFAULT_TABLE_SIZE,
        "the slot the data path read"
    );
    assert_eq!(placed.ifindex, LO);
    assert_eq!(placed.len as usize, flow(q).len());
    assert_eq!(placed.dst_mac, LB_MAC);
    assert_eq!(
        placed.tcp_flags,
        dsr_common::parse::TCP_SYN,
        "frames::tcp sends a SYN"
    );
    assert_eq!(
        hit.flags,
        TRACE_F_FLOW | TRACE_F_VIP | TRACE_F_BACKEND | TRACE_F_FLOW_HIT
    );
    assert_eq!(hit.backend, 2);
    assert!(hit.time_ns >= placed.time_ns);
    assert_eq!(records[2].reason, Reason::NotVip as u32);
    assert_eq!(records[2].action, XDP_PASS);
    assert_eq!(records[2].flags, TRACE_F_FLOW);
    assert_eq!(records[3].reason, Reason::NotOurMac as u32);
    // Not ours, but its flow is shown all the same (what was it?).
    assert_eq!(
        (records[3].flags, records[3].dst_mac),
        (TRACE_F_FLOW, OTHER_MAC)
    );
    assert_eq!(records[3].flow, key);

    // Filtered by VIP: only the IPv6 VIP's frames (VIP id 2).
    switch
        .set(Some(TraceFilter {
            flags: TRACE_FILTER_VIP,
            vip: 2,
            client: [0; 4],
        }))
        .unwrap();
    run(f.dp.program(), &flow(q), LO);
    run(f.dp.program(), &v6(TCP, 80), LO);
    run(f.dp.program(), &not_vip, LO);
    let records = drain(&mut ring);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(
        (records[0].vip, records[0].reason),
        (2, Reason::Forwarded as u32)
    );

    // Filtered by client: the IPv6 client only, whatever it sends.
    switch
        .set(Some(TraceFilter {
            flags: TRACE_FILTER_CLIENT,
            vip: 0,
            client: addr_words(CLIENT6.into()),
        }))
        .unwrap();
    run(f.dp.program(), &flow(q), LO);
    run(f.dp.program(), &v6(TCP, 80), LO);
    run(f.dp.program(), &v6(TCP, 8080), LO);
    let records = drain(&mut ring);
    let reasons: Vec<u32> = records.iter().map(|r| r.reason).collect();
    assert_eq!(
        reasons,
        [Reason::Forwarded as u32, Reason::NotVip as u32],
        "{records:?}"
    );

    // Off again.
    switch.set(None).unwrap();
    run(f.dp.program(), &v6(TCP, 80), LO);
    assert!(drain(&mut ring).is_empty());
}

/// Log records the data path's logger hands to `log` (the daemon's log, in production).
struct Captured(std::sync::Mutex<Vec<(log::Level, String)>>);

impl log::Log for Captured {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        // aya-log names the program's module as the target; the loader's own debug lines
        // are aya's.
        if record.target().starts_with("dsr_ebpf") {
            self.0
                .lock()
                .unwrap()
                .push((record.level(), record.args().to_string()));
        }
    }
    fn flush(&self) {}
}

static CAPTURED: Captured = Captured(std::sync::Mutex::new(Vec::new()));

/// A fixture logging at `level` whose backend 1 sits behind TX port 7, which has no
/// interface: its frames are dropped with a warning.
fn behind_a_vanished_tx_port(level: dsr::spec::model::DatapathLog) -> Fixture {
    let mut opts = options(16, 64, DEFAULT_TABLE_SIZE, Duration::from_secs(300));
    opts.datapath_log = level;
    let mut f = Fixture::with_options(opts);
    f.set_backend(1, |b| {
        b.egress = Some(Egress {
            port: 7,
            src_mac: MacAddr([0x02, 0xee, 0, 0, 0, 0x07]),
        })
    });
    f
}

/// The data path's own diagnostics (aya-log) cost the verifier nothing when off (the level
/// is a constant of the loaded program) and still fit when on; a warning reaches userspace:
/// a redirect to a TX port that has no interface.
#[test]
fn datapath_log_levels_load_and_a_warning_reaches_userspace() {
    use dsr::spec::model::DatapathLog;
    let mut counts = Vec::new();
    for level in [DatapathLog::Off, DatapathLog::Warn, DatapathLog::Debug] {
        let mut opts = options(2, 2, 251, Duration::from_secs(300));
        opts.datapath_log = level;
        let mut dp = Datapath::load(&opts).unwrap_or_else(|e| panic!("{level:?}: {e:#}"));
        let n = dp.verified_instructions().expect("verified_insns");
        eprintln!("datapath_log {level:?}: the verifier processed {n} instructions");
        counts.push(n);
        assert_eq!(dp.take_logger().is_some(), level != DatapathLog::Off);
    }
    assert!(
        counts[0] <= counts[1] && counts[1] <= counts[2],
        "{counts:?}"
    );

    // Only this test sets a logger in this binary.
    log::set_logger(&CAPTURED).unwrap();
    log::set_max_level(log::LevelFilter::Trace);
    let logged = |level: DatapathLog| {
        CAPTURED.0.lock().unwrap().clear();
        let mut f = behind_a_vanished_tx_port(level);
        let mut logger = f.dp.take_logger().expect("a logger");
        let (verdict, _) = run(f.dp.program(), &flow(flows_on(&f, 1, 1)[0]), LO);
        assert_eq!(verdict_name(verdict), "DROP");
        // An established flow whose backend then fails: a debug message.
        let on_two = flow(flows_on(&f, 2, 1)[0]);
        run(f.dp.program(), &on_two, LO);
        f.set_backend(2, |b| b.keep_flows = false);
        run(f.dp.program(), &on_two, LO);
        logger.flush();
        CAPTURED.0.lock().unwrap().clone()
    };
    let warning = (
        log::Level::Warn,
        "backend 1 is behind TX port 7, which has no interface now: dropped".to_string(),
    );
    let debug = (
        log::Level::Debug,
        "VIP id 0: the flow entry's backend 2 keeps no flows now; the table places the flow"
            .to_string(),
    );
    assert_eq!(logged(DatapathLog::Warn), std::slice::from_ref(&warning));
    assert_eq!(logged(DatapathLog::Debug), [warning.clone(), debug]);

    // A per-packet event at line rate: at most 50 records a second reach the log, then
    // one line says how many were held back.
    std::thread::sleep(Duration::from_millis(1100));
    CAPTURED.0.lock().unwrap().clear();
    let mut f = behind_a_vanished_tx_port(DatapathLog::Warn);
    let mut logger = f.dp.take_logger().expect("a logger");
    let frame = flow(flows_on(&f, 1, 1)[0]);
    for _ in 0..200 {
        run(f.dp.program(), &frame, LO);
    }
    logger.flush();
    assert_eq!(CAPTURED.0.lock().unwrap().len(), 50);
    std::thread::sleep(Duration::from_millis(1100));
    CAPTURED.0.lock().unwrap().clear();
    run(f.dp.program(), &frame, LO);
    logger.flush();
    let got = CAPTURED.0.lock().unwrap().clone();
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(
        got[0].1.starts_with("150 more data path log records"),
        "{got:?}"
    );
    assert_eq!(got[1], warning);
}

/// A FIN or RST seen inbound marks the flow's entry closing: its packets still follow the
/// entry, and the walk counts it apart from the active flows (load-aware weights and status
/// count active ones); a SYN on the same tuple (reused) clears the mark.
#[test]
fn fin_and_rst_mark_flows_closing_without_forgetting_them() {
    let idle = Duration::from_secs(30);
    let f = Fixture::with_idle(idle);
    let counter = f.dp.flow_counter(idle).unwrap();
    let key = |p: u16| f.flow_key(0, CLIENT4.into(), p, VIP4.into(), 80, TCP);
    for p in [53000, 53001, 53002] {
        run(f.dp.program(), &flow(p), LO);
    }
    let owner = |p: u16| f.dp.flow(&key(p)).unwrap().backend;
    let (a, b) = (owner(53000), owner(53001));
    assert!(
        [53000, 53001, 53002]
            .iter()
            .all(|&p| f.dp.flow(&key(p)).unwrap().flags == 0)
    );
    run(
        f.dp.program(),
        &with_tcp_flags(flow(53000), TCP_FIN | TCP_ACK),
        LO,
    );
    run(f.dp.program(), &with_tcp_flags(flow(53001), TCP_RST), LO);
    assert_eq!(f.dp.flow(&key(53000)).unwrap().flags, FLOW_F_CLOSING);
    assert_eq!(f.dp.flow(&key(53001)).unwrap().flags, FLOW_F_CLOSING);
    assert_eq!(
        f.dp.flow(&key(53002)).unwrap().flags,
        0,
        "an ACK marks nothing"
    );
    // Still forwarded to its backend: the last ACK of the close must arrive.
    let (verdict, out) = run(f.dp.program(), &with_tcp_flags(flow(53000), TCP_ACK), LO);
    let mac = f.all[0].iter().find(|x| x.id == a).unwrap().mac;
    assert_eq!((verdict, &out[..6]), (XDP_TX, &mac[..]));
    let c = counter.count().unwrap();
    assert_eq!((c.live, c.closing), (3, 2), "{c:?}");
    assert_eq!(c.per_vip.get(&0), Some(&1), "only the open flow is active");
    let active: u64 = c.per_backend.values().sum();
    assert_eq!(active, 1, "{c:?}");
    let closing: u64 = c.closing_per_backend.values().sum();
    assert_eq!(closing, 2);
    // A peer's copy of the flow (the flow-state exchange) refreshes it, and keeps the mark.
    let mut adopter = f.dp.flow_adopter(idle).unwrap();
    adopter.adopt(&key(53000), a).unwrap();
    assert_eq!(f.dp.flow(&key(53000)).unwrap().flags, FLOW_F_CLOSING);
    assert!(c.closing_per_backend.contains_key(&a) && c.closing_per_backend.contains_key(&b));
    // The tuple reused by a new connection: active again, on the same backend.
    run(f.dp.program(), &flow(53001), LO);
    let e = f.dp.flow(&key(53001)).unwrap();
    assert_eq!((e.flags, e.backend), (0, b));
    assert_eq!(counter.count().unwrap().closing, 1);
}

#[test]
fn the_flow_table_walk_counts_live_and_expired_entries_per_vip_and_backend() {
    let idle = Duration::from_secs(2);
    let f = Fixture::with_idle(idle);
    let counter = f.dp.flow_counter(idle).unwrap();
    assert_eq!(counter.count().unwrap().live, 0);
    // More flows than one batch of the walk (and fewer than the table's 4096), to two VIPs.
    let table = f.table(&[1, 2, 1]);
    let mut want = std::collections::HashMap::<u32, u64>::new();
    for p in 10000..13000u16 {
        let k = FlowKey::new(CLIENT4.into(), p, VIP4.into(), 80, TCP);
        let b = table[(flow_hash(&k, DEFAULT_HASH_SEED) % table.len() as u32) as usize];
        *want.entry(b).or_default() += 1;
    }
    for p in 10000..13000u16 {
        run(f.dp.program(), &flow(p), LO);
    }
    run(f.dp.program(), &v4(UDP, VIP4, 53), LO);
    let c = counter.count().unwrap();
    assert_eq!((c.live, c.expired), (3001, 0), "{c:?}");
    assert_eq!(c.per_vip.get(&0), Some(&3000));
    assert_eq!(
        c.per_vip.get(&1),
        Some(&1),
        "one UDP flow (one source port)"
    );
    for (b, n) in &want {
        assert_eq!(c.per_backend.get(b), Some(n), "backend {b}");
    }
    println!("walked {} entries in {:?}", c.live, c.took);
    // Idle past the timeout: still in the LRU, no longer flows.
    std::thread::sleep(idle + Duration::from_millis(100));
    let c = counter.count().unwrap();
    assert_eq!((c.live, c.expired), (0, 3001), "{c:?}");
}
