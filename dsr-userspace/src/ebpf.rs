//! The XDP objects built by build.rs, embedded in the binary.

/// dsr's data path (program `dsr`).
pub static DSR_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dsr-ebpf.o"));

/// Reference programs: `xdp_pass` (the lab's veth peers, the benchmarks' empty program) and
/// `xdp_macswap` (the benchmarks' baseline).
pub static REFERENCE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dsr-reference.o"));

/// Benchmark traffic: `bench_gen` (live-frame generator) and `bench_sink` (counts and drops).
pub static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dsr-bench-gen.o"));
