//! Builds the XDP program (crate `dsr-ebpf`) for bpfel-unknown-none and leaves the object in
//! OUT_DIR, where `src/ebpf.rs` embeds it: the `dsr` binary carries its data path, no path
//! to a build directory is needed at run time. The how (and `DSR_EBPF_SKIP`, `DSR_BPF_RUSTC`)
//! is in `build_bpf.rs`, which tests/build.rs shares for the test-only programs.

include!("build_bpf.rs");

fn main() {
    build_bpf_objects(
        "dsr-ebpf",
        "dsr-ebpf",
        &["dsr-common/src", "dsr-common/Cargo.toml"],
        &["dsr-ebpf"],
    );
}
