//! The validated model of what the operator asked for: VIPs, their backends and health checks.
//! Produced by `config` (and by CLI changes), consumed by the daemon's state.

use std::{fmt, net::IpAddr, path::PathBuf, str::FromStr, time::Duration};

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

impl FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            _ => Err(format!("protocol {s:?} is not tcp or udp")),
        }
    }
}

/// What identifies a VIP: address, port (0 = all ports), protocol and VLAN (0 = any):
/// "198.51.100.1:80/tcp", "[2001:db8::1]:53/udp", "198.51.100.1:*/udp",
/// "198.51.100.1:80/tcp@vlan100".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct VipAddr {
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    #[serde(default)]
    pub vlan: u16,
}

impl fmt::Display for VipAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let port = if self.port == 0 {
            "*".to_owned()
        } else {
            self.port.to_string()
        };
        match self.address {
            IpAddr::V4(a) => write!(f, "{a}:{port}/{}", self.protocol)?,
            IpAddr::V6(a) => write!(f, "[{a}]:{port}/{}", self.protocol)?,
        }
        if self.vlan != 0 {
            write!(f, "@vlan{}", self.vlan)?;
        }
        Ok(())
    }
}

impl FromStr for VipAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let usage =
            || format!("{s:?}: expected ADDRESS:PORT/PROTOCOL[@vlanN], e.g. 192.0.2.1:80/tcp");
        let (rest, vlan) = match s.split_once("@vlan") {
            Some((rest, v)) => {
                let vlan: u16 = v.parse().map_err(|_| usage())?;
                if !(1..=4094).contains(&vlan) {
                    return Err(format!("VLAN {vlan} is not 1..=4094"));
                }
                (rest, vlan)
            }
            None => (s, 0),
        };
        let (sock, proto) = rest.rsplit_once('/').ok_or_else(usage)?;
        let (host, port) = sock.rsplit_once(':').ok_or_else(usage)?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let address: IpAddr = host
            .parse()
            .map_err(|_| format!("{host:?} is not an IP address"))?;
        let port: u16 = match port {
            "*" => 0,
            p => match p.parse() {
                Ok(0) | Err(_) => {
                    return Err(format!("port {p:?} must be 1..=65535 or * (all ports)"));
                }
                Ok(p) => p,
            },
        };
        Ok(VipAddr {
            address,
            port,
            protocol: proto.parse()?,
            vlan,
        })
    }
}

/// How the program is attached: native (driver) XDP, or generic (skb) XDP for drivers
/// without native support.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpAttachMode {
    #[default]
    Native,
    Skb,
}

/// `[sync]`: flows sent to, and adopted from, the other load balancers (runtime::sync).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncSpec {
    pub peers: Vec<std::net::SocketAddr>,
    pub listen: std::net::SocketAddr,
    /// The shared secret authenticating the datagrams (at least 16 bytes).
    pub key_file: PathBuf,
    pub interval: Duration,
}

/// The flow-state exchange's port unless the config says otherwise.
pub const DEFAULT_SYNC_PORT: u16 = 7947;

/// A notify hook is killed after this long unless the config says otherwise.
pub const DEFAULT_NOTIFY_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the flow table is counted unless the config says otherwise: a walk of a
/// million entries takes about half a second of one core.
pub const DEFAULT_FLOW_COUNT_INTERVAL: Duration = Duration::from_secs(10);

/// Which of the data path's own diagnostic messages reach the log (aya-log; the level is
/// fixed when the program is loaded, so that "off" costs nothing per packet).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DatapathLog {
    #[default]
    Off,
    /// Failures: a flow-table insert that failed, a backend whose egress interface is gone.
    Warn,
    /// Also per-packet decisions worth a look: a flow entry whose backend keeps no flows
    /// now, a table slot that names no usable backend of its VIP.
    Debug,
}

impl DatapathLog {
    /// aya-log's level number for AYA_LOG_LEVEL (0: nothing).
    pub fn level(self) -> u8 {
        match self {
            DatapathLog::Off => 0,
            DatapathLog::Warn => 2,
            DatapathLog::Debug => 4,
        }
    }
}

/// Whether VLAN tags reach the program in the frame. `Auto`: dsr decides from the interface
/// (driver and offloads) and refuses `vlan` VIPs where it cannot be sure; `InBand`: the
/// operator vouches for it (e.g. a veth whose peer has its tx-vlan offloads off).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VlanTags {
    #[default]
    Auto,
    InBand,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for MacAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split([':', '-']).collect();
        if parts.len() != 6 {
            return Err("expected six hex bytes like 02:00:00:00:00:01".into());
        }
        let mut mac = [0u8; 6];
        for (i, p) in parts.iter().enumerate() {
            if p.len() != 2 {
                return Err(format!("byte {p:?} is not two hex digits"));
            }
            mac[i] = u8::from_str_radix(p, 16).map_err(|_| format!("byte {p:?} is not hex"))?;
        }
        if mac[0] & 1 == 1 {
            return Err("a multicast/broadcast address cannot be a backend".into());
        }
        if mac == [0; 6] {
            return Err("the all-zero address cannot be a backend".into());
        }
        Ok(MacAddr(mac))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Which backends of a VIP get new flows: primaries while any is usable with weight > 0,
/// else backups, else sorry servers.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    Primary,
    Backup,
    Sorry,
}

impl Role {
    pub fn plural(self) -> &'static str {
        match self {
            Role::Primary => "primaries",
            Role::Backup => "backups",
            Role::Sorry => "sorry servers",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Primary => "primary",
            Role::Backup => "backup",
            Role::Sorry => "sorry",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum CheckKind {
    /// Always up.
    None,
    /// A TCP connect that completes within the timeout.
    Tcp,
    /// An HTTP/1.1 GET answered within the timeout with `expect_status` (and, if set, a body
    /// containing `expect_body`).
    Http {
        path: String,
        expect_status: u16,
        host: Option<String>,
        expect_body: Option<String>,
    },
}

impl CheckKind {
    /// The `type` the config file gives this kind.
    pub fn type_name(&self) -> &'static str {
        match self {
            CheckKind::None => "none",
            CheckKind::Tcp => "tcp",
            CheckKind::Http { .. } => "http",
        }
    }
}

/// A backend's health check, with the VIP's defaults already merged in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckSpec {
    pub kind: CheckKind,
    /// Port on the backend's own address; `None` = the VIP's port.
    pub port: Option<u16>,
    #[serde(with = "duration_ms")]
    pub interval: Duration,
    #[serde(with = "duration_ms")]
    pub timeout: Duration,
    /// Consecutive successes that bring a down backend up.
    pub rise: u32,
    /// Consecutive failures that take an up backend down.
    pub fall: u32,
}

pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(1);
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_RISE: u32 = 2;
pub const DEFAULT_FALL: u32 = 2;

impl CheckSpec {
    /// No check: the backend is always up.
    pub fn none() -> Self {
        CheckSpec {
            kind: CheckKind::None,
            port: None,
            interval: DEFAULT_CHECK_INTERVAL,
            timeout: DEFAULT_CHECK_TIMEOUT,
            rise: DEFAULT_RISE,
            fall: DEFAULT_FALL,
        }
    }
}

fn hash_all() -> u32 {
    dsr_common::HASH_ALL
}

/// Names of the hash fields, in `HASH_*` bit order.
pub const HASH_FIELD_NAMES: [(&str, u32); 5] = [
    ("src_addr", dsr_common::HASH_SRC_ADDR),
    ("dst_addr", dsr_common::HASH_DST_ADDR),
    ("src_port", dsr_common::HASH_SRC_PORT),
    ("dst_port", dsr_common::HASH_DST_PORT),
    ("proto", dsr_common::HASH_PROTO),
];

/// "5-tuple", "source", or the list of fields joined by '+'.
pub fn hash_fields_name(fields: u32) -> String {
    match fields {
        dsr_common::HASH_ALL => "5-tuple".into(),
        dsr_common::HASH_SRC_ADDR => "source".into(),
        _ => HASH_FIELD_NAMES
            .iter()
            .filter(|(_, bit)| fields & bit != 0)
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join("+"),
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendSpec {
    pub address: IpAddr,
    /// Relative share of new flows; 0 = drain (no new flows, established ones stay).
    pub weight: u32,
    /// Static MAC; `None` = resolved from the kernel's neighbour table.
    pub mac: Option<MacAddr>,
    pub role: Role,
    /// On a failed check, keep the backend with weight 0 (its flows stay) instead of removing
    /// it, as keepalived's `inhibit_on_failure`.
    pub inhibit_on_failure: bool,
    pub check: CheckSpec,
    /// Drained by the operator (`dsr backend drain`): no new flows, established ones stay.
    #[serde(default)]
    pub drained: bool,
    /// Its agent's port, instead of its VIP's `[vip.load]` agent_port (0: no agent for this
    /// backend); needs `[vip.load]`.
    #[serde(default)]
    pub agent_port: Option<u16>,
    /// Interface the backend is reached through when it is not the one traffic arrives on
    /// (frames then leave with XDP_REDIRECT); `None` = found from the routing table.
    #[serde(default)]
    pub interface: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipSpec {
    pub name: String,
    pub addr: VipAddr,
    /// Track flows (needed for drain); off = every packet placed by the table alone.
    pub conntrack: bool,
    /// Accept IP fragments (all fragments of a datagram then reach one backend; the hash
    /// cannot include ports).
    #[serde(default)]
    pub fragments: bool,
    /// Which flow fields select the backend (`dsr_common::HASH_*` bits).
    #[serde(default = "hash_all")]
    pub hash_fields: u32,
    /// The VIP's default check (its `[vip.check]`), for backends added at run time.
    #[serde(default = "CheckSpec::none")]
    pub check: CheckSpec,
    /// The VIP is announced (its VRRP instance held, its route offered) only while at least
    /// this many backends take new flows.
    #[serde(default = "one")]
    pub min_usable: u32,
    /// Withdrawn by the operator (`dsr vip drain`): not announced, still forwarding.
    #[serde(default)]
    pub drained: bool,
    /// Run as `COMMAND VIP NAME STATE` at each change of the VIP's state (runtime::notify);
    /// `None`: the top-level `notify`; `""`: none.
    #[serde(default)]
    pub notify: Option<String>,
    /// Its table's slots (a prime); `None`: the top-level `table_size`, else from its
    /// configured backends (`plan::sizing`).
    #[serde(default)]
    pub table_size: Option<u32>,
    /// Load-aware weights (`[vip.load]`, runtime::load); `None`: the configured weights.
    #[serde(default)]
    pub load: Option<LoadSpec>,
    pub backends: Vec<BackendSpec>,
}

/// `[vip.load]`: each backend's effective weight follows its load, from its agent's answers
/// and (with `flows`) the active flows it holds, in steps of an eighth of its configured
/// weight, at most one step per `weight_interval`, within the bounds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadSpec {
    /// HAProxy's agent check, asked on each backend's own address.
    pub agent: Option<AgentSpec>,
    /// A backend holding more than its share of the VIP's active flows steps down.
    pub flows: bool,
    #[serde(with = "duration_ms")]
    pub weight_interval: Duration,
    /// Bounds of the effective weight, in eighths of the configured weight (1..=16).
    pub min_eighths: u32,
    pub max_eighths: u32,
}

/// An agent check (HAProxy's `agent-check`): connect, send `send` if set, read one line of
/// words such as `75%`, `drain`, `maint`, `down`, `up`, `ready`; with `path`, the first line
/// of the body of an HTTP GET of it instead.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSpec {
    pub port: u16,
    #[serde(with = "duration_ms")]
    pub interval: Duration,
    #[serde(with = "duration_ms")]
    pub timeout: Duration,
    pub send: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
}

impl LoadSpec {
    /// The agent `backend` is asked through: its own `agent_port`, else the VIP's; `None`
    /// when neither names one (or its own is 0).
    pub fn agent_for(&self, backend: &BackendSpec) -> Option<AgentSpec> {
        let a = self.agent.as_ref()?;
        let port = backend.agent_port.unwrap_or(a.port);
        (port != 0).then(|| AgentSpec { port, ..a.clone() })
    }
}

impl AgentSpec {
    /// The agent settings of a VIP whose backends name their own agent ports (port 0: the
    /// others have none), with the default timings.
    pub fn backends_only() -> AgentSpec {
        AgentSpec {
            port: 0,
            interval: DEFAULT_AGENT_INTERVAL,
            timeout: DEFAULT_AGENT_TIMEOUT.min(DEFAULT_AGENT_INTERVAL),
            send: None,
            path: None,
        }
    }
}

/// Load-aware weight settings as written (`[vip.load]` in the file, or `dsr vip add`'s
/// flags), before defaults: the one place they become a [`LoadSpec`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadSettings {
    pub agent_port: Option<u16>,
    /// Some backend of the VIP has an `agent_port` of its own.
    pub backend_agents: bool,
    pub agent_interval: Option<Duration>,
    pub agent_timeout: Option<Duration>,
    pub agent_send: Option<String>,
    pub agent_path: Option<String>,
    pub flows: bool,
    pub weight_interval: Option<Duration>,
    /// Bounds in percent of the configured weight.
    pub min_weight: Option<u32>,
    pub max_weight: Option<u32>,
}

impl LoadSettings {
    /// The spec with the defaults filled in, or the setting that is wrong (its `load.` key)
    /// and why. The rules between settings and the VIP are `validate`'s.
    pub fn spec(&self) -> Result<LoadSpec, (&'static str, String)> {
        if self.agent_port == Some(0) {
            return Err((
                "load.agent_port",
                "load.agent_port must be 1..=65535 (leave it out to ask only the backends that \
                 have an agent_port of their own)"
                    .into(),
            ));
        }
        // Backends with an agent_port of their own need the agent settings without a
        // VIP-wide port (0 there: those without one have no agent).
        let port = self.agent_port.or(self.backend_agents.then_some(0));
        let agent = match port {
            Some(port) => {
                let interval = self.agent_interval.unwrap_or(DEFAULT_AGENT_INTERVAL);
                Some(AgentSpec {
                    port,
                    interval,
                    timeout: self
                        .agent_timeout
                        .unwrap_or(DEFAULT_AGENT_TIMEOUT.min(interval)),
                    send: self.agent_send.clone(),
                    path: self.agent_path.clone(),
                })
            }
            None => {
                // Agent settings without an agent would silently do nothing.
                let stray = [
                    ("load.agent_path", self.agent_path.is_some()),
                    ("load.agent_interval", self.agent_interval.is_some()),
                    ("load.agent_timeout", self.agent_timeout.is_some()),
                    ("load.agent_send", self.agent_send.is_some()),
                ];
                if let Some((key, _)) = stray.into_iter().find(|(_, given)| *given) {
                    return Err((
                        key,
                        format!(
                            "{key} needs an agent port (load.agent_port, or a backend's \
                             agent_port)"
                        ),
                    ));
                }
                None
            }
        };
        // In the percent written: in eighths, 5% and 4% are both 1/8.
        let (min, max) = (
            self.min_weight.unwrap_or(DEFAULT_MIN_WEIGHT_PERCENT),
            self.max_weight.unwrap_or(DEFAULT_MAX_WEIGHT_PERCENT),
        );
        if min > max && (1..=200).contains(&min) && (1..=200).contains(&max) {
            return Err((
                "load.min_weight",
                format!("load.min_weight {min}% is above load.max_weight {max}%"),
            ));
        }
        let percent = |v: Option<u32>, key: &'static str, default: u32| match v {
            None => Ok(eighths_of_percent(default)),
            Some(p) if (1..=200).contains(&p) => Ok(eighths_of_percent(p)),
            Some(p) => Err((
                key,
                format!("{key} {p} is not 1..=200 (percent of the configured weight)"),
            )),
        };
        Ok(LoadSpec {
            agent,
            flows: self.flows,
            weight_interval: self.weight_interval.unwrap_or(DEFAULT_WEIGHT_INTERVAL),
            min_eighths: percent(
                self.min_weight,
                "load.min_weight",
                DEFAULT_MIN_WEIGHT_PERCENT,
            )?,
            max_eighths: percent(
                self.max_weight,
                "load.max_weight",
                DEFAULT_MAX_WEIGHT_PERCENT,
            )?,
        })
    }
}

pub const DEFAULT_AGENT_INTERVAL: Duration = Duration::from_secs(2);
pub const DEFAULT_AGENT_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_WEIGHT_INTERVAL: Duration = Duration::from_secs(5);
/// `min_weight` and `max_weight` unless the config says otherwise (percent).
pub const DEFAULT_MIN_WEIGHT_PERCENT: u32 = 25;
pub const DEFAULT_MAX_WEIGHT_PERCENT: u32 = 100;

/// A weight bound in percent as eighths, rounded to the nearest (at least one eighth).
pub fn eighths_of_percent(percent: u32) -> u32 {
    ((percent * 8 + 50) / 100).max(1)
}

fn one() -> u32 {
    1
}

/// Plain specs for unit tests: a primary of weight 1 without check or MAC, and a TCP VIP with
/// the defaults a config without options gives. Tests change what they are about.
#[cfg(test)]
impl BackendSpec {
    pub fn plain(address: IpAddr) -> Self {
        BackendSpec {
            address,
            weight: 1,
            mac: None,
            role: Role::Primary,
            inhibit_on_failure: false,
            check: CheckSpec::none(),
            drained: false,
            agent_port: None,
            interface: None,
        }
    }
}

#[cfg(test)]
impl VipSpec {
    pub fn plain(name: &str, addr: VipAddr, backends: Vec<BackendSpec>) -> Self {
        VipSpec {
            name: name.into(),
            addr,
            conntrack: true,
            fragments: false,
            hash_fields: dsr_common::HASH_ALL,
            check: CheckSpec::none(),
            min_usable: 1,
            drained: false,
            notify: None,
            table_size: None,
            load: None,
            backends,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Model {
    /// Names this load balancer's pinned maps, control socket and state directory.
    pub instance: String,
    pub interface: String,
    pub xdp_mode: XdpAttachMode,
    pub vlan_tags: VlanTags,
    pub datapath_log: DatapathLog,
    pub hash_seed: u32,
    /// The config's `table_size`, `max_table_slots` and `table_budget`.
    pub tables: crate::plan::sizing::TableSizing,
    pub max_vips: u32,
    pub max_backends: u32,
    pub flow_table_size: u32,
    pub flow_idle_timeout: Duration,
    /// How often the flow table is walked to count its flows (status, metrics).
    pub flow_count_interval: Duration,
    /// A notify command still running after this long is killed.
    pub notify_timeout: Duration,
    /// The notify command of every VIP that has no `notify` of its own.
    pub notify: Option<String>,
    /// The flow-state exchange with the other load balancers (`None`: off).
    pub sync: Option<SyncSpec>,
    pub control_socket: PathBuf,
    /// The group (its id) whose members may use the control socket besides root.
    pub control_group: Option<u32>,
    pub state_dir: PathBuf,
    /// Where the Prometheus endpoint listens; `None` = off.
    pub metrics: Option<std::net::SocketAddr>,
    pub vips: Vec<VipSpec>,
    /// Announcement groups (e.g. one per VRRP instance): one file for several VIPs.
    pub announce: Vec<AnnounceGroup>,
}

/// Several VIPs announced together (a VRRP instance holds them all): the group is announced
/// while any, or all, of its VIPs are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnounceGroup {
    pub name: String,
    pub vips: Vec<String>,
    pub require: Require,
    /// The VRID of the group's keepalived instance if it runs with `use_vmac`: the node then
    /// receives for the virtual MAC 00:00:5e:00:01:VRID while keepalived says it is MASTER.
    #[serde(default)]
    pub vmac_vrid: Option<u8>,
}

impl AnnounceGroup {
    /// The VRRP virtual MAC of the group's instance (RFC 5798 IPv4: 00-00-5E-00-01-VRID).
    pub fn vmac(&self) -> Option<[u8; 6]> {
        self.vmac_vrid.map(|v| [0x00, 0x00, 0x5e, 0x00, 0x01, v])
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Require {
    /// Announced while every VIP of the group is.
    #[default]
    All,
    /// Announced while at least one is.
    Any,
}

/// Parses "250ms", "2s", "1.5s", "5m" or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 2s or 1m"))?;
    let ms = match unit {
        "ms" => n,
        "s" => n * 1e3,
        "m" => n * 60e3,
        "h" => n * 3600e3,
        _ => return Err(format!("{s:?}: unit must be ms, s, m or h")),
    };
    whole_ms(ms, &format!("{s:?}"))
}

/// `ms` milliseconds as a duration, if it is a whole number of them in range (`shown`: the
/// input as the error should name it). The config file's durations and the CLI's go through
/// here (the keepalived import rounds its fractional-second timers to milliseconds).
pub fn whole_ms(ms: f64, shown: &str) -> Result<Duration, String> {
    if !(0.0..=1e12).contains(&ms) || !ms.is_finite() {
        return Err(format!("{shown} is out of range"));
    }
    // Durations are kept and sent as whole milliseconds (the state file, the control
    // socket): a finer one would silently change on the way. "1.1s" is 1100.0000000000002
    // in floating point, hence the tolerance: a nanosecond, or the rounding error of a value
    // as large as this one, whichever is larger.
    if (ms - ms.round()).abs() > 1e-6_f64.max(ms * 1e-14) {
        return Err(format!(
            "{shown}: durations are whole milliseconds (like 500ms, 2s or 1.5s)"
        ));
    }
    Ok(Duration::from_millis(ms.round() as u64))
}

mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("3 fortnights").is_err());
        assert_eq!(parse_duration("1.1s"), Ok(Duration::from_millis(1100)));
        let e = parse_duration("0.5ms").unwrap_err();
        assert!(e.contains("whole milliseconds"), "{e}");
        assert!(
            parse_duration("1.0005s").is_err(),
            "finer than a millisecond"
        );
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn vip_addresses() {
        let v: VipAddr = "192.0.2.1:80/tcp".parse().unwrap();
        assert_eq!(v.to_string(), "192.0.2.1:80/tcp");
        let v6: VipAddr = "[2001:db8::1]:53/udp".parse().unwrap();
        assert_eq!(v6.to_string(), "[2001:db8::1]:53/udp");
        assert!("192.0.2.1:80".parse::<VipAddr>().is_err());
        assert!("192.0.2.1:0/tcp".parse::<VipAddr>().is_err());
        assert!("192.0.2.1:80/sctp".parse::<VipAddr>().is_err());
        let all: VipAddr = "192.0.2.1:*/udp@vlan7".parse().unwrap();
        assert_eq!((all.port, all.vlan), (0, 7));
        assert_eq!(all.to_string(), "192.0.2.1:*/udp@vlan7");
        assert!("192.0.2.1:80/tcp@vlan5000".parse::<VipAddr>().is_err());
    }
}
