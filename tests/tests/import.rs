//! `dsr import keepalived` on realistic configs: keepalived's own samples (installed by the
//! bootstrap with the `keepalived` package, read where Debian puts them) and an
//! active/standby setup; every conversion must be accepted by `dsr check`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use dsr_lab::lab::dsr_bin;

const SAMPLES: &str = "/usr/share/doc/keepalived/samples";

fn dsr(args: &[&str]) -> (i32, String) {
    let out = Command::new(dsr_bin())
        .args(args)
        .output()
        .expect("run dsr");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dsr-import-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A line's first word, outside `!`/`#` comments.
fn directive(line: &str) -> Option<&str> {
    line.split(['!', '#'])
        .next()
        .and_then(|l| l.split_whitespace().next())
}

/// The 1-based line and value of the first `lb_kind`/`lvs_method` that is not DR.
fn first_non_dr(text: &str) -> Option<(usize, String)> {
    text.lines().enumerate().find_map(|(i, l)| {
        let code = l.split(['!', '#']).next()?;
        let mut words = code.split_whitespace();
        match (words.next(), words.next()) {
            (Some("lb_kind" | "lvs_method"), Some(kind)) if !kind.eq_ignore_ascii_case("DR") => {
                Some((i + 1, kind.to_owned()))
            }
            _ => None,
        }
    })
}

/// The importer writes the output; `dsr check` must accept it. Returns the check's message.
fn import_and_check(file: &Path, extra: &[&str], out: &Path) -> String {
    let mut args = vec![
        "import",
        "keepalived",
        file.to_str().unwrap(),
        "--interface",
        "eth0",
        "--output",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let (code, text) = dsr(&args);
    assert_eq!(code, 0, "import {}: {text}", file.display());
    let (code, text) = dsr(&["check", "--config", out.to_str().unwrap()]);
    assert_eq!(code, 0, "check of {} converted: {text}", file.display());
    text
}

/// Every keepalived sample converts into a config `dsr check` accepts. Content rules, not
/// names: scripts are not configs; a file whose first non-DR `lb_kind` (NAT, keepalived's
/// default, or TUN) is at line N is refused naming `FILE:N`, then converted with
/// `--non-dr as-dr`; a DR-only file converts as it is.
#[test]
fn keepalived_samples_convert_and_pass_check() {
    let dir = Path::new(SAMPLES);
    assert!(
        dir.is_dir(),
        "{SAMPLES} is missing: install keepalived (cargo xtask test's bootstrap does)"
    );
    let work = scratch("samples");
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    entries.sort();
    let (mut with_vips, mut refused, mut without_lvs, mut scripts, mut fwmark_only) =
        (0, 0, 0, 0, 0);
    for path in entries {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let (name, text) = match name.strip_suffix(".gz") {
            Some(base) => {
                let out = Command::new("gzip")
                    .arg("-dc")
                    .arg(&path)
                    .output()
                    .expect("gzip");
                assert!(out.status.success(), "gunzip {}", path.display());
                (
                    base.to_owned(),
                    String::from_utf8_lossy(&out.stdout).into_owned(),
                )
            }
            None => (name.clone(), std::fs::read_to_string(&path).unwrap()),
        };
        if text.starts_with("#!") {
            scripts += 1;
            continue;
        }
        let file = work.join(&name);
        std::fs::write(&file, &text).unwrap();
        let out = work.join(format!("{name}.toml"));
        let servers: Vec<&str> = text
            .lines()
            .filter(|l| directive(l) == Some("virtual_server"))
            .collect();
        if !servers.is_empty() && servers.iter().all(|l| l.contains("fwmark")) {
            // Firewall-mark services only: not converted whatever their lb_kind, each noted.
            import_and_check(&file, &[], &out);
            let converted = std::fs::read_to_string(&out)
                .unwrap()
                .replace("\n#   ", " ");
            assert!(
                converted.contains("not converted: dsr matches packets by address and port"),
                "{converted}"
            );
            fwmark_only += 1;
            continue;
        }
        if servers.is_empty() {
            // VRRP only: nothing to balance, but the file must still parse and convert.
            import_and_check(&file, &[], &out);
            without_lvs += 1;
            continue;
        }
        let check = match first_non_dr(&text) {
            None => import_and_check(&file, &[], &out),
            Some((line, kind)) => {
                let (code, err) = dsr(&[
                    "import",
                    "keepalived",
                    file.to_str().unwrap(),
                    "--interface",
                    "eth0",
                ]);
                assert_eq!(code, 1, "{name}: lb_kind {kind} must be refused: {err}");
                let at = format!("{name}:{line}:");
                assert!(err.contains(&at), "{name}: error names {at}: {err}");
                assert!(
                    err.contains(&format!("lb_kind {}", kind.to_ascii_uppercase())),
                    "{err}"
                );
                refused += 1;
                import_and_check(&file, &["--non-dr", "as-dr"], &out)
            }
        };
        let converted = std::fs::read_to_string(&out).unwrap();
        assert!(
            converted.contains("by `dsr") && converted.contains("interface = \"eth0\""),
            "{converted}"
        );
        if !check.contains(" 0 VIPs") {
            with_vips += 1;
            // Every VIP carries the comment naming the keepalived line it came from.
            let vips = converted.matches("[[vip]]").count();
            let origins = converted
                .lines()
                .filter(|l| l.starts_with(&format!("# {name}:")) && l.contains("virtual_server"))
                .count();
            assert!(
                origins >= vips,
                "{name}: {vips} VIPs, {origins} origins\n{converted}"
            );
        }
    }
    eprintln!(
        "samples: {with_vips} converted to VIPs ({refused} refused as NAT first), \
         {fwmark_only} with fwmark services only, {without_lvs} without virtual_server, \
         {scripts} scripts skipped"
    );
    // keepalived 2.2.7 ships 16 samples with virtual servers (fwmark only: none to convert).
    assert!(with_vips >= 12, "only {with_vips} samples converted");
    assert!(
        without_lvs >= 5,
        "only {without_lvs} VRRP-only samples read"
    );
}

/// Active/standby by keepalived's poor man's backup (weight 0 + inhibit_on_failure): kept as
/// it is, with the suggestion to say `backup = true`; the interface comes from the
/// vrrp_instance holding the VIP, without --interface.
#[test]
fn active_standby_and_vrrp_interface() {
    let dir = scratch("active-standby");
    let conf = dir.join("keepalived.conf");
    std::fs::write(
        &conf,
        r#"global_defs {
    router_id LB1
}
vrrp_instance VI_WEB {
    state MASTER
    interface lo
    virtual_router_id 51
    priority 150
    virtual_ipaddress {
        203.0.113.10/32
    }
}
virtual_server 203.0.113.10 443 {
    delay_loop 3
    lb_algo wrr
    lb_kind DR
    protocol TCP
    real_server 198.51.100.11 443 {
        weight 100
        TCP_CHECK {
            connect_timeout 2
            retry 2
        }
    }
    real_server 198.51.100.12 443 {
        weight 0
        inhibit_on_failure
        TCP_CHECK {
            connect_timeout 2
            retry 2
        }
    }
}
"#,
    )
    .unwrap();
    let conf = conf.to_str().unwrap();
    let (code, out) = dsr(&["import", "keepalived", conf]);
    assert_eq!(code, 0, "{out}");
    let flat = out.replace("\n#   ", " ").replace("\n  #   ", " ");
    assert!(flat.contains("interface = \"lo\""), "{out}");
    assert!(flat.contains("interface: vrrp_instance VI_WEB"), "{out}");
    let note = flat
        .find("weight 0 with inhibit_on_failure")
        .expect("the suggestion");
    assert!(flat[note..].contains("`backup = true`"), "{out}");
    let standby = flat.find("address = \"198.51.100.12\"").unwrap();
    assert!(flat.find("address = \"198.51.100.11\"").unwrap() < note && note < standby);
    assert!(
        flat[standby..].contains("weight = 0\n  inhibit_on_failure = true"),
        "{out}"
    );
    assert!(flat.contains("`lb_algo wrr`: dsr places new flows by weighted consistent hashing"));
    // One check for both: the VIP's, keepalived's timings.
    let check =
        "[vip.check]\ntype = \"tcp\"\ninterval = \"3s\"\ntimeout = \"2s\"\nrise = 1\nfall = 3\n";
    assert!(out.contains(check), "{out}");
    let toml = dir.join("dsr.toml");
    std::fs::write(&toml, &out).unwrap();
    let toml = toml.to_str().unwrap();
    let (code, text) = dsr(&["check", "--config", toml]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("1 VIPs, 2 backends"), "{text}");
    // lo exists on every host: --host agrees.
    let (code, text) = dsr(&["check", "--host", "--config", toml]);
    assert_eq!(code, 0, "{text}");
}

/// `dsr check` validates the file only; `--host` also checks that its interfaces exist.
#[test]
fn check_host_checks_interfaces() {
    let dir = scratch("host");
    let toml = dir.join("dsr.toml");
    std::fs::write(
        &toml,
        "interface = \"nosuch0\"\n[[vip]]\naddress = \"203.0.113.10\"\nport = 80\nprotocol = \
         \"tcp\"\n  [[vip.backend]]\n  address = \"198.51.100.11\"\n",
    )
    .unwrap();
    let toml = toml.to_str().unwrap();
    let (code, text) = dsr(&["check", "--config", toml]);
    assert_eq!(code, 0, "the file is valid: {text}");
    let (code, text) = dsr(&["check", "--host", "--config", toml]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains(toml) && text.contains("nosuch0"), "{text}");
    // A backend's interface too.
    std::fs::write(
        toml,
        "interface = \"lo\"\n[[vip]]\naddress = \"203.0.113.10\"\nport = 80\nprotocol = \
         \"tcp\"\n  [[vip.backend]]\n  address = \"198.51.100.11\"\n  interface = \"nosuch1\"\n",
    )
    .unwrap();
    let (code, text) = dsr(&["check", "--host", "--config", toml]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("nosuch1") && text.contains("198.51.100.11"),
        "{text}"
    );
}

/// A NAT virtual server is refused, naming the file and line, and nothing is written.
#[test]
fn nat_is_refused_and_nothing_written() {
    let dir = scratch("nat");
    let conf = dir.join("keepalived.conf");
    std::fs::write(
        &conf,
        "virtual_server 203.0.113.10 80 {\n    lb_kind NAT\n    real_server 10.0.0.1 80 {\n    }\n}\n",
    )
    .unwrap();
    let out = dir.join("dsr.toml");
    let (code, text) = dsr(&[
        "import",
        "keepalived",
        conf.to_str().unwrap(),
        "--interface",
        "eth0",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("keepalived.conf:2: virtual_server 203.0.113.10 80: lb_kind NAT"));
    assert!(!out.exists());
    let (code, text) = dsr(&[
        "import",
        "keepalived",
        conf.to_str().unwrap(),
        "--interface",
        "eth0",
        "--non-dr",
        "skip",
    ]);
    assert_eq!(code, 0, "{text}");
    assert!(!text.contains("[[vip]]") && text.contains("left out (--non-dr skip)"));
}
