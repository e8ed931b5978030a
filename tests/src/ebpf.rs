//! The test-only XDP objects (crate `tests/ebpf`), built by this crate's build.rs and embedded
//! here; the `dsr` binary does not carry them.

/// Reference programs: `xdp_pass` (the lab's veth peers, the benchmarks' empty program) and
/// `xdp_macswap` (the benchmarks' baseline).
pub static REFERENCE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dsr-reference.o"));

/// Benchmark traffic: `bench_gen` (live-frame generator) and `bench_sink` (counts and drops).
pub static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dsr-bench-gen.o"));
