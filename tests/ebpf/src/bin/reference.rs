//! Reference XDP programs that dsr is measured and tested against; not part of the data path.
//! - `xdp_pass`: returns XDP_PASS. The lab attaches it to the switch-side peer of a veth that
//!   receives XDP_TX frames (a veth drops XDP frames unless its peer has an XDP program), and
//!   it is the "empty program" of the benchmarks.
//! - `xdp_macswap`: the cheapest program doing dsr's job: writes a fixed destination and
//!   source MAC and returns XDP_TX. The benchmarks' baseline.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::map, macros::xdp, maps::Array, programs::XdpContext};

/// [0] = destination MAC, [1] = source MAC (in the first 6 bytes of each entry).
#[map(name = "REF_MACS")]
static REF_MACS: Array<[u8; 8]> = Array::with_max_entries(2, 0);

#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[xdp]
pub fn xdp_macswap(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + 14 > ctx.data_end() {
        return xdp_action::XDP_PASS;
    }
    let (Some(dst), Some(src)) = (REF_MACS.get(0), REF_MACS.get(1)) else {
        return xdp_action::XDP_PASS;
    };
    let eth = start as *mut [u8; 6];
    // SAFETY: the first 14 bytes are inside the frame (checked above).
    unsafe {
        *eth = [dst[0], dst[1], dst[2], dst[3], dst[4], dst[5]];
        *eth.add(1) = [src[0], src[1], src[2], src[3], src[4], src[5]];
    }
    xdp_action::XDP_TX
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
