//! Builds the XDP programs (crate `dsr-ebpf`) for bpfel-unknown-none and leaves the objects in
//! OUT_DIR, where `src/ebpf.rs` embeds them: the `dsr` binary carries its data path, no path
//! to a build directory is needed at run time. The how (and `DSR_EBPF_SKIP`, `DSR_BPF_RUSTC`)
//! is in `build_bpf.rs`.

include!("build_bpf.rs");

fn main() {
    build_bpf_objects(
        "dsr-ebpf",
        "dsr-ebpf",
        &["dsr-common/src", "dsr-common/Cargo.toml"],
        &["dsr-ebpf", "dsr-reference", "dsr-bench-gen"],
    );
}
