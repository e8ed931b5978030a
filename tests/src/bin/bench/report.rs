//! What a benchmark part hands back, and how it is shown: plain-text tables on stdout, and the
//! same tables inside BENCHMARKS.md. Parts only fill these structures; nothing here measures.

use std::fmt::Write as _;

/// One plain-text table: a title, column headers, rows of already formatted cells.
pub struct Table {
    pub title: String,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
    /// Leading columns that are labels (left-aligned); the rest are figures.
    label_columns: usize,
}

impl Table {
    pub fn new(title: impl Into<String>, header: &[&str]) -> Self {
        Table {
            title: title.into(),
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
            label_columns: 1,
        }
    }

    /// The first `n` columns are labels (left-aligned).
    pub fn labels(mut self, n: usize) -> Self {
        self.label_columns = n;
        self
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.header.len(), "row width");
        self.rows.push(cells);
    }

    /// Columns padded to their widest cell; labels left-aligned, figures right-aligned.
    pub fn render(&self) -> String {
        let cols = self.header.len();
        let mut width = vec![0usize; cols];
        for line in std::iter::once(&self.header).chain(&self.rows) {
            for (w, cell) in width.iter_mut().zip(line) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = format!("{}\n", self.title);
        let line = |cells: &[String]| {
            let mut s = String::new();
            for (i, (cell, w)) in cells.iter().zip(&width).enumerate() {
                let pad = w - cell.chars().count();
                if i > 0 {
                    s += "  ";
                }
                if i < self.label_columns {
                    s += cell;
                    s += &" ".repeat(pad);
                } else {
                    s += &" ".repeat(pad);
                    s += cell;
                }
            }
            s.trim_end().to_owned() + "\n"
        };
        out += &line(&self.header);
        out += &format!(
            "{}\n",
            "-".repeat(width.iter().sum::<usize>() + 2 * (cols - 1))
        );
        for row in &self.rows {
            out += &line(row);
        }
        out
    }
}

/// A target from the issue, with what this run measured.
pub struct Target {
    pub what: String,
    pub target: String,
    pub measured: String,
    pub met: bool,
}

impl Target {
    pub fn new(what: impl Into<String>, target: &str, measured: String, met: bool) -> Self {
        Target {
            what: what.into(),
            target: target.to_owned(),
            measured,
            met,
        }
    }
}

/// Everything one part produced.
pub struct PartReport {
    pub name: &'static str,
    pub title: &'static str,
    /// How the figures were obtained; printed above the tables.
    pub method: Vec<String>,
    pub tables: Vec<Table>,
    /// Lines printed under the tables (reference figures, plain statements).
    pub notes: Vec<String>,
    pub targets: Vec<Target>,
    /// Functional problems (wrong verdict, nothing delivered...): the run exits nonzero.
    pub failures: Vec<String>,
}

impl PartReport {
    pub fn new(name: &'static str, title: &'static str) -> Self {
        PartReport {
            name,
            title,
            method: Vec::new(),
            tables: Vec::new(),
            notes: Vec::new(),
            targets: Vec::new(),
            failures: Vec::new(),
        }
    }

    /// The part as plain text (stdout, and the body of its BENCHMARKS.md section).
    pub fn render(&self) -> String {
        let mut out = String::new();
        for m in &self.method {
            let _ = writeln!(out, "method: {m}");
        }
        for t in &self.tables {
            out += "\n";
            out += &t.render();
        }
        if !self.notes.is_empty() {
            out += "\n";
            for n in &self.notes {
                let _ = writeln!(out, "{n}");
            }
        }
        out
    }
}

/// Targets as plain text (stdout).
pub fn render_targets(parts: &[PartReport]) -> String {
    let mut t = Table::new(
        "targets",
        &["part", "target", "wanted", "measured", "result"],
    )
    .labels(2);
    for p in parts {
        for target in &p.targets {
            t.row(vec![
                p.name.to_owned(),
                target.what.clone(),
                target.target.clone(),
                target.measured.clone(),
                met(target.met).to_owned(),
            ]);
        }
    }
    t.render()
}

fn met(m: bool) -> &'static str {
    if m { "met" } else { "MISSED" }
}

/// The machine the figures come from.
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub memory: String,
}

impl Machine {
    pub fn describe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, m)| m.trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into());
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                let kb: u64 = m
                    .lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))?
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .ok()?;
                Some(format!("{:.1} GiB", kb as f64 / (1024.0 * 1024.0)))
            })
            .unwrap_or_else(|| "unknown".into());
        Machine {
            nproc: crate::sys::online_cpus(),
            cpu_model,
            kernel,
            memory,
        }
    }

    pub fn one_line(&self) -> String {
        format!(
            "{} CPUs ({}), {} RAM, kernel {}",
            self.nproc, self.cpu_model, self.memory, self.kernel
        )
    }
}

/// BENCHMARKS.md: title, date, machine, commands, every part's tables, and the targets.
pub fn markdown(
    date: &str,
    machine: &Machine,
    code: &str,
    commands: &[String],
    parts: &[PartReport],
) -> String {
    let mut md = String::from("# dsr benchmarks\n\n");
    md += "Written by `cargo xtask bench` (the `dsr-bench` binary, tests/src/bin/bench.rs); \
           every full run overwrites this file. Figures from one run on one machine: on this \
           2-vCPU virtual machine the noise is large (see PLATFORM.md), so read ratios \
           measured in the same run rather than absolute figures.\n\n";
    let _ = writeln!(md, "- Date: {date}");
    let _ = writeln!(md, "- Code: {code}");
    let _ = writeln!(md, "- Machine: nproc = {}", machine.nproc);
    let _ = writeln!(md, "  - CPU model: {}", machine.cpu_model);
    let _ = writeln!(md, "  - Memory: {}", machine.memory);
    let _ = writeln!(md, "  - Kernel (`uname -r`): {}", machine.kernel);
    md += "\n## Commands\n\n```sh\n";
    for c in commands {
        let _ = writeln!(md, "{c}");
    }
    md += "```\n";
    for p in parts {
        let _ = write!(md, "\n## {} (`dsr-bench {}`)\n\n", p.title, p.name);
        md += "```text\n";
        md += &p.render();
        md += "```\n";
    }
    md += "\n## Targets\n\n| part | target | wanted | measured | result |\n|---|---|---|---|---|\n";
    for p in parts {
        for t in &p.targets {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                p.name,
                t.what,
                t.target,
                t.measured,
                met(t.met)
            );
        }
    }
    md
}

/// "1.23x" style ratio.
pub fn ratio(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}x")
    } else {
        "n/a".into()
    }
}

/// A duration in nanoseconds, with a precision that suits its size.
pub fn ns(x: f64) -> String {
    if x.is_nan() {
        "-".into()
    } else if x.abs() < 10.0 {
        format!("{x:.1} ns")
    } else {
        format!("{x:.0} ns")
    }
}

/// Milliseconds with 3 significant-ish decimals.
pub fn ms(x: f64) -> String {
    if x < 1.0 {
        format!("{x:.3} ms")
    } else if x < 100.0 {
        format!("{x:.2} ms")
    } else {
        format!("{x:.0} ms")
    }
}

pub fn percent(x: f64) -> String {
    if x.abs() < 0.1 && x != 0.0 {
        format!("{x:.3}%")
    } else {
        format!("{x:.2}%")
    }
}

/// Packets per second as Mpps / kpps.
pub fn pps(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2} Mpps", x / 1e6)
    } else {
        format!("{:.0} kpps", x / 1e3)
    }
}

pub fn bytes(x: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if x as f64 >= MIB {
        format!("{:.1} MiB", x as f64 / MIB)
    } else {
        format!("{:.1} KiB", x as f64 / 1024.0)
    }
}
