//! `dsr-bench`, run by `cargo xtask bench [--quick] [PART...]`: dsr's benchmarks.
//!
//! Parts (each runnable alone, all by default):
//! - `datapath`: per-packet cost of the XDP program by BPF_PROG_TEST_RUN (bench/datapath.rs);
//! - `forwarding`: packets per second through the namespace lab, dsr against the baseline
//!   program and nftables (bench/forwarding.rs);
//! - `distribution`: balance and disruption of the Maglev tables (bench/distribution.rs);
//! - `controlplane`: table build and push times, map memory (bench/controlplane.rs);
//! - `failover`: how long a dead backend keeps getting new connections (bench/failover.rs).
//!
//! Every part prints plain-text tables. A full run (all parts, not `--quick`) also overwrites
//! BENCHMARKS.md at the repository root with the machine, the commands, the tables and the
//! targets. `--quick` sizes everything down for CI smoke tests and never writes the file.
//! No figure is asserted: the exit status is nonzero only when something is functionally
//! broken (a wrong verdict, traffic that does not arrive, a part that cannot run).

// The modules live in src/bin/bench/ (a crate root's `mod` would look in src/bin/).
#[path = "bench/controlplane.rs"]
mod controlplane;
#[path = "bench/datapath.rs"]
mod datapath;
#[path = "bench/distribution.rs"]
mod distribution;
#[path = "bench/dsr_process.rs"]
mod dsr_process;
#[path = "bench/failover.rs"]
mod failover;
#[path = "bench/forwarding.rs"]
mod forwarding;
#[path = "bench/maglev_ref.rs"]
mod maglev_ref;
#[path = "bench/rawmap.rs"]
mod rawmap;
#[path = "bench/report.rs"]
mod report;
#[path = "bench/rig.rs"]
mod rig;
#[path = "bench/sys.rs"]
mod sys;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::Instant,
};

use anyhow::{Result, bail};
use report::{Machine, PartReport};

const PARTS: [&str; 5] = [
    "datapath",
    "forwarding",
    "distribution",
    "controlplane",
    "failover",
];

const USAGE: &str = "\
usage: dsr-bench [--quick] [PART...]     (via: cargo xtask bench [--quick] [PART...])

PART: datapath | forwarding | distribution | controlplane | failover (default: all).
--quick  small sizes for CI smoke tests (well under a minute); prints only.
A full run of all parts overwrites BENCHMARKS.md at the repository root.
Needs root (BPF programs, network namespaces).";

struct Args {
    quick: bool,
    parts: Vec<&'static str>,
}

fn parse_args() -> Result<Option<Args>> {
    let mut args = Args {
        quick: false,
        parts: Vec::new(),
    };
    for a in std::env::args().skip(1) {
        match a.as_str() {
            "--quick" => args.quick = true,
            "-h" | "--help" => return Ok(None),
            part => match PARTS.iter().find(|p| **p == part) {
                Some(p) if !args.parts.contains(p) => args.parts.push(p),
                Some(_) => {}
                None => bail!("unknown argument {part:?}\n\n{USAGE}"),
            },
        }
    }
    if args.parts.is_empty() {
        args.parts = PARTS.to_vec();
    }
    // Always in the documented order, whatever the order given.
    args.parts
        .sort_by_key(|p| PARTS.iter().position(|q| q == p));
    Ok(Some(args))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("dsr-bench: {e:#}");
            return ExitCode::from(2);
        }
    };
    sys::catch_interrupts();
    let cpu = sys::bench_cpu();
    if let Err(e) = sys::pin_to_cpu(cpu) {
        eprintln!("dsr-bench: {e:#}");
        return ExitCode::FAILURE;
    }
    let machine = Machine::describe();
    let date = sys::utc_now();
    let size = if args.quick { "quick" } else { "full" };
    println!(
        "dsr-bench ({size} size), {date}\nmachine: {}\n",
        machine.one_line()
    );

    let started = Instant::now();
    let mut reports: Vec<PartReport> = Vec::new();
    let mut errors = Vec::new();
    for part in &args.parts {
        let t = Instant::now();
        println!("=== {part}");
        match run_part(part, args.quick, cpu) {
            Ok(r) => {
                print!("{}", r.render());
                for f in &r.failures {
                    println!("FUNCTIONAL PROBLEM: {f}");
                }
                reports.push(r);
            }
            Err(e) => {
                println!("part {part} failed: {e:#}");
                errors.push(format!("{part}: {e:#}"));
            }
        }
        println!("({part}: {:.1} s)\n", t.elapsed().as_secs_f64());
        if sys::check_interrupted().is_err() {
            break;
        }
    }
    if !reports.is_empty() {
        println!("{}", report::render_targets(&reports));
    }
    println!("total: {:.1} s", started.elapsed().as_secs_f64());

    let failures: usize = reports.iter().map(|r| r.failures.len()).sum();
    let full_run = !args.quick && args.parts.len() == PARTS.len();
    if full_run && errors.is_empty() {
        match write_benchmarks_md(&date, &machine, &reports) {
            Ok(path) => println!("wrote {}", path.display()),
            Err(e) => errors.push(format!("writing BENCHMARKS.md: {e:#}")),
        }
    } else if full_run {
        println!("BENCHMARKS.md not written: a part did not run");
    }
    if errors.is_empty() && failures == 0 {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "dsr-bench: {} part(s) failed to run, {failures} functional problem(s)",
            errors.len()
        );
        ExitCode::FAILURE
    }
}

fn run_part(part: &str, quick: bool, cpu: usize) -> Result<PartReport> {
    match (part, quick) {
        ("datapath", false) => datapath::run(&datapath::FULL, cpu),
        ("datapath", true) => datapath::run(&datapath::QUICK, cpu),
        ("forwarding", false) => forwarding::run(&forwarding::FULL, cpu),
        ("forwarding", true) => forwarding::run(&forwarding::QUICK, cpu),
        ("distribution", false) => distribution::run(&distribution::FULL),
        ("distribution", true) => distribution::run(&distribution::QUICK),
        ("controlplane", false) => controlplane::run(&controlplane::FULL, cpu),
        ("controlplane", true) => controlplane::run(&controlplane::QUICK, cpu),
        ("failover", false) => failover::run(&failover::FULL),
        ("failover", true) => failover::run(&failover::QUICK),
        _ => unreachable!("parts are validated by parse_args"),
    }
}

fn write_benchmarks_md(date: &str, machine: &Machine, reports: &[PartReport]) -> Result<PathBuf> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let this_run = if args.is_empty() {
        "dsr-bench (no arguments: every part, full size)".to_owned()
    } else {
        format!("dsr-bench {}", args.join(" "))
    };
    let commands = vec![
        "# every part, full size; writes this file".into(),
        "# (xtask runs: cargo run --release -p dsr-tests --bin dsr-bench --)".into(),
        "cargo xtask bench".into(),
        "# one part (prints only): datapath | forwarding | distribution | controlplane | failover"
            .into(),
        "cargo xtask bench datapath".into(),
        "# CI smoke size, prints only".into(),
        "cargo xtask bench --quick".into(),
        format!("# this file came from: {this_run}"),
    ];
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut md = report::markdown(date, machine, &revision(&root), &commands, reports);
    let failures: Vec<&String> = reports.iter().flat_map(|r| &r.failures).collect();
    if !failures.is_empty() {
        md += "\n## Functional problems seen in this run\n\n";
        for f in failures {
            md += &format!("- {f}\n");
        }
    }
    let path = root.join("BENCHMARKS.md");
    std::fs::write(&path, md)?;
    Ok(path.canonicalize().unwrap_or(path))
}

/// The commit measured, and whether the tree had changes on top of it (from git, if any).
fn revision(root: &Path) -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match (
        git(&["log", "-1", "--format=%h %s"]),
        git(&["status", "--porcelain"]),
    ) {
        (Some(head), Some(status)) if status.is_empty() => format!("commit {head}"),
        (Some(head), Some(status)) => format!(
            "commit {head}, plus {} uncommitted file(s)",
            status.lines().count()
        ),
        _ => "unknown (not a git checkout)".into(),
    }
}
