//! Builds the XDP programs (crate `dsr-ebpf`) for bpfel-unknown-none and leaves the objects in
//! OUT_DIR, where `src/ebpf.rs` embeds them: the `dsr` binary carries its data path, no path
//! to a build directory is needed at run time.
//!
//! This machine's route (see PLATFORM.md): Debian's rustc 1.96 ships a prebuilt `core` for the
//! BPF target, `bpf-linker` links; `cargo xtask build` installs both. `DSR_EBPF_SKIP=1` embeds
//! empty objects so `cargo check`/clippy work without the BPF toolchain (loading then fails).

use std::{env, fs, path::PathBuf, process::Command};

const OBJECTS: [&str; 3] = ["dsr-ebpf", "dsr-reference", "dsr-bench-gen"];

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest.parent().unwrap().to_owned();
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    for dir in [
        "dsr-ebpf/src",
        "dsr-ebpf/Cargo.toml",
        "dsr-common/src",
        "dsr-common/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }
    println!("cargo:rerun-if-env-changed=DSR_EBPF_SKIP");
    println!("cargo:rerun-if-env-changed=DSR_BPF_RUSTC");

    if env::var_os("DSR_EBPF_SKIP").is_some() {
        println!("cargo:warning=DSR_EBPF_SKIP is set: embedding empty eBPF objects");
        for name in OBJECTS {
            fs::write(out.join(format!("{name}.o")), []).unwrap();
        }
        return;
    }

    let rustc = env::var("DSR_BPF_RUSTC").unwrap_or_else(|_| "/usr/bin/rustc".into());
    let target_dir = workspace.join("target").join("bpf");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&workspace)
        .args(["build", "--release", "--package", "dsr-ebpf", "--bins"])
        .args(["--target", "bpfel-unknown-none", "--target-dir"])
        .arg(&target_dir)
        .env("RUSTC", &rustc)
        // aya-ebpf needs #![feature(asm_experimental_arch)] on this stable compiler.
        .env("RUSTC_BOOTSTRAP", "1");
    // What the outer cargo set for this build script must not leak into the BPF build.
    for var in [
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_RUSTFLAGS",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo for dsr-ebpf: {e}"));
    if !status.success() {
        panic!(
            "building the XDP program (dsr-ebpf) for bpfel-unknown-none failed. \
             If the BPF toolchain is missing, `cargo xtask build` installs it \
             (Debian's rustc-web + libstd-rust-web-dev-bpf, and bpf-linker). \
             Set DSR_EBPF_SKIP=1 to build userspace without it."
        );
    }
    for name in OBJECTS {
        let built = target_dir.join("bpfel-unknown-none/release").join(name);
        fs::copy(&built, out.join(format!("{name}.o")))
            .unwrap_or_else(|e| panic!("copy {}: {e}", built.display()));
    }
}
