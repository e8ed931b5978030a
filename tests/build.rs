//! Builds the test-only XDP programs (crate `dsr-test-ebpf`, in `ebpf/`) for bpfel-unknown-none
//! into OUT_DIR, where `src/ebpf.rs` embeds them; they stay out of the `dsr` binary. Same route
//! and environment (`DSR_EBPF_SKIP`, `DSR_BPF_RUSTC`) as dsr-userspace's build.rs, whose
//! `build_bpf.rs` this includes.

include!("../dsr-userspace/build_bpf.rs");

fn main() {
    build_bpf_objects(
        "dsr-test-ebpf",
        "tests/ebpf",
        &[],
        &["dsr-reference", "dsr-bench-gen"],
    );
}
