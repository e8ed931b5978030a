//! The TOML config: parsed, then validated into a [`Model`]. Every error names the file, the
//! line and what is wrong, so an operator can fix it without guessing; nothing is used until
//! the whole file is valid.

use std::{
    collections::HashMap,
    fmt,
    net::IpAddr,
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

use dsr_common::{
    DEFAULT_FLOW_IDLE_SECS, DEFAULT_FLOW_TABLE_SIZE, DEFAULT_HASH_SEED, DEFAULT_MAX_BACKENDS,
    DEFAULT_MAX_TABLE_SLOTS, DEFAULT_MAX_VIPS, TABLE_BUDGET_PER_VIP,
};
use serde::Deserialize;
use toml::Spanned;

use crate::{
    plan::sizing::{self, TableSizing},
    spec::{
        model::{
            BackendSpec, CheckKind, CheckSpec, DEFAULT_CHECK_INTERVAL, DEFAULT_CHECK_TIMEOUT,
            DEFAULT_FALL, DEFAULT_FLOW_COUNT_INTERVAL, DEFAULT_NOTIFY_TIMEOUT, DEFAULT_RISE,
            DatapathLog, LoadSettings, LoadSpec, MacAddr, Model, Protocol, Role, VipAddr, VipSpec,
            VlanTags, XdpAttachMode, parse_duration,
        },
        validate::{self, Limits, Place},
    },
};

#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line, when the problem has a place in the file.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file.display(), line, self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    instance: Option<Spanned<String>>,
    interface: Spanned<String>,
    #[serde(default)]
    xdp_mode: XdpAttachMode,
    /// "auto" or "in-band" (see `VlanTags`).
    #[serde(default)]
    vlan_tags: VlanTags,
    /// "off", "warn" or "debug" (see `DatapathLog`).
    #[serde(default)]
    datapath_log: DatapathLog,
    #[serde(default = "default_seed")]
    hash_seed: u32,
    table_size: Option<Spanned<u32>>,
    max_table_slots: Option<Spanned<u32>>,
    table_budget: Option<Spanned<u32>>,
    max_vips: Option<Spanned<u32>>,
    max_backends: Option<Spanned<u32>>,
    flow_table_size: Option<Spanned<u32>>,
    flow_idle_timeout: Option<Spanned<RawDuration>>,
    flow_count_interval: Option<Spanned<RawDuration>>,
    /// Every VIP's notify command unless it has its own.
    notify: Option<Spanned<String>>,
    notify_timeout: Option<Spanned<RawDuration>>,
    control_socket: Option<Spanned<PathBuf>>,
    /// Group (name or number) whose members may use the control socket besides root.
    control_group: Option<Spanned<String>>,
    state_dir: Option<Spanned<PathBuf>>,
    /// Prometheus endpoint, e.g. "127.0.0.1:9464"; off when absent.
    metrics: Option<std::net::SocketAddr>,
    #[serde(default, rename = "vip")]
    vips: Vec<Spanned<RawVip>>,
    #[serde(default, rename = "announce")]
    announce: Vec<Spanned<RawAnnounce>>,
    sync: Option<Spanned<RawSync>>,
}

/// `[sync]`: the flow-state exchange.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSync {
    peers: Spanned<Vec<std::net::SocketAddr>>,
    listen: Option<std::net::SocketAddr>,
    key_file: Spanned<PathBuf>,
    interval: Option<Spanned<RawDuration>>,
}

/// `[[announce]]`: an announcement group.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAnnounce {
    name: Spanned<String>,
    vips: Spanned<Vec<String>>,
    #[serde(default)]
    require: crate::spec::model::Require,
    vmac_vrid: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVip {
    name: Option<Spanned<String>>,
    address: Spanned<IpAddr>,
    /// Required unless `all_ports = true`.
    port: Option<Spanned<u16>>,
    #[serde(default)]
    all_ports: bool,
    protocol: Protocol,
    vlan: Option<Spanned<u16>>,
    #[serde(default)]
    fragments: bool,
    hash: Option<Spanned<RawHash>>,
    #[serde(default = "yes")]
    conntrack: bool,
    #[serde(default)]
    inhibit_on_failure: bool,
    check: Option<RawCheck>,
    /// Announce the VIP only while this many backends take new flows (default 1).
    min_usable: Option<Spanned<u32>>,
    /// Its notify command ("" = none, whatever the top-level `notify` says).
    notify: Option<Spanned<String>>,
    /// Its table's slots (default: from its backends, see plan::sizing).
    table_size: Option<Spanned<u32>>,
    load: Option<RawLoad>,
    #[serde(default, rename = "backend")]
    backends: Vec<Spanned<RawBackend>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    address: Spanned<IpAddr>,
    weight: Option<Spanned<u32>>,
    mac: Option<Spanned<String>>,
    backup: Option<Spanned<bool>>,
    #[serde(default)]
    sorry: bool,
    inhibit_on_failure: Option<bool>,
    interface: Option<Spanned<String>>,
    /// Its agent's port (0: none), instead of the VIP's `[vip.load]` agent_port.
    agent_port: Option<Spanned<u16>>,
    check: Option<RawCheck>,
}

/// `hash = "5-tuple" | "source" | "addresses" | ["src_addr", "dst_port", ...]`
#[derive(Deserialize, Clone)]
#[serde(
    untagged,
    expecting = "expected a hash like \"5-tuple\", \"source\", \"addresses\" or a list of fields"
)]
enum RawHash {
    Preset(String),
    Fields(Vec<String>),
}

/// A check section; every field optional so a backend's section overrides only what it names.
#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    #[serde(rename = "type")]
    kind: Option<Spanned<String>>,
    port: Option<Spanned<u16>>,
    interval: Option<Spanned<RawDuration>>,
    timeout: Option<Spanned<RawDuration>>,
    rise: Option<Spanned<u32>>,
    fall: Option<Spanned<u32>>,
    path: Option<Spanned<String>>,
    expect_status: Option<Spanned<u16>>,
    host: Option<Spanned<String>>,
    expect_body: Option<Spanned<String>>,
}

/// `[vip.load]`: load-aware weights. Bounds are percent of the configured weight.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct RawLoad {
    agent_port: Option<Spanned<u16>>,
    agent_interval: Option<Spanned<RawDuration>>,
    agent_timeout: Option<Spanned<RawDuration>>,
    agent_send: Option<Spanned<String>>,
    agent_path: Option<Spanned<String>>,
    flows: Option<Spanned<bool>>,
    weight_interval: Option<Spanned<RawDuration>>,
    min_weight: Option<Spanned<u32>>,
    max_weight: Option<Spanned<u32>>,
}

/// "500ms", "2s", "1m", or a number of seconds.
#[derive(Deserialize, Clone)]
#[serde(
    untagged,
    expecting = "expected a duration like \"500ms\", \"2s\", \"1m\" or a number of seconds"
)]
enum RawDuration {
    Text(String),
    Seconds(f64),
}

fn default_seed() -> u32 {
    DEFAULT_HASH_SEED
}
fn yes() -> bool {
    true
}

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Model, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_owned(),
        line: None,
        message: format!("cannot read: {e}"),
    })?;
    parse(&text, path)
}

/// Builds errors that point into one file's text.
struct Errors<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Errors<'_> {
    fn at(&self, span: Option<Range<usize>>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.path.to_owned(),
            line: span.map(|s| line_of(self.text, s.start)),
            message: message.into(),
        }
    }
}

/// Parses and validates config text; `path` only names the file in errors.
pub fn parse(text: &str, path: &Path) -> Result<Model, ConfigError> {
    let errors = Errors { text, path };
    let err = |span: Option<Range<usize>>, m: String| errors.at(span, m);
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        // toml's message repeats the source line with a caret; keep the reason and the line.
        let line = e
            .span()
            .and_then(|s| text.lines().nth(line_of(text, s.start) - 1))
            .map(|l| format!(" (in `{}`)", l.trim()))
            .unwrap_or_default();
        err(e.span(), format!("{}{line}", e.message().trim()))
    })?;

    let instance = match &raw.instance {
        None => "default".to_owned(),
        Some(s) => {
            let v = s.get_ref();
            let ok = !v.is_empty()
                && v.len() <= 32
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !ok {
                return Err(err(
                    Some(s.span()),
                    format!("instance {v:?} must be 1-32 letters, digits, '-' or '_'"),
                ));
            }
            v.clone()
        }
    };
    let interface = raw.interface.get_ref().trim().to_owned();
    if !validate::valid_ifname(&interface) {
        return Err(err(
            Some(raw.interface.span()),
            format!(
                "interface {:?} is not a valid interface name",
                raw.interface.get_ref()
            ),
        ));
    }
    let number = |v: &Option<Spanned<u32>>, default: u32| {
        v.as_ref()
            .map_or((default, None), |s| (*s.get_ref(), Some(s.span())))
    };
    let (max_vips, span) = number(&raw.max_vips, DEFAULT_MAX_VIPS);
    if !(1..=65536).contains(&max_vips) {
        return Err(err(span, format!("max_vips {max_vips} must be 1..=65536")));
    }
    let (max_backends, span) = number(&raw.max_backends, DEFAULT_MAX_BACKENDS);
    if !(1..=1 << 20).contains(&max_backends) {
        return Err(err(
            span,
            format!("max_backends {max_backends} must be 1..=1048576"),
        ));
    }
    let tables = TableSizing {
        default: raw.table_size.as_ref().map(|s| *s.get_ref()),
        max_slots: number(&raw.max_table_slots, DEFAULT_MAX_TABLE_SLOTS).0,
        // Sized with max_vips unless given: a small deployment keeps small maps. A top-level
        // table_size gets what two rows per VIP of it took before per-VIP sizes.
        budget: number(&raw.table_budget, {
            let chunk = dsr_common::TABLE_CHUNK as u64;
            let per_vip = raw
                .table_size
                .as_ref()
                .map_or(0, |s| 2 * (*s.get_ref() as u64).div_ceil(chunk) * chunk);
            let per_vip = per_vip.max(TABLE_BUDGET_PER_VIP as u64);
            (max_vips as u64 * per_vip).min(sizing::MAX_TABLE_BUDGET as u64) as u32
        })
        .0,
    };
    if let Err((field, message)) = tables.check() {
        let span = match field {
            "max_table_slots" => &raw.max_table_slots,
            "table_budget" => &raw.table_budget,
            _ => &raw.table_size,
        };
        return Err(err(span.as_ref().map(|s| s.span()), message));
    }
    let (flow_table_size, span) = number(&raw.flow_table_size, DEFAULT_FLOW_TABLE_SIZE);
    if !(1024..=1 << 27).contains(&flow_table_size) {
        return Err(err(
            span,
            format!("flow_table_size {flow_table_size} must be 1024..=134217728"),
        ));
    }
    let flow_idle_timeout = match &raw.flow_idle_timeout {
        None => Duration::from_secs(DEFAULT_FLOW_IDLE_SECS),
        Some(d) => duration(&errors, "flow_idle_timeout", d)?,
    };
    if flow_idle_timeout < Duration::from_secs(1) {
        return Err(err(
            raw.flow_idle_timeout.as_ref().map(|d| d.span()),
            "flow_idle_timeout must be at least 1s".into(),
        ));
    }
    let flow_count_interval = match &raw.flow_count_interval {
        None => DEFAULT_FLOW_COUNT_INTERVAL,
        Some(d) => duration(&errors, "flow_count_interval", d)?,
    };
    if flow_count_interval < Duration::from_secs(1) {
        return Err(err(
            raw.flow_count_interval.as_ref().map(|d| d.span()),
            "flow_count_interval must be at least 1s (each count walks the whole flow table)"
                .into(),
        ));
    }
    if let Some(n) = &raw.notify
        && let Err(m) = validate::notify_command(n.get_ref())
    {
        return Err(err(Some(n.span()), m));
    }
    let notify_timeout = match &raw.notify_timeout {
        None => DEFAULT_NOTIFY_TIMEOUT,
        Some(d) => duration(&errors, "notify_timeout", d)?,
    };
    if !(Duration::from_millis(100)..=Duration::from_secs(3600)).contains(&notify_timeout) {
        return Err(err(
            raw.notify_timeout.as_ref().map(|d| d.span()),
            format!("notify_timeout {notify_timeout:?} must be 100ms to 1h"),
        ));
    }
    let sync = match &raw.sync {
        None => None,
        Some(s) => {
            let span = s.span();
            let s = s.get_ref();
            if s.peers.get_ref().is_empty() {
                return Err(err(
                    Some(s.peers.span()),
                    "sync.peers is empty: name the other load balancers' ADDRESS:PORT".into(),
                ));
            }
            if !s.key_file.get_ref().is_absolute() {
                return Err(err(
                    Some(s.key_file.span()),
                    format!(
                        "sync.key_file {:?} must be an absolute path",
                        s.key_file.get_ref()
                    ),
                ));
            }
            let interval = match &s.interval {
                None => Duration::from_secs(1),
                Some(d) => duration(&errors, "sync.interval", d)?,
            };
            if !(Duration::from_millis(100)..=Duration::from_secs(60)).contains(&interval) {
                return Err(err(
                    s.interval.as_ref().map(|d| d.span()).or(Some(span)),
                    format!("sync.interval {interval:?} must be 100ms to 60s"),
                ));
            }
            Some(crate::spec::model::SyncSpec {
                peers: s.peers.get_ref().clone(),
                listen: s.listen.unwrap_or(std::net::SocketAddr::from((
                    [0, 0, 0, 0],
                    crate::spec::model::DEFAULT_SYNC_PORT,
                ))),
                key_file: s.key_file.get_ref().clone(),
                interval,
            })
        }
    };
    let mut vips = Vec::with_capacity(raw.vips.len());
    // Where each VIP, backend and field is written, to place validation errors.
    let mut spans: Vec<ItemSpans> = Vec::with_capacity(raw.vips.len());
    for spanned in &raw.vips {
        let v = spanned.get_ref();
        let mut vip_spans = ItemSpans {
            span: spanned.span(),
            fields: HashMap::new(),
            backends: Vec::new(),
        };
        let port = match (&v.port, v.all_ports) {
            (Some(p), false) if *p.get_ref() != 0 => *p.get_ref(),
            (Some(p), false) => {
                return Err(err(Some(p.span()), "VIP port must be 1..=65535".into()));
            }
            (None, true) => 0,
            (Some(p), true) => {
                return Err(err(
                    Some(p.span()),
                    "a VIP with all_ports = true has no port".into(),
                ));
            }
            (None, false) => {
                return Err(err(
                    Some(spanned.span()),
                    "VIP needs a port (or all_ports = true)".into(),
                ));
            }
        };
        let vlan = match &v.vlan {
            None => 0,
            Some(n) if (1..=4094).contains(n.get_ref()) => *n.get_ref(),
            Some(n) => {
                return Err(err(
                    Some(n.span()),
                    format!("vlan {} is not 1..=4094", n.get_ref()),
                ));
            }
        };
        let fragments = v.fragments;
        if let Some(n) = &v.vlan {
            vip_spans.fields.insert("vlan", n.span());
        }
        if let Some(m) = &v.min_usable {
            vip_spans.fields.insert("min_usable", m.span());
        }
        if let Some(t) = &v.table_size {
            vip_spans.fields.insert("table_size", t.span());
        }
        let hash_fields = match &v.hash {
            None if fragments => dsr_common::HASH_ALL & !dsr_common::HASH_PORTS,
            None => dsr_common::HASH_ALL,
            Some(h) => {
                vip_spans.fields.insert("hash", h.span());
                hash_fields(h.get_ref()).map_err(|e| err(Some(h.span()), e))?
            }
        };
        let addr = VipAddr {
            address: *v.address.get_ref(),
            port,
            protocol: v.protocol,
            vlan,
        };
        vip_spans.fields.insert("address", v.address.span());
        if let Some(n) = &v.notify {
            vip_spans.fields.insert("notify", n.span());
        }
        if let Some(n) = &v.name {
            vip_spans.fields.insert("name", n.span());
        }
        let name = v
            .name
            .as_ref()
            .map_or_else(|| addr.to_string(), |n| n.get_ref().clone());
        let mut backends = Vec::with_capacity(v.backends.len());
        for b in &v.backends {
            let raw_b = b.get_ref();
            let mut fields = HashMap::from([("address", raw_b.address.span())]);
            let weight = match &raw_b.weight {
                Some(w) => {
                    fields.insert("weight", w.span());
                    *w.get_ref()
                }
                None => 1,
            };
            let mac = match &raw_b.mac {
                None => None,
                Some(m) => Some({
                    fields.insert("mac", m.span());
                    m.get_ref()
                        .parse::<MacAddr>()
                        .map_err(|e| err(Some(m.span()), format!("mac {:?}: {e}", m.get_ref())))?
                }),
            };
            let backup = raw_b.backup.as_ref().is_some_and(|b| *b.get_ref());
            let role = match (backup, raw_b.sorry) {
                (false, false) => Role::Primary,
                (true, false) => Role::Backup,
                (false, true) => Role::Sorry,
                (true, true) => {
                    return Err(err(
                        raw_b.backup.as_ref().map(|b| b.span()),
                        "a backend cannot be both backup and sorry".into(),
                    ));
                }
            };
            // A sorry server is checked only when it has a check of its own (keepalived
            // does not check its sorry_server; a check written for it is honoured).
            let (check, check_spans) = match role {
                Role::Sorry => check(&errors, raw_b.check.as_ref(), None)?,
                _ => check(&errors, raw_b.check.as_ref(), v.check.as_ref())?,
            };
            fields.extend(check_spans);
            if let Some(i) = &raw_b.interface {
                fields.insert("interface", i.span());
            }
            if let Some(a) = &raw_b.agent_port {
                fields.insert("agent_port", a.span());
            }
            vip_spans.backends.push((b.span(), fields));
            backends.push(BackendSpec {
                address: *raw_b.address.get_ref(),
                weight,
                mac,
                role,
                inhibit_on_failure: raw_b.inhibit_on_failure.unwrap_or(v.inhibit_on_failure),
                check,
                drained: false,
                agent_port: raw_b.agent_port.as_ref().map(|a| *a.get_ref()),
                interface: raw_b.interface.as_ref().map(|i| i.get_ref().clone()),
            });
        }
        let (vip_check, check_spans) = check(&errors, None, v.check.as_ref())?;
        vip_spans.fields.extend(check_spans);
        let backend_agents = v.backends.iter().any(|b| b.get_ref().agent_port.is_some());
        let (load, load_spans) = match &v.load {
            Some(l) => {
                let (spec, spans) = load_section(&errors, l, backend_agents)?;
                (Some(spec), spans)
            }
            None => (None, HashMap::new()),
        };
        vip_spans.fields.extend(load_spans);
        spans.push(vip_spans);
        vips.push(VipSpec {
            name,
            addr,
            conntrack: v.conntrack,
            fragments,
            hash_fields,
            check: vip_check,
            min_usable: v.min_usable.as_ref().map_or(1, |m| *m.get_ref()),
            drained: false,
            // Absent: the top-level `notify` applies (also to VIPs added at run time).
            notify: v.notify.as_ref().map(|n| n.get_ref().clone()),
            table_size: v.table_size.as_ref().map(|t| *t.get_ref()),
            load,
            backends,
        });
    }
    let limits = Limits {
        max_vips,
        max_backends,
        tables,
    };
    if let Err(e) = validate::vips(&vips, limits) {
        let line_at = |place: Place| spans_of(&spans, place).map(|s| line_of(text, s.start));
        let mut message = e.message.clone();
        if let Some(first) = e.first {
            match line_at(first) {
                Some(line) => message += &format!(" (first at line {line})"),
                None => message += &format!(" (first: {})", e.first_context),
            }
        }
        return Err(ConfigError {
            file: path.to_owned(),
            line: match e.place {
                // At the table_budget line if the file has one (else no line: the message
                // names the setting).
                Place::Vip {
                    field: Some(validate::TABLE_BUDGET),
                    ..
                } => raw
                    .table_budget
                    .as_ref()
                    .map(|s| line_of(text, s.span().start)),
                place => line_at(place),
            },
            message,
        });
    }

    let mut announce: Vec<crate::spec::model::AnnounceGroup> = Vec::new();
    for g in &raw.announce {
        let group = g.get_ref();
        let (name, name_span) = (group.name.get_ref(), Some(group.name.span()));
        let valid_name = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        if !valid_name {
            return Err(err(
                name_span,
                format!(
                    "announce group name {name:?} must be 1-64 letters, digits, '.', '-' or '_' (it names a file)"
                ),
            ));
        }
        if announce.iter().any(|a| &a.name == name) {
            return Err(err(
                name_span,
                format!("announce group name {name:?} is used twice"),
            ));
        }
        let (members, vips_span) = (group.vips.get_ref(), Some(group.vips.span()));
        if members.is_empty() {
            return Err(err(
                vips_span,
                format!("announce group {name:?}: vips names no VIP"),
            ));
        }
        if let Some(unknown) = members.iter().find(|n| !vips.iter().any(|v| &v.name == *n)) {
            return Err(err(
                vips_span,
                format!("announce group {name:?}: vips: no VIP is named {unknown:?}"),
            ));
        }
        let vrid_span = group.vmac_vrid.as_ref().map(|v| v.span());
        let vmac_vrid = match group.vmac_vrid.as_ref().map(|v| *v.get_ref()) {
            None => None,
            Some(v @ 1..=255) => Some(v as u8),
            Some(v) => {
                return Err(err(
                    vrid_span,
                    format!(
                        "announce group {name:?}: vmac_vrid = {v}: a VRRP virtual router id is 1-255"
                    ),
                ));
            }
        };
        if let Some(v) = vmac_vrid
            && let Some(other) = announce.iter().find(|a| a.vmac_vrid == Some(v))
        {
            return Err(err(
                vrid_span,
                format!(
                    "announce groups {:?} and {name:?} both have vmac_vrid = {v}: one virtual MAC, one instance",
                    other.name
                ),
            ));
        }
        if vmac_vrid.is_some()
            && announce.iter().filter(|a| a.vmac_vrid.is_some()).count() >= dsr_common::MAX_VMACS
        {
            return Err(err(
                vrid_span,
                format!(
                    "announce group {name:?}: at most {} groups can have a vmac_vrid (virtual MACs per interface)",
                    dsr_common::MAX_VMACS
                ),
            ));
        }
        announce.push(crate::spec::model::AnnounceGroup {
            name: name.clone(),
            vips: members.clone(),
            require: group.require,
            vmac_vrid,
        });
    }
    let control_group = match &raw.control_group {
        None => None,
        Some(g) => Some(group_id(g.get_ref()).ok_or_else(|| {
            err(
                Some(g.span()),
                format!(
                    "control_group {:?}: no such group (a name or a number)",
                    g.get_ref()
                ),
            )
        })?),
    };
    // The daemon and the CLI may run from different directories (the service manager's is
    // /): a relative path would name two different places.
    let absolute = |key: &str, p: &Option<Spanned<PathBuf>>, default: String| match p {
        None => Ok(PathBuf::from(default)),
        Some(p) if p.get_ref().is_absolute() => Ok(p.get_ref().clone()),
        Some(p) => Err(err(
            Some(p.span()),
            format!("{key} {:?} must be an absolute path", p.get_ref()),
        )),
    };
    let control_socket = absolute(
        "control_socket",
        &raw.control_socket,
        format!("/run/dsr/{instance}.sock"),
    )?;
    let state_dir = absolute(
        "state_dir",
        &raw.state_dir,
        format!("/var/lib/dsr/{instance}"),
    )?;
    Ok(Model {
        announce,
        control_group,
        control_socket,
        state_dir,
        metrics: raw.metrics,
        instance,
        interface,
        xdp_mode: raw.xdp_mode,
        datapath_log: raw.datapath_log,
        vlan_tags: raw.vlan_tags,
        hash_seed: raw.hash_seed,
        tables,
        max_vips,
        max_backends,
        flow_table_size,
        flow_idle_timeout,
        flow_count_interval,
        notify_timeout,
        notify: raw
            .notify
            .as_ref()
            .map(|n| n.get_ref().clone())
            .filter(|n| !n.is_empty()),
        sync,
        vips,
    })
}

/// The duration setting `what` (named in the error).
fn duration(
    errors: &Errors,
    what: &str,
    d: &Spanned<RawDuration>,
) -> Result<Duration, ConfigError> {
    match d.get_ref() {
        RawDuration::Text(t) => {
            parse_duration(t).map_err(|e| errors.at(Some(d.span()), format!("{what}: {e}")))
        }
        RawDuration::Seconds(s) if s.is_finite() && *s >= 0.0 && *s <= 1e9 => {
            crate::spec::model::whole_ms(s * 1e3, &format!("{s} (seconds)"))
                .map_err(|e| errors.at(Some(d.span()), format!("{what}: {e}")))
        }
        RawDuration::Seconds(s) => Err(errors.at(
            Some(d.span()),
            format!("{what}: {s} is not a duration (seconds, 0 or more)"),
        )),
    }
}

/// Merges a backend's check section over its VIP's and validates the result.
fn check(
    errors: &Errors,
    own: Option<&RawCheck>,
    vip: Option<&RawCheck>,
) -> Result<(CheckSpec, HashMap<&'static str, Range<usize>>), ConfigError> {
    let (own, vip) = (
        own.cloned().unwrap_or_default(),
        vip.cloned().unwrap_or_default(),
    );
    macro_rules! pick {
        ($field:ident) => {
            own.$field.or(vip.$field)
        };
    }
    let kind = pick!(kind);
    let (port, interval, timeout) = (pick!(port), pick!(interval), pick!(timeout));
    let (rise, fall) = (pick!(rise), pick!(fall));
    let (path, expect_status, host, expect_body) = (
        pick!(path),
        pick!(expect_status),
        pick!(host),
        pick!(expect_body),
    );
    let mut spans = HashMap::new();
    for (name, span) in [
        ("check.port", port.as_ref().map(|v| v.span())),
        ("check.interval", interval.as_ref().map(|v| v.span())),
        ("check.timeout", timeout.as_ref().map(|v| v.span())),
        ("check.rise", rise.as_ref().map(|v| v.span())),
        ("check.fall", fall.as_ref().map(|v| v.span())),
        ("check.path", path.as_ref().map(|v| v.span())),
        (
            "check.expect_status",
            expect_status.as_ref().map(|v| v.span()),
        ),
        ("check.host", host.as_ref().map(|v| v.span())),
    ] {
        if let Some(span) = span {
            spans.insert(name, span);
        }
    }
    let kind_name = kind.as_ref().map_or("none", |k| k.get_ref().as_str());
    let at = |s: &Option<Range<usize>>, m: String| errors.at(s.clone(), m);
    let kind_span = kind.as_ref().map(|k| k.span());
    // The type first: a setting of another type is refused as such only once the type is
    // one dsr knows.
    let kind = match kind_name {
        "none" => CheckKind::None,
        "tcp" => CheckKind::Tcp,
        "http" => CheckKind::Http {
            path: path
                .as_ref()
                .map_or("/".to_owned(), |p| p.get_ref().clone()),
            expect_status: expect_status.as_ref().map_or(200, |s| *s.get_ref()),
            host: host.as_ref().map(|h| h.get_ref().clone()),
            expect_body: expect_body.as_ref().map(|b| b.get_ref().clone()),
        },
        other => {
            return Err(at(
                &kind_span,
                format!("check type {other:?} is not one of \"tcp\", \"http\", \"none\""),
            ));
        }
    };
    if kind_name != "http" {
        for (name, span) in [
            ("path", path.as_ref().map(|v| v.span())),
            ("expect_status", expect_status.as_ref().map(|v| v.span())),
            ("host", host.as_ref().map(|v| v.span())),
            ("expect_body", expect_body.as_ref().map(|v| v.span())),
        ] {
            if let Some(span) = span {
                return Err(at(&Some(span), validate::http_only(name, kind_name)));
            }
        }
    }
    let interval_v = match &interval {
        Some(d) => duration(errors, "check interval", d)?,
        None => DEFAULT_CHECK_INTERVAL,
    };
    let timeout_v = match &timeout {
        Some(d) => duration(errors, "check timeout", d)?,
        None => DEFAULT_CHECK_TIMEOUT.min(interval_v.max(validate::MIN_CHECK_INTERVAL)),
    };
    let spec = CheckSpec {
        kind,
        port: port.map(|p| *p.get_ref()),
        interval: interval_v,
        timeout: timeout_v,
        rise: rise.map_or(DEFAULT_RISE, |n| *n.get_ref()),
        fall: fall.map_or(DEFAULT_FALL, |n| *n.get_ref()),
    };
    Ok((spec, spans))
}

/// A `[vip.load]` section as a spec (validated with the VIP, in `validate`), and where its
/// fields are written.
fn load_section(
    errors: &Errors,
    raw: &RawLoad,
    backend_agents: bool,
) -> Result<(LoadSpec, HashMap<&'static str, Range<usize>>), ConfigError> {
    let mut spans = HashMap::new();
    for (name, span) in [
        ("load.agent_port", raw.agent_port.as_ref().map(|v| v.span())),
        (
            "load.agent_interval",
            raw.agent_interval.as_ref().map(|v| v.span()),
        ),
        (
            "load.agent_timeout",
            raw.agent_timeout.as_ref().map(|v| v.span()),
        ),
        ("load.agent_send", raw.agent_send.as_ref().map(|v| v.span())),
        ("load.agent_path", raw.agent_path.as_ref().map(|v| v.span())),
        ("load.flows", raw.flows.as_ref().map(|v| v.span())),
        (
            "load.weight_interval",
            raw.weight_interval.as_ref().map(|v| v.span()),
        ),
        ("load.min_weight", raw.min_weight.as_ref().map(|v| v.span())),
        ("load.max_weight", raw.max_weight.as_ref().map(|v| v.span())),
    ] {
        if let Some(span) = span {
            spans.insert(name, span);
        }
    }
    let optional = |d: &Option<Spanned<RawDuration>>, what: &str| {
        d.as_ref().map(|d| duration(errors, what, d)).transpose()
    };
    let settings = LoadSettings {
        agent_port: raw.agent_port.as_ref().map(|p| *p.get_ref()),
        backend_agents,
        agent_interval: optional(&raw.agent_interval, "load.agent_interval")?,
        agent_timeout: optional(&raw.agent_timeout, "load.agent_timeout")?,
        agent_send: raw.agent_send.as_ref().map(|s| s.get_ref().clone()),
        agent_path: raw.agent_path.as_ref().map(|s| s.get_ref().clone()),
        flows: raw.flows.as_ref().is_some_and(|f| *f.get_ref()),
        weight_interval: optional(&raw.weight_interval, "load.weight_interval")?,
        min_weight: raw.min_weight.as_ref().map(|p| *p.get_ref()),
        max_weight: raw.max_weight.as_ref().map(|p| *p.get_ref()),
    };
    let spec = settings
        .spec()
        .map_err(|(key, message)| errors.at(spans.get(key).cloned(), message))?;
    Ok((spec, spans))
}

/// Where a validation error's place is written in the file.
fn spans_of(spans: &[ItemSpans], place: Place) -> Option<Range<usize>> {
    let fielded =
        |item_span: &Range<usize>, fields: &HashMap<&str, Range<usize>>, f: Option<&str>| {
            f.and_then(|f| fields.get(f).cloned())
                .unwrap_or_else(|| item_span.clone())
        };
    match place {
        Place::Vip { vip, field } => spans.get(vip).map(|v| fielded(&v.span, &v.fields, field)),
        Place::Backend {
            vip,
            backend,
            field,
        } => spans
            .get(vip)
            .and_then(|v| v.backends.get(backend))
            .map(|(span, fields)| fielded(span, fields, field)),
    }
}

/// Where each field of one item is written.
type FieldSpans = HashMap<&'static str, Range<usize>>;

/// Spans of one VIP: its table, its fields, and each backend's table and fields.
struct ItemSpans {
    span: Range<usize>,
    fields: HashMap<&'static str, Range<usize>>,
    backends: Vec<(Range<usize>, FieldSpans)>,
}

/// The `HASH_*` bits of a `hash` setting.
fn hash_fields(h: &RawHash) -> Result<u32, String> {
    use crate::spec::model::HASH_FIELD_NAMES;
    let names: Vec<&str> = HASH_FIELD_NAMES.iter().map(|(n, _)| *n).collect();
    let fields = match h {
        RawHash::Preset(p) => match p.as_str() {
            "5-tuple" => dsr_common::HASH_ALL,
            "source" => dsr_common::HASH_SRC_ADDR,
            "addresses" => {
                dsr_common::HASH_SRC_ADDR | dsr_common::HASH_DST_ADDR | dsr_common::HASH_PROTO
            }
            other => {
                return Err(format!(
                    "hash {other:?} is not \"5-tuple\", \"source\", \"addresses\" or a list of {names:?}"
                ));
            }
        },
        RawHash::Fields(list) => {
            let mut bits = 0;
            for f in list {
                bits |= HASH_FIELD_NAMES
                    .iter()
                    .find(|(n, _)| n == f)
                    .map(|(_, b)| *b)
                    .ok_or_else(|| format!("hash field {f:?} is not one of {names:?}"))?;
            }
            bits
        }
    };
    Ok(fields)
}

/// A group's id from its name (the group database) or its number.
fn group_id(name: &str) -> Option<u32> {
    if let Ok(gid) = name.parse::<u32>() {
        return Some(gid);
    }
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: getgrnam with a valid C string; the result is read at once.
    let g = unsafe { libc::getgrnam(c.as_ptr()) };
    (!g.is_null()).then(|| unsafe { (*g).gr_gid })
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

/// Where a config's daemon listens, read leniently: a command that talks to a running daemon
/// (`dsr reload` above all) must work while the file on disk is being fixed.
pub fn control_socket_of(path: &Path) -> Result<(String, PathBuf), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_owned(),
        line: None,
        message: format!("cannot read: {e}"),
    })?;
    let top_level = |key: &str| -> Option<String> {
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('[') {
                return None;
            }
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            if k.trim() == key {
                let v = v.split('#').next()?.trim();
                return v.strip_prefix('"')?.strip_suffix('"').map(str::to_owned);
            }
        }
        None
    };
    let instance = top_level("instance").unwrap_or_else(|| "default".into());
    let socket = top_level("control_socket")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(format!("/run/dsr/{instance}.sock")));
    Ok((instance, socket))
}

// Refused configs, key by key, are one table: dsr-userspace/tests/bad_configs.rs.
#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
interface = "eth0"

[[vip]]
name = "web"
address = "198.18.0.100"
port = 80
protocol = "tcp"

  [[vip.backend]]
  address = "198.18.0.11"
  weight = 2

  [[vip.backend]]
  address = "198.18.0.12"
  mac = "02:00:00:00:00:12"

[[vip]]
address = "2001:db8::100"
port = 53
protocol = "udp"
"#;

    fn parse_err(text: &str) -> ConfigError {
        match parse(text, Path::new("dsr.toml")) {
            Ok(_) => panic!("config should be refused:\n{text}"),
            Err(e) => e,
        }
    }

    #[test]
    fn parses_a_full_config_with_defaults() {
        let m = parse(GOOD, Path::new("dsr.toml")).unwrap();
        assert_eq!(m.interface, "eth0");
        assert_eq!(m.instance, "default");
        assert_eq!(m.control_socket, PathBuf::from("/run/dsr/default.sock"));
        assert_eq!(m.tables, TableSizing::default());
        assert_eq!(m.hash_seed, DEFAULT_HASH_SEED);
        assert_eq!(m.flow_idle_timeout, Duration::from_secs(300));
        assert_eq!(m.xdp_mode, XdpAttachMode::Native);
        assert_eq!(m.vips.len(), 2);
        let web = &m.vips[0];
        assert_eq!(web.name, "web");
        assert!(web.conntrack);
        assert_eq!(web.backends[0].weight, 2);
        assert_eq!(web.backends[1].weight, 1);
        assert_eq!(web.backends[1].mac, Some(MacAddr([2, 0, 0, 0, 0, 0x12])));
        assert_eq!(web.backends[0].check, CheckSpec::none());
        assert_eq!(web.backends[0].role, Role::Primary);
        assert_eq!(m.vips[1].name, "[2001:db8::100]:53/udp");
    }

    #[test]
    fn checks_merge_vip_defaults_and_backend_overrides() {
        let text = r#"
interface = "eth0"
[[vip]]
address = "198.18.0.100"
port = 80
protocol = "tcp"
inhibit_on_failure = true
[vip.check]
type = "http"
path = "/healthz"
interval = "100ms"
timeout = "50ms"
fall = 3
  [[vip.backend]]
  address = "198.18.0.11"
  [[vip.backend]]
  address = "198.18.0.12"
  backup = true
  inhibit_on_failure = false
  [vip.backend.check]
  port = 8080
  expect_body = "OK"
  [[vip.backend]]
  address = "198.18.0.13"
  sorry = true
"#;
        let m = parse(text, Path::new("x")).unwrap();
        let b = &m.vips[0].backends;
        let http = |body: Option<&str>| CheckKind::Http {
            path: "/healthz".into(),
            expect_status: 200,
            host: None,
            expect_body: body.map(str::to_owned),
        };
        assert_eq!(b[0].check.kind, http(None));
        assert_eq!(b[0].check.interval, Duration::from_millis(100));
        assert_eq!(b[0].check.timeout, Duration::from_millis(50));
        assert_eq!((b[0].check.rise, b[0].check.fall), (2, 3));
        assert!(b[0].inhibit_on_failure);
        assert_eq!(b[1].role, Role::Backup);
        assert_eq!(b[1].check.kind, http(Some("OK")));
        assert_eq!(b[1].check.port, Some(8080));
        assert!(!b[1].inhibit_on_failure);
        // A sorry server does not inherit the VIP's check.
        assert_eq!(b[2].role, Role::Sorry);
        assert_eq!(b[2].check.kind, CheckKind::None);
    }

    #[test]
    fn all_ports_vlan_fragments_and_hash() {
        let text = r#"
interface = "eth0"
[[vip]]
address = "198.18.0.100"
all_ports = true
protocol = "tcp"
vlan = 100
hash = "source"
[[vip]]
address = "198.18.0.100"
port = 53
protocol = "udp"
fragments = true
  [[vip.backend]]
  address = "198.18.1.11"
  interface = "eth1"
[[vip]]
address = "198.18.0.100"
port = 54
protocol = "udp"
hash = ["src_addr", "dst_port"]
"#;
        let m = parse(text, Path::new("x")).unwrap();
        assert_eq!((m.vips[0].addr.port, m.vips[0].addr.vlan), (0, 100));
        assert_eq!(m.vips[0].hash_fields, dsr_common::HASH_SRC_ADDR);
        assert_eq!(m.vips[0].name, "198.18.0.100:*/tcp@vlan100");
        assert!(m.vips[1].fragments);
        assert_eq!(
            m.vips[1].hash_fields & dsr_common::HASH_PORTS,
            0,
            "fragments imply no ports"
        );
        assert_eq!(m.vips[1].backends[0].interface.as_deref(), Some("eth1"));
        assert_eq!(
            m.vips[2].hash_fields,
            dsr_common::HASH_SRC_ADDR | dsr_common::HASH_DST_PORT
        );
    }

    #[test]
    fn refuses_ambiguous_fragment_owners() {
        let two = "interface = \"eth0\"\n[[vip]]\naddress = \"198.18.0.1\"\nport = 53\nprotocol = \"udp\"\nfragments = true\n[[vip]]\naddress = \"198.18.0.1\"\nport = 54\nprotocol = \"udp\"\nfragments = true\n";
        let e = parse_err(two);
        assert!(e.message.contains("only one VIP per address"), "{e}");
        assert_eq!(e.line, Some(7), "{e}");
        // An all-ports VIP takes the fragments: a port VIP cannot also claim them.
        let all =
            two.replace("port = 53", "all_ports = true")
                .replacen("fragments = true\n", "", 1);
        assert!(parse_err(&all).message.contains("only one VIP per address"));
        // But on another VLAN it may.
        let vlan = two.replace("port = 54", "port = 54\nvlan = 7");
        parse(&vlan, Path::new("x")).unwrap();
        let checked = "interface = \"eth0\"\n[[vip]]\naddress = \"198.18.0.1\"\nall_ports = true\nprotocol = \"tcp\"\n[vip.check]\ntype = \"tcp\"\n  [[vip.backend]]\n  address = \"198.18.0.11\"\n";
        let e = parse_err(checked);
        assert!(e.message.contains("set the check's port"), "{e}");
        parse(
            &checked.replace("type = \"tcp\"", "type = \"tcp\"\nport = 22"),
            Path::new("x"),
        )
        .unwrap();
    }

    #[test]
    fn announce_groups_name_configured_vips() {
        let ok =
            format!("{GOOD}\n[[announce]]\nname = \"VI_1\"\nvips = [\"web\"]\nrequire = \"any\"\n");
        let m = parse(&ok, Path::new("x")).unwrap();
        assert_eq!(m.announce[0].vips, ["web"]);
        assert_eq!(m.announce[0].require, crate::spec::model::Require::Any);
    }

    #[test]
    fn vmac_vrid_gives_the_virtual_mac() {
        let group = "\n[[announce]]\nname = \"VI_1\"\nvips = [\"web\"]\nvmac_vrid = 51\n";
        let m = parse(&format!("{GOOD}{group}"), Path::new("x")).unwrap();
        assert_eq!(m.announce[0].vmac(), Some([0, 0, 0x5e, 0, 1, 51]));
    }

    #[test]
    fn xdp_mode_is_selectable() {
        let m = parse(&format!("xdp_mode = \"skb\"\n{GOOD}"), Path::new("x")).unwrap();
        assert_eq!(m.xdp_mode, XdpAttachMode::Skb);
    }

    #[test]
    fn vlan_tags_is_auto_or_in_band() {
        let m = parse(GOOD, Path::new("x")).unwrap();
        assert_eq!(m.vlan_tags, VlanTags::Auto);
        let m = parse(&format!("vlan_tags = \"in-band\"\n{GOOD}"), Path::new("x")).unwrap();
        assert_eq!(m.vlan_tags, VlanTags::InBand);
    }
}

/// The keys each section of the file accepts ("top", "vip", "backend", "check" and
/// "announce"; sub-tables are left out), read from the parser itself: serde lists them when
/// it refuses an unknown key. What is checked against this list (the README's config block,
/// the table of bad configs in tests/bad_configs.rs) cannot drift from the types.
#[doc(hidden)]
pub fn accepted_keys() -> Vec<(&'static str, std::collections::BTreeSet<String>)> {
    let accepted = |prefix: &str| {
        let text = format!("{prefix}zzz_not_a_key = 1\n");
        let e = parse(&text, Path::new("x")).expect_err("an unknown key is refused");
        let expected = e
            .message
            .split_once("expected")
            .unwrap_or_else(|| panic!("no key list in {e}"))
            .1;
        // The message quotes the offending line after the list.
        let expected = expected.split(" (in ").next().unwrap_or(expected);
        expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .filter(|k| {
                !matches!(
                    k.as_str(),
                    "vip" | "backend" | "check" | "announce" | "sync" | "load"
                )
            })
            .collect()
    };
    let top = "interface = \"eth0\"\n";
    let vip = format!("{top}[[vip]]\naddress = \"192.0.2.1\"\nport = 80\nprotocol = \"tcp\"\n");
    vec![
        ("top", accepted(top)),
        ("vip", accepted(&vip)),
        (
            "backend",
            accepted(&format!("{vip}[[vip.backend]]\naddress = \"192.0.2.2\"\n")),
        ),
        ("check", accepted(&format!("{vip}[vip.check]\n"))),
        ("load", accepted(&format!("{vip}[vip.load]\n"))),
        (
            "announce",
            accepted(&format!("{top}[[announce]]\nname = \"g\"\nvips = []\n")),
        ),
        ("sync", accepted(&format!("{top}[sync]\n"))),
    ]
}

/// The README's config block documents every key the parser accepts, and nothing else.
#[cfg(test)]
mod docs {
    use std::collections::{BTreeMap, BTreeSet};

    fn documented() -> BTreeMap<&'static str, BTreeSet<String>> {
        let readme = include_str!("../../../README.md");
        let block = readme
            .split_once("## Config\n\n```toml\n")
            .expect("README has a config block")
            .1
            .split_once("```")
            .unwrap()
            .0;
        let mut out: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        let mut section = "top";
        for line in block.lines() {
            let line = line.trim_start();
            // A section may be commented out whole ("# [vip.load]").
            match line
                .strip_prefix("# ")
                .unwrap_or(line)
                .split_whitespace()
                .next()
            {
                Some("[[vip]]") => section = "vip",
                Some("[vip.check]") | Some("[vip.backend.check]") => section = "check",
                Some("[[vip.backend]]") => section = "backend",
                Some("[vip.load]") => section = "load",
                Some("[[announce]]") => section = "announce",
                Some("[sync]") => section = "sync",
                _ => {}
            }
            let line = line.strip_prefix("# ").unwrap_or(line);
            if let Some((key, _)) = line.split_once('=') {
                let key = key.trim();
                if !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                    out.entry(section).or_default().insert(key.to_owned());
                }
            }
        }
        out
    }

    #[test]
    fn readme_documents_every_config_key() {
        let docs = documented();
        for (name, keys) in super::accepted_keys() {
            let doc = docs.get(name).cloned().unwrap_or_default();
            let missing: Vec<_> = keys.difference(&doc).collect();
            let unknown: Vec<_> = doc.difference(&keys).collect();
            assert!(
                missing.is_empty() && unknown.is_empty(),
                "README config block, section {name}: undocumented {missing:?}, not accepted {unknown:?}"
            );
        }
    }
}
