//! Resources running out: memory for the maps when the data path is created, space in the
//! state directory while the daemon runs. Each is refused with what to change, and nothing
//! is left half done.

use std::{fs, io::Write, path::Path, time::Duration};

use dsr_lab::lab::{Lab, MemoryCgroup, UDP_PORT, backend_ip, dsr_bin, sh};

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

/// Fills `path`'s file system: writes to it until the kernel says ENOSPC.
fn fill(path: &Path) {
    let mut f = fs::File::create(path).unwrap();
    let page = [0u8; 4096];
    loop {
        match f.write_all(&page) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
}

/// The state directory on a tiny tmpfs, mounted in the daemon's own mount namespace (so
/// nothing else sees it) and filled while the daemon runs.
#[test]
fn a_full_state_dir_refuses_runtime_changes_and_changes_nothing() {
    let mut lab = Lab::new("fulldisk", &[1, 1]);
    let state = lab.dir.join("state");
    fs::create_dir_all(&state).unwrap();
    lab.wrapper = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &format!(
            "mount -t tmpfs -o size=64k tmpfs {} && exec \"$@\"",
            state.display()
        ),
        "sh",
    ]
    .map(String::from)
    .to_vec();
    lab.start_dsr(false).unwrap_or_else(|e| panic!("{e:#}"));
    let pid = lab.status().pid.unwrap();
    // The daemon's state directory, seen through its mount namespace.
    let theirs = Path::new(&format!("/proc/{pid}/root")).join(state.strip_prefix("/").unwrap());
    assert!(theirs.join("state.json").exists());
    assert!(
        !state.join("state.json").exists(),
        "not on the daemon's tmpfs"
    );
    let before = lab.state_of();
    fill(&theirs.join("filler"));

    let backend = backend_ip(0).to_string();
    let vip = format!("udp-{UDP_PORT}");
    for args in [
        vec!["backend", "drain", vip.as_str(), backend.as_str()],
        vec!["vip", "drain", vip.as_str()],
        vec!["reset"],
    ] {
        let (ok, out) = lab.dsr(&args);
        assert!(!ok, "{args:?} succeeded on a full state dir: {out}");
        assert!(
            out.contains(&format!("{}/state.json", state.display()))
                && out.contains("No space left on device")
                && out.contains("nothing was changed"),
            "{args:?}: {out}"
        );
    }
    assert_eq!(before, lab.state_of(), "a refused change changed the state");
    // The data path too: new flows still go where the unchanged tables place them.
    for sport in 49300..49320u16 {
        let who = lab.udp_request(sport).expect("forwarded on a full disk");
        assert_eq!(lab.index_of(&who), lab.predict(17, sport), "sport {sport}");
    }
    // The announcement's heartbeat needs no space: it stays fresh.
    let announce = theirs.join("announce").join(&vip);
    let mtime = || fs::metadata(&announce).unwrap().modified().unwrap();
    let first = mtime();
    lab.wait_for(
        "a heartbeat on the full disk",
        Duration::from_secs(3),
        || mtime() > first,
    );
    assert_eq!(fs::read_to_string(&announce).unwrap(), "0\n");

    // Space again: the same change applies and is saved.
    fs::remove_file(theirs.join("filler")).unwrap();
    let (ok, out) = lab.dsr(&["backend", "drain", &vip, &backend]);
    assert!(ok, "{out}");
    let status = lab.status();
    let drained = status
        .vips
        .iter()
        .find(|v| v.name == vip)
        .and_then(|v| v.backends.iter().find(|b| b.address.to_string() == backend))
        .map(|b| b.drained);
    assert_eq!(drained, Some(true), "{status:?}");
    let saved = fs::read_to_string(theirs.join("state.json")).unwrap();
    assert!(saved.contains("\"op\": \"drain\""), "{saved}");
}
