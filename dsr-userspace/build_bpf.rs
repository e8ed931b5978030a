// Shared by the build scripts that build XDP programs: dsr-userspace/build.rs (the data path,
// `dsr-ebpf`) and tests/build.rs (the test-only programs, `tests/ebpf`), each with
// `include!`. It builds one BPF-only package of the workspace for bpfel-unknown-none and
// leaves the objects in OUT_DIR as `<bin>.o`, where the crate embeds them.
//
// This machine's route (see PLATFORM.md): Debian's rustc 1.96 ships a prebuilt `core` for the
// BPF target, `bpf-linker` links; `cargo xtask build` installs both. `DSR_EBPF_SKIP=1` writes
// empty objects so `cargo check`/clippy work without the BPF toolchain (loading then fails).
// `DSR_BPF_RUSTC` names another BPF-capable rustc than /usr/bin/rustc.

/// Builds the bins `objects` of the workspace package `package` (directory `package_dir`,
/// relative to the workspace root) for bpfel-unknown-none into OUT_DIR/<bin>.o; rebuilds when
/// one of `package_dir`'s sources or manifest, or one of `extra_watch`, changes.
fn build_bpf_objects(package: &str, package_dir: &str, extra_watch: &[&str], objects: &[&str]) {
    use std::{env, fs, path::PathBuf, process::Command};

    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    // Both crates that build XDP programs sit directly under the workspace root.
    let workspace = manifest.parent().unwrap().to_owned();
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let package_src = format!("{package_dir}/src");
    let package_manifest = format!("{package_dir}/Cargo.toml");
    for path in [package_src.as_str(), package_manifest.as_str()]
        .into_iter()
        .chain(extra_watch.iter().copied())
    {
        println!("cargo:rerun-if-changed={}", workspace.join(path).display());
    }
    println!("cargo:rerun-if-env-changed=DSR_EBPF_SKIP");
    println!("cargo:rerun-if-env-changed=DSR_BPF_RUSTC");

    if env::var_os("DSR_EBPF_SKIP").is_some() {
        println!("cargo:warning=DSR_EBPF_SKIP is set: embedding empty eBPF objects ({package})");
        for name in objects {
            fs::write(out.join(format!("{name}.o")), []).unwrap();
        }
        return;
    }

    let rustc = env::var("DSR_BPF_RUSTC").unwrap_or_else(|_| "/usr/bin/rustc".into());
    // One target dir for every BPF package: aya-ebpf is compiled once; cargo's lock serializes
    // two build scripts that build at the same time.
    let target_dir = workspace.join("target").join("bpf");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&workspace)
        .args(["build", "--release", "--package", package, "--bins"])
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
        .unwrap_or_else(|e| panic!("cannot run cargo for {package}: {e}"));
    if !status.success() {
        panic!(
            "building the XDP programs of {package} for bpfel-unknown-none failed. \
             If the BPF toolchain is missing, `cargo xtask build` installs it \
             (Debian's rustc-web + libstd-rust-web-dev-bpf, and bpf-linker). \
             Set DSR_EBPF_SKIP=1 to build userspace without it."
        );
    }
    for name in objects {
        let built = target_dir.join("bpfel-unknown-none/release").join(name);
        fs::copy(&built, out.join(format!("{name}.o")))
            .unwrap_or_else(|e| panic!("copy {}: {e}", built.display()));
    }
}
