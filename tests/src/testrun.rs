//! Running the real XDP program on one frame with BPF_PROG_TEST_RUN.

use aya::programs::{TestRun, TestRunOptions, Xdp};

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

pub fn verdict_name(v: u32) -> &'static str {
    match v {
        XDP_ABORTED => "ABORTED",
        XDP_DROP => "DROP",
        XDP_PASS => "PASS",
        XDP_TX => "TX",
        4 => "REDIRECT",
        _ => "?",
    }
}

/// Runs `program` once on `frame` as received on interface `ingress_ifindex` (1 = lo, which
/// every namespace has). Returns the verdict and the frame as the program left it.
pub fn run(program: &Xdp, frame: &[u8], ingress_ifindex: u32) -> (u32, Vec<u8>) {
    // struct xdp_md { data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex }
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ingress_ifindex.to_ne_bytes());
    let mut out = vec![0u8; frame.len() + 512];
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            repeat: 1,
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(result.data_size_out as usize);
    (result.return_value, out)
}
