//! Resources running out: memory for the maps when the data path is created, space in the
//! state directory while the daemon runs. Each is refused with what to change, and nothing
//! is left half done.

use std::fs;

use dsr_lab::lab::{Lab, MemoryCgroup, dsr_bin, sh};

/// Sizes `dsr check` accepts but this cgroup cannot hold: the largest flow table the config
/// allows (134217728 flows, some 16 GiB) against a limit that fits the daemon with the lab's
/// small maps.
#[test]
fn maps_the_kernel_cannot_create_are_refused_and_leave_nothing() {
    let cgroup = MemoryCgroup::new("maps", 96 << 20);
    let mut lab = Lab::new("bigmaps", &[1]);
    lab.wrapper = cgroup.wrapper();
    let good = lab.config();
    let big = good.replace("flow_table_size = 65536", "flow_table_size = 134217728");
    assert_ne!(big, good);
    let check = lab.dir.join("big.toml");
    fs::write(&check, &big).unwrap();
    let out = std::process::Command::new(dsr_bin())
        .args(["check", "--config"])
        .arg(&check)
        .output()
        .unwrap();
    assert!(out.status.success(), "the size itself is valid: {out:?}");

    let e = format!(
        "{:#}",
        lab.start_dsr_with(&big, false)
            .expect_err("started with a flow table larger than its memory")
    );
    assert!(
        e.contains("map FLOWS")
            && e.contains("Cannot allocate memory")
            && e.contains("lower flow_table_size"),
        "{e}"
    );
    let pins = dsr::datapath::pin_dir(&lab.tag);
    assert!(
        !pins.exists(),
        "a refused start left {:?}",
        fs::read_dir(&pins).map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
    );
    let link = sh(&["ip", "-n", &lab.lb_ns, "link", "show", "eth0"]).unwrap();
    assert!(
        !link.contains("xdp"),
        "XDP attached after a refused start: {link}"
    );

    // Nothing is in the way of a start with sizes that fit, in the same cgroup.
    lab.start_dsr_with(&good, false)
        .unwrap_or_else(|e| panic!("{e:#}"));
    lab.udp_request(49200).expect("forwarded");
    // Map sizes are fixed while the data path runs: a reload asking for more is refused.
    fs::write(lab.config_path(), &big).unwrap();
    let (ok, out) = lab.dsr(&["reload"]);
    assert!(
        !ok && out.contains("flow_table_size cannot change on reload"),
        "{out}"
    );
    lab.udp_request(49201).expect("still forwarded");
}
