//! The XDP object built by build.rs, embedded in the binary. (The test-only programs, the
//! reference programs and the benchmark's traffic generator, are in `tests/ebpf` and embedded
//! by the tests crate, not here.)

/// dsr's data path (program `dsr`).
pub static DSR_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dsr-ebpf.o"));
