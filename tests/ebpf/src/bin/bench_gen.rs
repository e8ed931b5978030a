//! Traffic programs for the forwarding benchmark (`dsr-bench forwarding`); not part of the
//! data path.
//! - `bench_gen`: a traffic generator for the live-frame mode of BPF_PROG_TEST_RUN. Run on the
//!   client's interface, it stamps each frame with the MACs in GEN_MACS and a new UDP source
//!   port (a per-CPU counter), and returns XDP_TX, which the kernel turns into a transmit out
//!   of that interface. So one template frame becomes many flows, which is what a load
//!   balancer spreads. The MACs are rewritten every time because live-frame pages are
//!   recycled with whatever the path downstream wrote into them (the load balancer rewrites
//!   the MACs of the very page the generator sent).
//! - `bench_sink`: where the traffic ends (a backend's interface), counts IPv4 UDP frames (the
//!   generated traffic) per destination MAC and drops them, so that no network stack spends
//!   anything on them and nothing answers; everything else (ARP) passes.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};

/// [0] = destination MAC, [1] = source MAC (first 6 bytes of each entry).
#[map(name = "GEN_MACS")]
static GEN_MACS: Array<[u8; 8]> = Array::with_max_entries(2, 0);

/// Frames generated on each CPU; also the source of the UDP source port.
#[map(name = "GEN_COUNT")]
static GEN_COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Frames counted (and dropped) by the sink on each CPU, indexed by the last byte of their
/// destination MAC: one sink can tell apart the backends a load balancer chose.
#[map(name = "SINK_COUNT")]
static SINK_COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(256, 0);

const ETH_LEN: usize = 14;
/// The template is IPv4 without options: UDP starts right after the 20-byte header.
const UDP_OFFSET: usize = ETH_LEN + 20;
/// Source ports used: 1024.. (64512 flows per source address).
const FIRST_PORT: u64 = 1024;
const PORTS: u64 = 65536 - FIRST_PORT;

#[xdp]
pub fn bench_gen(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + UDP_OFFSET + 2 > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    let (Some(dst), Some(src), Some(count)) =
        (GEN_MACS.get(0), GEN_MACS.get(1), GEN_COUNT.get_ptr_mut(0))
    else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: per-CPU value of this CPU, only touched by this program while it runs here.
    let n = unsafe {
        let n = *count;
        *count = n + 1;
        n
    };
    let sport = (FIRST_PORT + n % PORTS) as u16;
    let eth = start as *mut [u8; 6];
    // SAFETY: the first UDP_OFFSET + 2 bytes are inside the frame (checked above).
    unsafe {
        *eth = [dst[0], dst[1], dst[2], dst[3], dst[4], dst[5]];
        *eth.add(1) = [src[0], src[1], src[2], src[3], src[4], src[5]];
        *((start + UDP_OFFSET) as *mut [u8; 2]) = sport.to_be_bytes();
    }
    xdp_action::XDP_TX
}

#[xdp]
pub fn bench_sink(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + ETH_LEN + 20 > ctx.data_end() {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: the Ethernet header and a minimal IPv4 header are inside the frame.
    let (dst_last, ethertype, proto) = unsafe {
        (
            *((start + 5) as *const u8),
            *((start + 12) as *const [u8; 2]),
            *((start + ETH_LEN + 9) as *const u8),
        )
    };
    if ethertype != [0x08, 0x00] || proto != 17 {
        return xdp_action::XDP_PASS;
    }
    if let Some(count) = SINK_COUNT.get_ptr_mut(dst_last as u32) {
        // SAFETY: per-CPU value of this CPU.
        unsafe { *count += 1 };
    }
    xdp_action::XDP_DROP
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
