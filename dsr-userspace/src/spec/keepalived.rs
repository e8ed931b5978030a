//! `dsr import keepalived FILE`: the LVS-DR part of a keepalived.conf as a dsr config.
//!
//! keepalived's syntax is parsed as it is written: one directive a line (`name args`), blocks
//! `name args { ... }` (the brace may stand on the next line), `!` and `#` comments, quoted
//! strings, `$NAME=value` definitions and `include` (and its variants) with globs relative to
//! the including file. `@id` conditional lines need keepalived's `--config-id` and are left
//! out with a note. The result is TOML text with a comment for every setting that has no
//! exact equivalent, and it has passed `toml_file::parse` (the one validation) before it is
//! returned.
//!
//! A `virtual_server` that is not Direct Server Return (`lb_kind NAT`, keepalived's default,
//! or `TUN`) is refused by default, naming its file and line: dsr only rewrites MAC
//! addresses, so converting a NAT setup silently would produce a config that `dsr check`
//! accepts and that cannot work (the real servers answer through the load balancer and do not
//! hold the VIP). [`NonDr::Skip`] leaves such virtual servers out with a comment, and
//! [`NonDr::AsDr`] converts them for an operator who turns the real servers into DSR backends.

use std::{
    collections::HashMap,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Component, Path, PathBuf},
    rc::Rc,
};

use crate::spec::toml_file::{self, ConfigError};
use crate::spec::validate::MIN_CHECK_INTERVAL;

/// What to do with a virtual server (or real server) that is not `lb_kind DR`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NonDr {
    /// An error naming the file and line (the default).
    #[default]
    Refuse,
    /// Left out, with a comment in the output.
    Skip,
    /// Converted as if it were DR, with a comment (the real servers must then be DSR backends).
    AsDr,
}

#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The interface for VIPs that no `vrrp_instance` holds.
    pub interface: Option<String>,
    pub non_dr: NonDr,
}

/// Converts the keepalived config at `path` (and what it includes) into dsr config text.
pub fn convert(path: &Path, opts: &Options) -> Result<String, ConfigError> {
    let mut parser = Parser::default();
    let nodes = parser.file(path, 0)?;
    let text = Converter {
        opts,
        notes: Notes::default(),
        parse_notes: parser.notes,
    }
    .run(&nodes, path)?;
    if let Err(e) = toml_file::parse(&text, Path::new("(converted)")) {
        return Err(ConfigError {
            file: path.to_owned(),
            line: None,
            message: format!("the converted config is refused by dsr: {e}"),
        });
    }
    Ok(text)
}

// ---------------------------------------------------------------------------------------
// keepalived's syntax

#[derive(Debug, Clone)]
struct Node {
    key: String,
    args: Vec<String>,
    block: Option<Vec<Node>>,
    file: Rc<PathBuf>,
    line: usize,
}

impl Node {
    /// `file:line`, the file by its name (comments stay short).
    fn at(&self) -> String {
        let name = self.file.file_name().map_or_else(
            || self.file.display().to_string(),
            |n| n.to_string_lossy().into(),
        );
        format!("{name}:{}", self.line)
    }
    fn err(&self, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: (*self.file).clone(),
            line: Some(self.line),
            message: message.into(),
        }
    }
    fn children(&self) -> &[Node] {
        self.block.as_deref().unwrap_or(&[])
    }
    /// The directive as written (without its block).
    fn text(&self) -> String {
        std::iter::once(self.key.as_str())
            .chain(self.args.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ")
    }
    fn arg(&self) -> Result<&str, ConfigError> {
        self.args
            .first()
            .map(String::as_str)
            .ok_or_else(|| self.err(format!("{} needs a value", self.key)))
    }
    fn int(&self) -> Result<u64, ConfigError> {
        let a = self.arg()?;
        a.parse()
            .map_err(|_| self.err(format!("{} {a:?} is not a number", self.key)))
    }
    /// A keepalived TIMER: seconds, possibly fractional; in milliseconds.
    fn timer(&self) -> Result<u64, ConfigError> {
        let a = self.arg()?;
        match a.parse::<f64>() {
            Ok(s) if s.is_finite() && (0.0..=1e6).contains(&s) => Ok((s * 1000.0).round() as u64),
            _ => Err(self.err(format!("{} {a:?} is not a number of seconds", self.key))),
        }
    }
    /// A keepalived flag that may carry a BOOL (`inhibit_on_failure [true|false]`).
    fn flag(&self) -> Result<bool, ConfigError> {
        match self.args.first().map(|a| a.to_ascii_lowercase()) {
            None => Ok(true),
            Some(a) if ["true", "on", "yes", "1"].contains(&a.as_str()) => Ok(true),
            Some(a) if ["false", "off", "no", "0"].contains(&a.as_str()) => Ok(false),
            Some(a) => Err(self.err(format!("{} {a:?} is not a boolean", self.key))),
        }
    }
}

#[derive(Debug, PartialEq)]
enum Tok {
    Word(String),
    Open,
    Close,
}

/// One line's tokens: words, quoted strings and braces, up to a `!` or `#` comment.
fn tokenize(line: &str) -> Result<Vec<Tok>, String> {
    let mut toks = Vec::new();
    let mut chars = line.chars().peekable();
    let mut word = String::new();
    let flush = |word: &mut String, toks: &mut Vec<Tok>| {
        if !word.is_empty() {
            toks.push(Tok::Word(std::mem::take(word)));
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '!' | '#' => break,
            '"' => {
                flush(&mut word, &mut toks);
                let mut s = String::new();
                loop {
                    match chars.next() {
                        None => return Err("unterminated quoted string".into()),
                        Some('"') => break,
                        Some('\\') if chars.peek() == Some(&'"') => {
                            s.push('"');
                            chars.next();
                        }
                        Some(c) => s.push(c),
                    }
                }
                toks.push(Tok::Word(s));
            }
            '{' => {
                flush(&mut word, &mut toks);
                toks.push(Tok::Open);
            }
            '}' => {
                flush(&mut word, &mut toks);
                toks.push(Tok::Close);
            }
            c if c.is_whitespace() => flush(&mut word, &mut toks),
            c => word.push(c),
        }
    }
    flush(&mut word, &mut toks);
    Ok(toks)
}

const INCLUDES: [&str; 6] = [
    "include", "includer", "includem", "includew", "includeb", "includea",
];
const MAX_INCLUDE_DEPTH: usize = 16;

#[derive(Default)]
struct Parser {
    vars: HashMap<String, String>,
    /// Things the parser left out, for the output's header.
    notes: Vec<String>,
}

impl Parser {
    fn file(&mut self, path: &Path, depth: usize) -> Result<Vec<Node>, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            line: None,
            message: format!("cannot read: {e}"),
        })?;
        self.text(&text, path, depth)
    }

    fn text(&mut self, text: &str, path: &Path, depth: usize) -> Result<Vec<Node>, ConfigError> {
        let file = Rc::new(path.to_owned());
        let mut levels: Vec<Vec<Node>> = vec![Vec::new()];
        let mut open: Vec<Node> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let err = |message: String| ConfigError {
                file: path.to_owned(),
                line: Some(line),
                message,
            };
            let trimmed = raw.trim_start();
            if trimmed.starts_with('@') {
                self.notes.push(format!(
                    "{}:{line}: conditional line `{}` left out (it depends on keepalived's \
                     --config-id)",
                    file_name(path),
                    trimmed.trim_end()
                ));
                continue;
            }
            if let Some(def) = trimmed.strip_prefix('$')
                && let Some((name, value)) = def.split_once('=')
                && !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                self.vars.insert(name.into(), value.trim().into());
                continue;
            }
            let line_text = self.substitute(raw);
            let mut words = Vec::new();
            for tok in tokenize(&line_text).map_err(err)? {
                match tok {
                    Tok::Word(w) => words.push(w),
                    Tok::Open => {
                        let node = if words.is_empty() {
                            // `name args` on one line, `{` on the next.
                            let level = levels.last_mut().expect("a level");
                            match level.last() {
                                Some(n) if n.block.is_none() => level.pop().expect("a node"),
                                _ => return Err(err("`{` without a keyword before it".into())),
                            }
                        } else {
                            let w = std::mem::take(&mut words);
                            if INCLUDES.contains(&w[0].as_str()) {
                                return Err(err(format!("{} cannot open a block", w[0])));
                            }
                            node(w, &file, line)
                        };
                        open.push(node);
                        levels.push(Vec::new());
                    }
                    Tok::Close => {
                        let w = std::mem::take(&mut words);
                        self.push(levels.last_mut().expect("a level"), w, &file, line, depth)?;
                        let Some(mut n) = open.pop() else {
                            return Err(err("`}` closes no block".into()));
                        };
                        n.block = Some(levels.pop().expect("a level"));
                        levels.last_mut().expect("a level").push(n);
                    }
                }
            }
            self.push(
                levels.last_mut().expect("a level"),
                words,
                &file,
                line,
                depth,
            )?;
        }
        if let Some(n) = open.last() {
            return Err(n.err(format!("block `{}` is not closed", n.text())));
        }
        Ok(levels.pop().expect("the top level"))
    }

    /// Adds a directive to `level`; an `include` adds the included files' directives.
    fn push(
        &mut self,
        level: &mut Vec<Node>,
        words: Vec<String>,
        file: &Rc<PathBuf>,
        line: usize,
        depth: usize,
    ) -> Result<(), ConfigError> {
        if words.is_empty() {
            return Ok(());
        }
        if !INCLUDES.contains(&words[0].as_str()) {
            level.push(node(words, file, line));
            return Ok(());
        }
        let at = node(words.clone(), file, line);
        if depth >= MAX_INCLUDE_DEPTH {
            return Err(at.err(format!(
                "includes nested deeper than {MAX_INCLUDE_DEPTH} (does a file include itself?)"
            )));
        }
        let dir = file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        for pattern in &words[1..] {
            let found = glob(dir, pattern);
            if found.is_empty() {
                self.notes.push(format!(
                    "{}: {} {pattern}: no file matches (keepalived warns and goes on)",
                    at.at(),
                    words[0]
                ));
            }
            for f in found {
                let nodes = self.file(&f, depth + 1)?;
                level.extend(nodes);
            }
        }
        Ok(())
    }

    /// `$NAME` and `${NAME}` replaced by their definitions.
    fn substitute(&self, line: &str) -> String {
        if self.vars.is_empty() || !line.contains('$') {
            return line.to_owned();
        }
        let mut out = line.to_owned();
        // Longest names first, so that $AB is not taken for $A followed by B.
        let mut names: Vec<&String> = self.vars.keys().collect();
        names.sort_by_key(|n| std::cmp::Reverse(n.len()));
        for name in names {
            let value = &self.vars[name];
            out = out
                .replace(&format!("${{{name}}}"), value)
                .replace(&format!("${name}"), value);
        }
        out
    }
}

fn node(mut words: Vec<String>, file: &Rc<PathBuf>, line: usize) -> Node {
    let key = words.remove(0);
    Node {
        key,
        args: words,
        block: None,
        file: file.clone(),
        line,
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into(),
    )
}

/// The files matching a shell pattern (`*`, `?`, `[...]` in any component), sorted; relative
/// patterns are relative to `dir`.
fn glob(dir: &Path, pattern: &str) -> Vec<PathBuf> {
    let full = if Path::new(pattern).is_absolute() {
        PathBuf::from(pattern)
    } else {
        dir.join(pattern)
    };
    let mut paths = vec![PathBuf::new()];
    for comp in full.components() {
        let s = comp.as_os_str().to_string_lossy().into_owned();
        let wild = matches!(comp, Component::Normal(_)) && s.contains(['*', '?', '[']);
        let mut next = Vec::new();
        for p in &paths {
            if !wild {
                next.push(p.join(comp));
                continue;
            }
            let read = if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            };
            let Ok(entries) = std::fs::read_dir(read) else {
                continue;
            };
            let mut names: Vec<String> = entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| (!n.starts_with('.') || s.starts_with('.')) && wildmatch(&s, n))
                .collect();
            names.sort();
            next.extend(names.into_iter().map(|n| p.join(n)));
        }
        paths = next;
    }
    paths.retain(|p| p.is_file());
    paths
}

fn wildmatch(pattern: &str, name: &str) -> bool {
    fn m(p: &[char], s: &[char]) -> bool {
        match p.first() {
            None => s.is_empty(),
            Some('*') => (0..=s.len()).any(|i| m(&p[1..], &s[i..])),
            Some('?') => !s.is_empty() && m(&p[1..], &s[1..]),
            Some('[') => {
                let negate = matches!(p.get(1), Some('!' | '^'));
                let start = if negate { 2 } else { 1 };
                // A `]` right after `[` (or `[!`) is a member, not the end.
                let Some(len) = p.iter().skip(start + 1).position(|&c| c == ']') else {
                    return s.first() == Some(&'[') && m(&p[1..], &s[1..]);
                };
                let set = &p[start..start + 1 + len];
                let Some(&c) = s.first() else { return false };
                let mut hit = false;
                let mut i = 0;
                while i < set.len() {
                    if i + 2 < set.len() && set[i + 1] == '-' {
                        hit |= set[i] <= c && c <= set[i + 2];
                        i += 3;
                    } else {
                        hit |= set[i] == c;
                        i += 1;
                    }
                }
                hit != negate && m(&p[start + 2 + len..], &s[1..])
            }
            Some(&c) => s.first() == Some(&c) && m(&p[1..], &s[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = name.chars().collect();
    m(&p, &s)
}

// ---------------------------------------------------------------------------------------
// The conversion

/// Comments, each with where its directive was written; the same comment for several
/// directives (every real server's `delay_before_retry 3`) is written once.
#[derive(Default)]
struct Notes(Vec<(String, String, usize)>);

impl Notes {
    fn add(&mut self, n: &Node, why: impl AsRef<str>) {
        let text = format!("`{}`: {}", n.text(), why.as_ref());
        self.add_text(n.at(), text);
    }
    fn add_text(&mut self, at: String, text: String) {
        match self.0.iter_mut().find(|(t, _, _)| *t == text) {
            Some(e) => e.2 += 1,
            None => self.0.push((text, at, 0)),
        }
    }
    fn render(&self, out: &mut String, indent: &str) {
        for (text, at, more) in &self.0 {
            let more = match more {
                0 => String::new(),
                1 => " (and 1 more like it)".into(),
                n => format!(" (and {n} more like it)"),
            };
            comment(out, indent, &format!("{at}: {text}{more}"));
        }
    }
}

/// A `# ...` comment, wrapped at about 100 columns.
fn comment(out: &mut String, indent: &str, text: &str) {
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && indent.len() + line.len() + word.len() > 96 {
            let _ = writeln!(out, "{indent}# {line}");
            line = "  ".into();
        }
        if !line.trim().is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    let _ = writeln!(out, "{indent}# {line}");
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn duration(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Kind {
    None,
    Tcp,
    Http {
        path: String,
        status: u16,
        host: Option<String>,
    },
}

#[derive(Clone, Debug, PartialEq)]
struct Check {
    kind: Kind,
    /// The port keepalived connects to (`connect_port`, else the real server's port).
    port: Option<u16>,
    interval_ms: u64,
    timeout_ms: u64,
    fall: u32,
}

/// keepalived's checker timings, from the virtual server, the real server, the checker.
#[derive(Clone, Copy, Default)]
struct Timers {
    delay_loop: Option<u64>,
    connect_timeout: Option<u64>,
    retry: Option<u64>,
}

const KEEPALIVED_DELAY_LOOP_MS: u64 = 60_000;
const KEEPALIVED_CONNECT_TIMEOUT_MS: u64 = 5_000;

impl Timers {
    /// Takes a timing directive; false if `n` is not one.
    fn take(&mut self, n: &Node, notes: &mut Notes) -> Result<bool, ConfigError> {
        match n.key.as_str() {
            "delay_loop" => self.delay_loop = Some(n.timer()?),
            "connect_timeout" => self.connect_timeout = Some(n.timer()?),
            "retry" | "nb_get_retry" => self.retry = Some(n.int()?),
            "delay_before_retry" => notes.add(
                n,
                "no equivalent: dsr checks every interval, failed or not, and takes a backend \
                 down after `fall` failures in a row (keepalived retries after this delay)",
            ),
            "warmup" => notes.add(
                n,
                "no equivalent: dsr spreads its first checks by itself and does not delay them",
            ),
            _ => return Ok(false),
        }
        Ok(true)
    }
    fn over(self, base: Timers) -> Timers {
        Timers {
            delay_loop: self.delay_loop.or(base.delay_loop),
            connect_timeout: self.connect_timeout.or(base.connect_timeout),
            retry: self.retry.or(base.retry),
        }
    }
}

struct Backend {
    address: IpAddr,
    port: Option<u16>,
    weight: u32,
    inhibit: Option<bool>,
    sorry: bool,
    /// None: keepalived has no checker for it (always up).
    check: Option<Check>,
    notes: Notes,
    at: String,
}

/// One converted virtual server, before it is written once per address/port it serves.
struct Vip {
    protocol: &'static str,
    hash: Option<&'static str>,
    inhibit: bool,
    backends: Vec<Backend>,
    notes: Notes,
}

struct Target {
    address: IpAddr,
    /// 0: every port.
    port: u16,
    at: String,
    /// What the target came from, for the VIP's first comment.
    what: String,
}

struct Converter<'a> {
    opts: &'a Options,
    /// File-wide comments.
    notes: Notes,
    parse_notes: Vec<String>,
}

impl Converter<'_> {
    fn run(mut self, nodes: &[Node], path: &Path) -> Result<String, ConfigError> {
        // Address -> (interface, where): which vrrp_instance holds each address.
        let mut vrrp: HashMap<IpAddr, (String, String)> = HashMap::new();
        let mut groups: HashMap<&str, &Node> = HashMap::new();
        let mut skipped_blocks: Vec<&str> = Vec::new();
        for n in nodes {
            match n.key.as_str() {
                "vrrp_instance" => {
                    if !skipped_blocks.contains(&"vrrp_instance") {
                        skipped_blocks.push("vrrp_instance");
                    }
                    let iface = n
                        .children()
                        .iter()
                        .find(|c| c.key == "interface")
                        .and_then(|c| c.args.first().cloned());
                    for block in n.children().iter().filter(|c| {
                        c.key == "virtual_ipaddress" || c.key == "virtual_ipaddress_excluded"
                    }) {
                        for a in block.children() {
                            let addr = a.key.split('/').next().unwrap_or_default();
                            let Ok(addr) = addr.parse::<IpAddr>() else {
                                continue;
                            };
                            let dev = a
                                .args
                                .iter()
                                .position(|w| w == "dev")
                                .and_then(|i| a.args.get(i + 1).cloned());
                            if let Some(iface) = dev.or_else(|| iface.clone()) {
                                let what = format!(
                                    "vrrp_instance {} ({})",
                                    n.args.first().map_or("", String::as_str),
                                    a.at()
                                );
                                vrrp.entry(addr).or_insert((iface, what));
                            }
                        }
                    }
                }
                "virtual_server_group" => {
                    let name = n.arg()?;
                    groups.insert(name, n);
                }
                "virtual_server" => {}
                other => {
                    if !skipped_blocks.contains(&other) {
                        skipped_blocks.push(other);
                    }
                }
            }
        }

        let mut out_vips: Vec<(Target, String)> = Vec::new();
        let mut iface: Option<(String, String)> = None;
        for vs in nodes.iter().filter(|n| n.key == "virtual_server") {
            let Some(targets) = self.targets(vs, &groups)? else {
                continue;
            };
            let Some(vip) = self.virtual_server(vs)? else {
                continue;
            };
            for t in targets {
                let (name, why) = match (vrrp.get(&t.address), &self.opts.interface) {
                    (Some((i, what)), _) => (i.clone(), format!("{what} holds {}", t.address)),
                    (None, Some(i)) => (i.clone(), format!("--interface {i}")),
                    (None, None) => {
                        return Err(vs.err(format!(
                            "VIP {}: no vrrp_instance holds this address in its \
                             virtual_ipaddress; give --interface IFACE (where its traffic \
                             arrives)",
                            t.address
                        )));
                    }
                };
                match &iface {
                    None => iface = Some((name, why)),
                    Some((first, first_why)) if *first != name => {
                        return Err(vs.err(format!(
                            "VIP {} arrives on {name} ({why}) but another on {first} \
                             ({first_why}): one dsr instance attaches to one interface; \
                             split the config into one instance per interface",
                            t.address
                        )));
                    }
                    Some(_) => {}
                }
                let text = self.render_vip(&t, &vip);
                out_vips.push((t, text));
            }
        }
        let (iface, why) = match iface {
            Some(i) => i,
            None => match &self.opts.interface {
                Some(i) => (i.clone(), format!("--interface {i}")),
                None => match vrrp.values().next() {
                    Some((i, what)) if vrrp.values().all(|(j, _)| j == i) => {
                        (i.clone(), what.clone())
                    }
                    _ => {
                        return Err(ConfigError {
                            file: path.to_owned(),
                            line: None,
                            message: "no VIP was converted to say which interface to use; give \
                                      --interface IFACE"
                                .into(),
                        });
                    }
                },
            },
        };

        let mut out = String::new();
        comment(
            &mut out,
            "",
            &format!(
                "Converted from {} by `dsr import keepalived`. Review the comments: each names \
                 the keepalived line whose setting has no exact equivalent, and why.",
                path.display()
            ),
        );
        if !skipped_blocks.is_empty() {
            comment(
                &mut out,
                "",
                &format!(
                    "Not converted: {}. dsr does not run VRRP or move addresses: keep \
                     keepalived (without its virtual_server blocks) to hold the VIPs on this \
                     node, or route them here.",
                    skipped_blocks.join(", ")
                ),
            );
        }
        for n in &self.parse_notes {
            comment(&mut out, "", n);
        }
        self.notes.render(&mut out, "");
        comment(&mut out, "", &format!("interface: {why}"));
        let _ = writeln!(out, "interface = {}", toml_str(&iface));
        for (_, text) in &out_vips {
            out.push('\n');
            out.push_str(text);
        }
        Ok(out)
    }

    /// The addresses and ports a virtual_server serves; None: not converted (noted).
    fn targets(
        &mut self,
        vs: &Node,
        groups: &HashMap<&str, &Node>,
    ) -> Result<Option<Vec<Target>>, ConfigError> {
        let first = vs.arg()?;
        let port_of = |n: &Node, s: Option<&String>| -> Result<u16, ConfigError> {
            match s {
                None => Ok(0),
                Some(p) => p
                    .parse()
                    .map_err(|_| n.err(format!("port {p:?} is not 0..=65535"))),
            }
        };
        match first {
            "fwmark" => {
                self.notes.add(vs, FWMARK);
                Ok(None)
            }
            "group" => {
                let name = vs
                    .args
                    .get(1)
                    .ok_or_else(|| vs.err("virtual_server group needs a group name"))?;
                let g = groups.get(name.as_str()).ok_or_else(|| {
                    vs.err(format!("no virtual_server_group {name:?} is defined"))
                })?;
                let mut targets = Vec::new();
                for e in g.children() {
                    if e.key == "fwmark" {
                        self.notes.add(e, FWMARK);
                        continue;
                    }
                    let port = port_of(e, e.args.first())?;
                    for address in addresses(e)? {
                        targets.push(Target {
                            address,
                            port,
                            at: e.at(),
                            what: format!("virtual_server group {name}: {}", e.text()),
                        });
                    }
                }
                Ok(Some(targets))
            }
            addr => {
                let address = addr
                    .parse::<IpAddr>()
                    .map_err(|_| vs.err(format!("virtual_server {addr:?} is not an IP address")))?;
                Ok(Some(vec![Target {
                    address,
                    port: port_of(vs, vs.args.get(1))?,
                    at: vs.at(),
                    what: vs.text(),
                }]))
            }
        }
    }

    /// Whether a forwarding method is converted (DR, or NAT/TUN with `AsDr`); an error or a
    /// note otherwise.
    fn forwarding(
        &mut self,
        n: &Node,
        what: &str,
        kind: Option<&Node>,
    ) -> Result<bool, ConfigError> {
        let (method, at) = match kind {
            Some(k) => (k.arg()?.to_ascii_uppercase(), k),
            None => ("NAT".to_owned(), n),
        };
        if method == "DR" {
            return Ok(true);
        }
        let implied = if kind.is_none() {
            " (no lb_kind: keepalived's default)"
        } else {
            ""
        };
        let why = format!(
            "{what}: lb_kind {method}{implied} is not Direct Server Return: dsr only rewrites \
             MAC addresses, so the real servers must be on this node's network, hold the VIP on \
             lo and answer clients directly (`dsr realserver setup`)"
        );
        match self.opts.non_dr {
            NonDr::Refuse => Err(at.err(format!(
                "{why}; convert it anyway with --non-dr as-dr, or leave it out with --non-dr skip"
            ))),
            NonDr::Skip => {
                self.notes
                    .add_text(at.at(), format!("{why}; left out (--non-dr skip)"));
                Ok(false)
            }
            NonDr::AsDr => {
                self.notes.add_text(
                    at.at(),
                    format!(
                        "{why}; converted as DR (--non-dr as-dr): set the real servers up for DSR"
                    ),
                );
                Ok(true)
            }
        }
    }

    fn virtual_server(&mut self, vs: &Node) -> Result<Option<Vip>, ConfigError> {
        let kind = vs
            .children()
            .iter()
            .rfind(|c| c.key == "lb_kind" || c.key == "lvs_method");
        if !self.forwarding(vs, &format!("virtual_server {}", vs.args.join(" ")), kind)? {
            return Ok(None);
        }
        let mut vip = Vip {
            protocol: "tcp",
            hash: None,
            inhibit: false,
            backends: Vec::new(),
            notes: Notes::default(),
        };
        let mut timers = Timers::default();
        let mut vhost: Option<String> = None;
        let (mut algo, mut hash_ports) = (None::<&Node>, false);
        let mut persistence = false;
        // First the settings real servers inherit, then the real servers.
        for c in vs.children() {
            if timers.take(c, &mut vip.notes)? {
                continue;
            }
            match c.key.as_str() {
                "virtualhost" => vhost = Some(c.arg()?.to_owned()),
                "protocol" => {
                    vip.protocol = match c.arg()?.to_ascii_uppercase().as_str() {
                        "TCP" => "tcp",
                        "UDP" => "udp",
                        other => {
                            return Err(
                                c.err(format!("protocol {other}: dsr balances TCP and UDP only"))
                            );
                        }
                    }
                }
                "lb_algo" | "lvs_sched" => algo = Some(c),
                "sh-port" | "mh-port" => hash_ports = true,
                "persistence_timeout" => {
                    persistence = true;
                    vip.notes.add(
                        c,
                        "hash = \"source\": a client's connections go to one backend by \
                         consistent hashing on its address, with no timeout to expire (they \
                         move only when that backend's health or weight changes the table)",
                    );
                }
                "persistence_granularity" => vip.notes.add(
                    c,
                    "no equivalent: hash = \"source\" hashes the whole client address (a \
                     netmask is not applied)",
                ),
                "inhibit_on_failure" => vip.inhibit = c.flag()?,
                "lb_kind" | "lvs_method" | "real_server" | "sorry_server" => {}
                "sorry_server_inhibit" => vip.notes.add(
                    c,
                    "no equivalent needed: dsr does not check a sorry server without a check \
                     of its own, so it never fails",
                ),
                "sorry_server_lvs_method" => vip.notes.add(
                    c,
                    "the sorry server is a DSR backend like the others (it must hold the VIP \
                     on lo)",
                ),
                "ops" => vip.notes.add(
                    c,
                    "no equivalent: dsr places every packet by hashing its flow, so the \
                     packets of one UDP flow reach one backend (conntrack = false skips the \
                     flow table)",
                ),
                "alpha" => vip.notes.add(
                    c,
                    "no equivalent: dsr starts checked backends as up and takes them down \
                     after `fall` failed checks",
                ),
                "quorum" | "hysteresis" | "quorum_up" | "quorum_down" => vip.notes.add(
                    c,
                    "no equivalent: dsr has no quorum; backups (backup = true) and the sorry \
                     server take new flows when no primary is usable",
                ),
                "omega" | "ha_suspend" | "smtp_alert" | "snmp_name" | "ip_family"
                | "persistence_engine" | "flag-1" | "flag-2" | "flag-3" | "sh-fallback"
                | "mh-fallback" => vip.notes.add(c, "no equivalent in dsr; left out"),
                _ => vip.notes.add(c, "not converted (unknown to the importer)"),
            }
        }
        vip.hash = match algo.map(|a| a.args.first().map(|s| s.to_ascii_lowercase())) {
            Some(Some(a)) => {
                let a_node = algo.expect("algo");
                let (hash, why) = scheduler(&a, hash_ports);
                vip.notes.add(a_node, why);
                hash
            }
            _ => None,
        };
        if persistence {
            vip.hash = Some("source");
        }
        let mut sorry = Vec::new();
        for c in vs.children() {
            match c.key.as_str() {
                "real_server" => {
                    if let Some(b) = self.real_server(c, vs, timers, vhost.as_deref(), &mut vip)? {
                        vip.backends.push(b);
                    }
                }
                "sorry_server" => {
                    let address = c.arg()?.parse::<IpAddr>().map_err(|_| {
                        c.err(format!("sorry_server {:?} is not an IP address", c.args[0]))
                    })?;
                    let port = c
                        .args
                        .get(1)
                        .map(|p| {
                            p.parse::<u16>()
                                .map_err(|_| c.err(format!("port {p:?} is not 0..=65535")))
                        })
                        .transpose()?;
                    let mut notes = Notes::default();
                    notes.add(
                        c,
                        "sorry = true: gets new flows only when no primary or backup is \
                         usable; not checked (as in keepalived)",
                    );
                    sorry.push(Backend {
                        address,
                        port,
                        weight: 1,
                        inhibit: None,
                        sorry: true,
                        check: None,
                        notes,
                        at: c.at(),
                    });
                }
                _ => {}
            }
        }
        // Written after the real servers, whatever the order in the file.
        vip.backends.extend(sorry);
        Ok(Some(vip))
    }

    fn real_server(
        &mut self,
        rs: &Node,
        vs: &Node,
        vs_timers: Timers,
        vs_vhost: Option<&str>,
        vip: &mut Vip,
    ) -> Result<Option<Backend>, ConfigError> {
        let address = rs
            .arg()?
            .parse::<IpAddr>()
            .map_err(|_| rs.err(format!("real_server {:?} is not an IP address", rs.args[0])))?;
        let port = rs
            .args
            .get(1)
            .map(|p| {
                p.parse::<u16>()
                    .map_err(|_| rs.err(format!("port {p:?} is not 0..=65535")))
            })
            .transpose()?;
        if let Some(kind) = rs.children().iter().rfind(|c| c.key == "lvs_method")
            && !self.forwarding(
                vs,
                &format!("real_server {}", rs.args.join(" ")),
                Some(kind),
            )?
        {
            return Ok(None);
        }
        let mut b = Backend {
            address,
            port,
            weight: 1,
            inhibit: None,
            sorry: false,
            check: None,
            notes: Notes::default(),
            at: rs.at(),
        };
        let mut timers = Timers::default();
        let mut vhost = vs_vhost.map(str::to_owned);
        let mut checkers = Vec::new();
        for c in rs.children() {
            if timers.take(c, &mut vip.notes)? {
                continue;
            }
            match c.key.as_str() {
                "weight" => {
                    b.weight = u32::try_from(c.int()?)
                        .map_err(|_| c.err(format!("weight {} is too large", c.args[0])))?;
                }
                "inhibit_on_failure" => b.inhibit = Some(c.flag()?),
                "virtualhost" => vhost = Some(c.arg()?.to_owned()),
                "lvs_method" => {}
                "HTTP_GET" | "SSL_GET" | "TCP_CHECK" | "SMTP_CHECK" | "DNS_CHECK"
                | "MISC_CHECK" | "PING_CHECK" | "UDP_CHECK" | "BFD_CHECK" | "FILE_CHECK" => {
                    checkers.push(c)
                }
                "notify_up" | "notify_down" => vip.notes.add(
                    c,
                    "no equivalent: dsr runs no scripts; it logs every backend going up or down \
                     and shows it in `dsr status` and the metrics",
                ),
                "uthreshold" | "lthreshold" => vip.notes.add(
                    c,
                    "no equivalent: dsr does not count connections per backend to cap them",
                ),
                "alpha" => vip.notes.add(
                    c,
                    "no equivalent: dsr starts checked backends as up and takes them down \
                     after `fall` failed checks",
                ),
                "smtp_alert" | "snmp_name" => vip.notes.add(c, "no equivalent in dsr; left out"),
                _ => vip.notes.add(c, "not converted (unknown to the importer)"),
            }
        }
        let inherited = timers.over(vs_timers);
        // dsr runs one check per backend: the first one that converts to a check.
        for ck in checkers {
            let check = checker(ck, inherited, vhost.as_deref(), port, &mut vip.notes)?;
            match (&b.check, check) {
                (None, c) => b.check = Some(c),
                (Some(_), _) => vip.notes.add(
                    ck,
                    "not converted: dsr runs one check per backend (the first checker of the \
                     real server); keepalived needs all of them to pass",
                ),
            }
        }
        if b.weight == 0 && b.inhibit.unwrap_or(vip.inhibit) {
            b.notes.add_text(
                rs.at(),
                "weight 0 with inhibit_on_failure: if this real server is a standby that an \
                 operator or script switches to, dsr says so directly: `backup = true` with a \
                 weight > 0 takes new flows only while no primary is usable (weight 0 kept \
                 here: no new flows at all)"
                    .into(),
            );
        }
        Ok(Some(b))
    }

    fn render_vip(&self, t: &Target, vip: &Vip) -> String {
        let mut out = String::new();
        comment(&mut out, "", &format!("{}: {}", t.at, t.what));
        vip.notes.render(&mut out, "");
        let _ = writeln!(out, "[[vip]]");
        let _ = writeln!(out, "address = {}", toml_str(&t.address.to_string()));
        if t.port == 0 {
            let _ = writeln!(out, "all_ports = true");
        } else {
            let _ = writeln!(out, "port = {}", t.port);
        }
        let _ = writeln!(out, "protocol = {}", toml_str(vip.protocol));
        if let Some(h) = vip.hash {
            let _ = writeln!(out, "hash = {}", toml_str(h));
        }
        if vip.inhibit {
            let _ = writeln!(out, "inhibit_on_failure = true");
        }
        // One check for the VIP when every (non-sorry) real server has the same one.
        let checked: Vec<&Backend> = vip
            .backends
            .iter()
            .filter(|b| !b.sorry && b.address != t.address)
            .collect();
        let shared = match checked.first() {
            Some(first) if checked.iter().all(|b| b.check == first.check) => {
                Some(first.check.clone())
            }
            None => Some(None),
            _ => None,
        };
        if let Some(Some(check)) = &shared {
            let _ = writeln!(out, "[vip.check]");
            render_check(&mut out, "", check, t.port);
        }
        for b in &vip.backends {
            out.push('\n');
            if b.address == t.address {
                comment(
                    &mut out,
                    "  ",
                    &format!(
                        "{}: real server {}: left out: the VIP's own address is this node \
                         (IPVS local delivery), and a DSR backend needs an address of its own",
                        b.at, b.address
                    ),
                );
                continue;
            }
            b.notes.render(&mut out, "  ");
            if let Some(p) = b.port
                && p != t.port
                && t.port != 0
            {
                let check = if b.sorry {
                    String::new()
                } else {
                    format!(" (its check uses port {p}, as keepalived's)")
                };
                comment(
                    &mut out,
                    "  ",
                    &format!(
                        "{}: port {p}: DSR does not translate ports, this backend gets the \
                         traffic on the VIP's port {}{check}",
                        b.at, t.port
                    ),
                );
            }
            let _ = writeln!(out, "  [[vip.backend]]");
            let _ = writeln!(out, "  address = {}", toml_str(&b.address.to_string()));
            let _ = writeln!(out, "  weight = {}", b.weight);
            if b.sorry {
                let _ = writeln!(out, "  sorry = true");
            }
            if let Some(i) = b.inhibit
                && (i != vip.inhibit)
            {
                let _ = writeln!(out, "  inhibit_on_failure = {i}");
            }
            if !b.sorry && shared.is_none() {
                let _ = writeln!(out, "  [vip.backend.check]");
                match &b.check {
                    Some(c) => render_check(&mut out, "  ", c, t.port),
                    None => {
                        let _ = writeln!(out, "  type = \"none\"");
                    }
                }
            }
        }
        out
    }
}

fn render_check(out: &mut String, indent: &str, c: &Check, vip_port: u16) {
    if c.kind == Kind::None || (vip_port == 0 && c.port.is_none()) {
        if c.kind != Kind::None {
            comment(
                out,
                indent,
                "an all-ports VIP has no port to check and keepalived named none: not checked",
            );
        }
        let _ = writeln!(out, "{indent}type = \"none\"");
        return;
    }
    match &c.kind {
        Kind::Tcp => {
            let _ = writeln!(out, "{indent}type = \"tcp\"");
        }
        Kind::Http { path, status, host } => {
            let _ = writeln!(out, "{indent}type = \"http\"");
            let _ = writeln!(out, "{indent}path = {}", toml_str(path));
            let _ = writeln!(out, "{indent}expect_status = {status}");
            if let Some(h) = host {
                let _ = writeln!(out, "{indent}host = {}", toml_str(h));
            }
        }
        Kind::None => unreachable!(),
    }
    if let Some(p) = c.port
        && p != vip_port
    {
        let _ = writeln!(out, "{indent}port = {p}");
    }
    let _ = writeln!(
        out,
        "{indent}interval = {}",
        toml_str(&duration(c.interval_ms))
    );
    let _ = writeln!(
        out,
        "{indent}timeout = {}",
        toml_str(&duration(c.timeout_ms))
    );
    let _ = writeln!(out, "{indent}rise = 1");
    let _ = writeln!(out, "{indent}fall = {}", c.fall);
}

const FWMARK: &str = "not converted: dsr matches packets by address and port, not by firewall \
                      mark; a mark that selects every port of one address is a VIP with \
                      all_ports = true";

/// What an IPVS scheduler becomes: the VIP's hash (None: the default 5-tuple) and why.
fn scheduler(algo: &str, hash_ports: bool) -> (Option<&'static str>, String) {
    const MAGLEV: &str = "dsr places new flows by weighted consistent hashing (Maglev): shares \
                          follow the weights, established flows keep their backend";
    match algo {
        "rr" | "wrr" => (
            None,
            format!("{MAGLEV}; round robin itself has no equivalent"),
        ),
        "lc" | "wlc" | "sed" | "nq" | "lblc" | "lblcr" | "twos" => (
            None,
            format!(
                "{MAGLEV}; {algo} itself has no equivalent (LVS counts connections it sees in \
                 both directions; in DR mode replies never cross the balancer); for load-aware \
                 weights add [vip.load] with {}",
                if hash_ports {
                    "flows = true (a backend holding more than its share of active flows gets \
                     fewer new ones) or an agent_port"
                } else {
                    // flows = true needs the ports in the hash, which persistence leaves out.
                    "an agent_port (the backend reports its own load)"
                }
            ),
        ),
        "sh" | "mh" if !hash_ports => (
            Some("source"),
            format!("hash = \"source\": consistent hashing on the client address, as {algo} does"),
        ),
        "sh" | "mh" => (
            None,
            format!(
                "the default 5-tuple hash: consistent hashing with the ports, as {algo} with {algo}-port"
            ),
        ),
        "dh" => (
            None,
            format!("{MAGLEV}; destination hashing has no equivalent (a VIP is one address)"),
        ),
        "fo" | "ovf" => (
            None,
            format!(
                "{MAGLEV}; for {algo}'s \"everything to the first server\" mark the standby \
                 servers backup = true"
            ),
        ),
        other => (
            None,
            format!("{MAGLEV}; scheduler {other} has no equivalent"),
        ),
    }
}

/// A checker block as a dsr check.
fn checker(
    ck: &Node,
    inherited: Timers,
    vhost: Option<&str>,
    rs_port: Option<u16>,
    notes: &mut Notes,
) -> Result<Check, ConfigError> {
    let mut timers = Timers::default();
    let mut port = rs_port;
    let mut urls = Vec::new();
    // A checker's own virtualhost overrides the real server's and the virtual server's.
    let own_vhost = ck.children().iter().find(|c| c.key == "virtualhost");
    let vhost = match own_vhost {
        Some(c) => Some(c.arg()?),
        None => vhost,
    };
    for c in ck.children() {
        if timers.take(c, notes)? {
            continue;
        }
        match c.key.as_str() {
            "connect_port" => {
                port =
                    Some(c.arg()?.parse().map_err(|_| {
                        c.err(format!("connect_port {:?} is not a port", c.args[0]))
                    })?);
            }
            "url" => urls.push(c),
            "connect_ip" => notes.add(
                c,
                "no equivalent: dsr checks each backend at its own address",
            ),
            "bindto" | "bind_port" | "bind_if" | "fwmark" => notes.add(
                c,
                "no equivalent: dsr's checks leave from this node's own address, as routing \
                 chooses",
            ),
            "alpha" | "log_all_failures" | "http_protocol" | "fast_recovery" | "enable_sni"
            | "helo_name" | "misc_path" | "misc_timeout" | "misc_dynamic" | "user" | "type"
            | "name" => notes.add(c, "no equivalent in dsr; left out"),
            "virtualhost" => {}
            _ => notes.add(c, "not converted (unknown to the importer)"),
        }
    }
    let t = timers.over(inherited);
    let retry = t.retry.unwrap_or(if ck.key == "DNS_CHECK" { 3 } else { 1 });
    let mut check = Check {
        kind: Kind::Tcp,
        port,
        interval_ms: t.delay_loop.unwrap_or(KEEPALIVED_DELAY_LOOP_MS),
        timeout_ms: t.connect_timeout.unwrap_or(KEEPALIVED_CONNECT_TIMEOUT_MS),
        fall: (retry + 1).min(100) as u32,
    };
    // keepalived takes timers down to microseconds; dsr counts whole milliseconds (`timer`
    // rounds to the nearest) and checks at most every 10 ms: a timer below dsr's shortest
    // is raised to it, and the comment says so (a 0 would be refused).
    let min_interval = MIN_CHECK_INTERVAL.as_millis() as u64;
    let raised_interval = check.interval_ms < min_interval;
    let raised_timeout = check.timeout_ms < 1;
    check.interval_ms = check.interval_ms.max(min_interval);
    check.timeout_ms = check.timeout_ms.max(1);
    // dsr refuses a timeout longer than the interval (keepalived allows it).
    let clamped = check.timeout_ms > check.interval_ms;
    check.timeout_ms = check.timeout_ms.min(check.interval_ms);
    let timing = format!(
        "interval {} (delay_loop{}), timeout {} (connect_timeout{}), fall {} (the first \
         failure and {retry} retr{}), rise 1 (keepalived takes a server up at its first \
         success)",
        duration(check.interval_ms),
        if t.delay_loop.is_none() {
            ": keepalived's default"
        } else {
            ""
        },
        duration(check.timeout_ms),
        if t.connect_timeout.is_none() {
            ": keepalived's default"
        } else {
            ""
        },
        check.fall,
        if retry == 1 { "y" } else { "ies" },
    ) + if raised_interval {
        "; interval raised to dsr's shortest"
    } else {
        ""
    } + if raised_timeout {
        "; timeout raised to 1ms, dsr's shortest"
    } else {
        ""
    } + if clamped {
        "; timeout lowered to the interval (dsr refuses a longer one)"
    } else {
        ""
    };
    match ck.key.as_str() {
        "HTTP_GET" => {
            let (path, status, url_host) = first_url(&urls, notes)?;
            check.kind = Kind::Http {
                path,
                status,
                host: url_host.or(vhost.map(str::to_owned)),
            };
            notes.add(ck, format!("type = \"http\": {timing}"));
        }
        "SSL_GET" => {
            notes.add(
                ck,
                format!(
                    "type = \"tcp\" on the port (connect_port, else the real server's): dsr \
                     has no TLS check, so only the TCP connection is checked, not the \
                     handshake, the url paths or their status; {timing}"
                ),
            );
        }
        "TCP_CHECK" => notes.add(ck, format!("type = \"tcp\": {timing}")),
        "SMTP_CHECK" => notes.add(
            ck,
            format!(
                "type = \"tcp\": dsr does not speak SMTP, only the connection is checked; {timing}"
            ),
        ),
        "MISC_CHECK" if ck.children().iter().any(|c| c.key == "misc_dynamic") => {
            check.kind = Kind::None;
            notes.add(
                ck,
                "type = \"none\": dsr has no MISC_CHECK and runs no scripts, so this backend is \
                 not checked (always up); for misc_dynamic's weights from the backend, serve \
                 them as an agent (HAProxy's agent-check protocol: \"75%\", \"drain\", \
                 \"down\") and set [vip.load] agent_port",
            );
        }
        other => {
            check.kind = Kind::None;
            notes.add(
                ck,
                format!(
                    "type = \"none\": dsr has no {other}, so this backend is not checked (always \
                     up); drain it from your own monitoring with `dsr backend drain`"
                ),
            );
        }
    }
    Ok(check)
}

/// The first `url`'s path and status; the rest is noted.
fn first_url(
    urls: &[&Node],
    notes: &mut Notes,
) -> Result<(String, u16, Option<String>), ConfigError> {
    let Some(url) = urls.first() else {
        return Ok(("/".into(), 200, None));
    };
    for extra in &urls[1..] {
        notes.add(
            extra,
            "not converted: a dsr http check asks for one path (the first url); keepalived needs \
             every url to pass",
        );
    }
    let mut path = "/".to_owned();
    let mut status = None;
    let mut host = None;
    for c in url.children() {
        match c.key.as_str() {
            "path" => {
                path = c.arg()?.to_owned();
                if !path.starts_with('/') {
                    return Err(c.err(format!("path {path:?}: dsr needs a path starting with '/'")));
                }
            }
            "status_code" => {
                let first = c.arg()?;
                let code = first.split('-').next().unwrap_or_default();
                let code: u16 = code
                    .parse()
                    .map_err(|_| c.err(format!("status_code {first:?} is not a status")))?;
                if c.args.len() > 1 || first.contains('-') {
                    notes.add(
                        c,
                        format!(
                            "dsr expects one status: expect_status = {code}, the first one named"
                        ),
                    );
                }
                status = Some(code);
            }
            "digest" => notes.add(
                c,
                "no equivalent: dsr does not hash the body (expect_body checks that the body \
                 contains a string)",
            ),
            "virtualhost" => host = Some(c.arg()?.to_owned()),
            "regex" | "regex_no_match" | "regex_options" | "regex_stack" | "regex_min_offset"
            | "regex_max_offset" => notes.add(
                c,
                "no equivalent: expect_body is a plain substring, not a regular expression",
            ),
            _ => notes.add(c, "not converted (unknown to the importer)"),
        }
    }
    let status = match status {
        Some(s) => s,
        None => {
            notes.add(
                url,
                "no status_code: keepalived accepts 200-299, dsr expects one status: \
                 expect_status = 200",
            );
            200
        }
    };
    Ok((path, status, host))
}

const MAX_RANGE: usize = 4096;

/// The addresses of a virtual_server_group entry: `ADDR`, `A.B.C.D-E`, `A.B.C.D-A.B.C.E`,
/// `A.B.C.D/NN` (and IPv6 forms, whose short range end is hex).
fn addresses(e: &Node) -> Result<Vec<IpAddr>, ConfigError> {
    let s = e.key.as_str();
    let bad = || e.err(format!("{s:?} is not an address or address range"));
    let span = |first: u128, last: u128, v6: bool| -> Result<Vec<IpAddr>, ConfigError> {
        if last < first || last - first >= MAX_RANGE as u128 {
            return Err(e.err(format!(
                "range {s}: the end must follow the start, at most {MAX_RANGE} addresses"
            )));
        }
        Ok((first..=last)
            .map(|n| {
                if v6 {
                    IpAddr::V6(Ipv6Addr::from(n))
                } else {
                    IpAddr::V4(Ipv4Addr::from(n as u32))
                }
            })
            .collect())
    };
    let num = |a: IpAddr| match a {
        IpAddr::V4(a) => (u32::from(a) as u128, false),
        IpAddr::V6(a) => (u128::from(a), true),
    };
    if let Ok(a) = s.parse::<IpAddr>() {
        return Ok(vec![a]);
    }
    if let Some((a, len)) = s.split_once('/') {
        let a: IpAddr = a.parse().map_err(|_| bad())?;
        let len: u32 = len.parse().map_err(|_| bad())?;
        let (n, v6) = num(a);
        let bits = if v6 { 128 } else { 32 };
        if len > bits || bits - len > 12 {
            return Err(e.err(format!(
                "{s}: prefix length must leave at most {MAX_RANGE} addresses"
            )));
        }
        let size = 1u128 << (bits - len);
        let first = n & !(size - 1);
        return span(first, first + size - 1, v6);
    }
    let (a, end) = s.rsplit_once('-').ok_or_else(bad)?;
    let a: IpAddr = a.parse().map_err(|_| bad())?;
    let (first, v6) = num(a);
    let last = if let Ok(b) = end.parse::<IpAddr>() {
        let (last, v6b) = num(b);
        if v6b != v6 {
            return Err(bad());
        }
        last
    } else if v6 {
        let n = u128::from_str_radix(end, 16).map_err(|_| bad())?;
        (first & !0xffff) | (n & 0xffff)
    } else {
        let n: u128 = end.parse().map_err(|_| bad())?;
        if n > 255 {
            return Err(bad());
        }
        (first & !0xff) | n
    };
    span(first, last, v6)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "dsr-keepalived-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, text).unwrap();
        p
    }

    /// The converted text, its wrapped comments joined back into one line each.
    fn import(text: &str, opts: &Options) -> Result<String, ConfigError> {
        let d = dir();
        let out = convert(&write(&d, "keepalived.conf", text), opts)?;
        Ok(out.replace("\n#   ", " ").replace("\n  #   ", " "))
    }

    fn eth0() -> Options {
        Options {
            interface: Some("eth0".into()),
            non_dr: NonDr::Refuse,
        }
    }

    const DR: &str = r#"
! Configuration File for keepalived
global_defs {
   router_id LVS_DEVEL
}
vrrp_instance VI_1 {
    state MASTER
    interface bond0
    virtual_router_id 51
    virtual_ipaddress {
        192.0.2.10/24 dev eth1
        192.0.2.11
    }
}
virtual_server 192.0.2.11 80 {
    delay_loop 6
    lb_algo wlc
    lb_kind DR
    persistence_timeout 50
    protocol TCP
    virtualhost www.example.com
    sorry_server 192.0.2.99 80

    real_server 192.0.2.21 80 {
        weight 3
        inhibit_on_failure
        HTTP_GET {
            url {
              path /healthz
              status_code 204
              digest 640205b7b0fc66c1ea91c463fac6334d
            }
            connect_port 8080
            connect_timeout 3
            nb_get_retry 3
            delay_before_retry 2
        }
    }
    real_server 192.0.2.22 80 {   # second
        weight 1
        TCP_CHECK {
            connect_timeout 2
            retry 2
        }
    }
    real_server 192.0.2.23 80 {
        weight 1
        SSL_GET {
            url {
              path /
            }
            connect_port 443
        }
    }
}
"#;

    #[test]
    fn every_mapped_directive() {
        let out = import(DR, &eth0()).unwrap();
        let model = toml_file::parse(&out, Path::new("out")).unwrap();
        // The vrrp_instance that holds 192.0.2.11 names the interface (not --interface).
        assert_eq!(model.interface, "bond0", "{out}");
        assert!(out.contains("interface: vrrp_instance VI_1"), "{out}");
        assert_eq!(model.vips.len(), 1);
        let v = &model.vips[0];
        assert_eq!(v.addr.to_string(), "192.0.2.11:80/tcp");
        assert_eq!(
            v.hash_fields,
            dsr_common::HASH_SRC_ADDR,
            "persistence_timeout"
        );
        assert_eq!(v.backends.len(), 4);
        let b = &v.backends[0];
        assert_eq!(b.weight, 3);
        assert!(b.inhibit_on_failure);
        assert_eq!(
            b.check.kind,
            crate::spec::model::CheckKind::Http {
                path: "/healthz".into(),
                expect_status: 204,
                host: Some("www.example.com".into()),
                expect_body: None
            }
        );
        assert_eq!(b.check.port, Some(8080));
        assert_eq!(b.check.interval.as_secs(), 6, "delay_loop");
        assert_eq!(b.check.timeout.as_secs(), 3, "connect_timeout");
        assert_eq!(
            (b.check.rise, b.check.fall),
            (1, 4),
            "nb_get_retry 3: 1 + 3 tries"
        );
        let b = &v.backends[1];
        assert_eq!(b.check.kind, crate::spec::model::CheckKind::Tcp);
        assert_eq!(b.check.port, None, "the VIP's port");
        assert_eq!((b.check.timeout.as_secs(), b.check.fall), (2, 3));
        assert!(!b.inhibit_on_failure);
        // SSL_GET: a TCP check on the connect port.
        let b = &v.backends[2];
        assert_eq!(b.check.kind, crate::spec::model::CheckKind::Tcp);
        assert_eq!(b.check.port, Some(443));
        assert_eq!(b.check.interval.as_secs(), 6);
        assert_eq!(
            b.check.timeout.as_secs(),
            5,
            "keepalived's default connect_timeout"
        );
        assert_eq!(b.check.fall, 2, "keepalived's default retry 1");
        let s = &v.backends[3];
        assert_eq!(s.role, crate::spec::model::Role::Sorry);
        assert_eq!(s.check.kind, crate::spec::model::CheckKind::None);
        // A comment for every setting without an equivalent, naming its line.
        for words in [
            "keepalived.conf:17: `lb_algo wlc`: dsr places new flows by weighted consistent",
            "for load-aware weights add [vip.load] with an agent_port",
            "keepalived.conf:19: `persistence_timeout 50`: hash = \"source\"",
            "`delay_before_retry 2`: no equivalent",
            "`digest 640205b7b0fc66c1ea91c463fac6334d`: no equivalent",
            "`SSL_GET`: type = \"tcp\"",
            "dsr has no TLS check",
            "sorry = true",
            "Not converted: global_defs, vrrp_instance",
            "rise 1",
        ] {
            assert!(out.contains(words), "no {words:?} in\n{out}");
        }
    }

    #[test]
    fn nat_and_tun_are_refused_with_file_and_line() {
        let nat = DR.replace("lb_kind DR", "lb_kind NAT");
        let e = import(&nat, &eth0()).unwrap_err();
        assert_eq!(e.line, Some(18), "{e}");
        assert!(
            e.to_string()
                .contains("lb_kind NAT is not Direct Server Return"),
            "{e}"
        );
        assert!(e.to_string().contains("--non-dr"), "{e}");
        // No lb_kind: keepalived's default is NAT.
        let e = import(&DR.replace("lb_kind DR", ""), &eth0()).unwrap_err();
        assert_eq!(e.line, Some(15), "the virtual_server: {e}");
        assert!(e.to_string().contains("keepalived's default"), "{e}");
        let e = import(&DR.replace("lb_kind DR", "lvs_method TUN"), &eth0()).unwrap_err();
        assert!(e.to_string().contains("lb_kind TUN"), "{e}");
        // Skipped with a comment, or converted as DR, when asked.
        let skip = Options {
            non_dr: NonDr::Skip,
            ..eth0()
        };
        let out = import(&nat, &skip).unwrap();
        assert!(!out.contains("[[vip]]"), "{out}");
        assert!(out.contains("left out (--non-dr skip)"), "{out}");
        let as_dr = Options {
            non_dr: NonDr::AsDr,
            ..eth0()
        };
        let out = import(&nat, &as_dr).unwrap();
        assert_eq!(
            toml_file::parse(&out, Path::new("o")).unwrap().vips.len(),
            1
        );
        assert!(out.contains("converted as DR (--non-dr as-dr)"), "{out}");
        // A NAT real server in a DR virtual server.
        let rs_nat = DR.replace("weight 3", "weight 3\n        lvs_method NAT");
        let e = import(&rs_nat, &eth0()).unwrap_err();
        assert!(
            e.to_string()
                .contains("real_server 192.0.2.21 80: lb_kind NAT"),
            "{e}"
        );
    }

    #[test]
    fn interface_from_vrrp_dev_or_flag_or_error() {
        let on_dev = DR.replace(
            "virtual_server 192.0.2.11 80",
            "virtual_server 192.0.2.10 80",
        );
        let out = import(&on_dev, &Options::default()).unwrap();
        assert!(
            out.contains("interface = \"eth1\""),
            "`dev eth1` of the address: {out}"
        );
        let elsewhere = DR.replace(
            "virtual_server 192.0.2.11 80",
            "virtual_server 192.0.2.50 80",
        );
        let out = import(&elsewhere, &eth0()).unwrap();
        assert!(out.contains("interface = \"eth0\""), "{out}");
        assert!(out.contains("interface: --interface eth0"), "{out}");
        let e = import(&elsewhere, &Options::default()).unwrap_err();
        assert!(e.to_string().contains("VIP 192.0.2.50"), "{e}");
        assert!(e.to_string().contains("--interface"), "{e}");
        // Two VIPs on two interfaces: one dsr instance has one.
        let two = format!(
            "{DR}\n{}",
            &DR[DR.find("virtual_server").unwrap()..].replace("192.0.2.11 80", "192.0.2.10 443")
        );
        let e = import(&two, &eth0()).unwrap_err();
        assert!(e.to_string().contains("one interface"), "{e}");
    }

    #[test]
    fn includes_with_globs_relative_to_the_including_file() {
        let d = dir().join("inc");
        let _ = std::fs::remove_dir_all(&d);
        let main = write(
            &d,
            "keepalived.conf",
            "include conf.d/*.conf\ninclude missing/*.conf\n",
        );
        write(
            &d,
            "conf.d/vrrp.conf",
            "vrrp_instance V { interface eth7\n virtual_ipaddress {\n 198.51.100.1\n }\n}\n",
        );
        write(
            &d,
            "conf.d/web.conf",
            "virtual_server 198.51.100.1 80 {\n lb_kind DR\n include ../servers/*\n}\n",
        );
        write(
            &d,
            "servers/a",
            "real_server 198.51.100.11 80 {\n  weight 2\n}\n",
        );
        write(&d, "servers/b", "real_server 198.51.100.12 80\n{\n}\n");
        write(&d, "conf.d/ignored.txt", "this is not keepalived syntax {");
        let out = convert(&main, &Options::default())
            .unwrap()
            .replace("\n#   ", " ");
        let model = toml_file::parse(&out, Path::new("o")).unwrap();
        assert_eq!(model.interface, "eth7");
        let v = &model.vips[0];
        let addrs: Vec<String> = v.backends.iter().map(|b| b.address.to_string()).collect();
        assert_eq!(addrs, ["198.51.100.11", "198.51.100.12"], "{out}");
        assert_eq!(v.backends[0].weight, 2);
        // No checker: always up.
        assert_eq!(v.check.kind, crate::spec::model::CheckKind::None);
        assert!(out.contains("missing/*.conf: no file matches"), "{out}");
        // The comments name the included file's line.
        assert!(
            out.contains("web.conf:1: virtual_server 198.51.100.1 80"),
            "{out}"
        );
        // A file that includes itself.
        let looped = write(&d, "loop.conf", "include loop.conf\n");
        let e = convert(&looped, &Options::default()).unwrap_err();
        assert!(e.to_string().contains("nested deeper"), "{e}");
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let e = import("virtual_server 192.0.2.1 80 {\n lb_kind DR\n", &eth0()).unwrap_err();
        assert_eq!(e.line, Some(1), "{e}");
        assert!(e.to_string().contains("not closed"), "{e}");
        let e = import("}\n", &eth0()).unwrap_err();
        assert!(e.to_string().contains("closes no block"), "{e}");
        let e = import(
            "virtual_server 192.0.2.1 80 {\n lb_kind DR\n delay_loop x\n}\n",
            &eth0(),
        )
        .unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
    }

    #[test]
    fn groups_ranges_fwmark_and_quotes() {
        let conf = r#"
$PORT=8080
virtual_server_group G {
    10.0.0.1 $PORT
    10.0.0.5-7 80
    2001:db8::a-b 53
    fwmark 1
}
virtual_server group G {
    lb_kind DR
    lb_algo sh
    protocol UDP
    real_server 10.1.0.1 {
        weight 1
        MISC_CHECK {
            misc_path "/usr/local/bin/check --flag"
        }
    }
}
virtual_server fwmark 3 {
    lb_kind DR
}
"#;
        let out = import(conf, &eth0()).unwrap();
        let model = toml_file::parse(&out, Path::new("o")).unwrap();
        let vips: Vec<String> = model.vips.iter().map(|v| v.addr.to_string()).collect();
        assert_eq!(
            vips,
            [
                "10.0.0.1:8080/udp",
                "10.0.0.5:80/udp",
                "10.0.0.6:80/udp",
                "10.0.0.7:80/udp",
                "[2001:db8::a]:53/udp",
                "[2001:db8::b]:53/udp"
            ],
            "{out}"
        );
        assert!(
            model
                .vips
                .iter()
                .all(|v| v.hash_fields == dsr_common::HASH_SRC_ADDR)
        );
        assert!(out.contains("`fwmark 1`: not converted"), "{out}");
        assert!(
            out.contains("`virtual_server fwmark 3`: not converted"),
            "{out}"
        );
        assert!(out.contains("dsr has no MISC_CHECK"), "{out}");
        assert!(
            out.contains("`misc_path /usr/local/bin/check --flag`"),
            "{out}"
        );
        // misc_dynamic (weights from the backend's script): pointed at the agent.
        let dynamic = conf.replace(
            "misc_path \"/usr/local/bin/check --flag\"",
            "misc_path \"/usr/local/bin/load\"\n            misc_dynamic",
        );
        let out = import(&dynamic, &eth0()).unwrap();
        assert!(
            out.contains("misc_dynamic's weights") && out.contains("[vip.load] agent_port"),
            "{out}"
        );
    }

    #[test]
    fn active_standby_suggests_backup() {
        let conf = r#"
virtual_server 192.0.2.11 443 {
    delay_loop 2
    lb_kind DR
    protocol TCP
    real_server 192.0.2.21 443 {
        weight 100
        TCP_CHECK { connect_timeout 1 }
    }
    real_server 192.0.2.22 443 {
        weight 0
        inhibit_on_failure
        TCP_CHECK { connect_timeout 1 }
    }
}
"#;
        let out = import(conf, &eth0()).unwrap();
        let model = toml_file::parse(&out, Path::new("o")).unwrap();
        let b = &model.vips[0].backends;
        assert_eq!((b[0].weight, b[1].weight), (100, 0));
        assert!(b[1].inhibit_on_failure && !b[0].inhibit_on_failure);
        // The suggestion stands right above the standby's section.
        let at = |s: &str| out.find(s).unwrap_or_else(|| panic!("no {s:?} in\n{out}"));
        let note = at("weight 0 with inhibit_on_failure");
        assert!(at("192.0.2.21") < note && note < at("192.0.2.22"), "{out}");
        assert!(out[note..].contains("`backup = true`"), "{out}");
        // One check shared by both: the VIP's.
        assert!(
            out.contains("[vip.check]") && !out.contains("[vip.backend.check]"),
            "{out}"
        );
    }

    /// keepalived takes microsecond timers; dsr's are 10 ms and 1 ms at least, and the
    /// comment says each was raised.
    #[test]
    fn sub_millisecond_timers_are_raised_and_said() {
        let text = "virtual_server 192.0.2.1 80 {\n lb_kind DR\n delay_loop 0.0004\n \
                    real_server 192.0.2.10 80 {\n  TCP_CHECK {\n   connect_timeout 0.0002\n  \
                    }\n }\n}\n";
        let out = import(text, &eth0()).unwrap();
        let model = toml_file::parse(&out, Path::new("out")).unwrap();
        let check = &model.vips[0].backends[0].check;
        assert_eq!(
            (check.interval, check.timeout),
            (MIN_CHECK_INTERVAL, std::time::Duration::from_millis(1)),
            "{out}"
        );
        assert!(
            out.contains("interval raised to dsr's shortest")
                && out.contains("timeout raised to 1ms, dsr's shortest"),
            "{out}"
        );
    }

    #[test]
    fn wildmatch_and_tokens() {
        assert!(wildmatch("*.conf", "a.conf"));
        assert!(!wildmatch("*.conf", "a.conf~"));
        assert!(wildmatch("[a-c]?.x", "bz.x"));
        assert!(!wildmatch("[!a-c]?.x", "bz.x"));
        assert_eq!(
            tokenize(r#"a "b c" {d}! e"#).unwrap(),
            [
                Tok::Word("a".into()),
                Tok::Word("b c".into()),
                Tok::Open,
                Tok::Word("d".into()),
                Tok::Close
            ]
        );
    }
}
