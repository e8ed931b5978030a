//! The one validation of a set of VIPs. Every source of a change (the TOML file, a reload, a
//! CLI command, a control-socket message, a journal replay) produces `VipSpec`s and passes
//! them through [`vips`]; no rule is written anywhere else, so no source can skip one.
//!
//! An error says where the problem is as a [`Place`] (which VIP, which backend, which field):
//! the TOML reader turns that into a file and line, everyone else into "VIP web: backend
//! 198.18.0.11: ...". The message itself is the same for all.

use std::{collections::HashMap, fmt, net::IpAddr, time::Duration};

use dsr_common::{HASH_ALL, HASH_PORTS, HASH_SRC_ADDR, HASH_SRC_PORT};

use crate::spec::model::{BackendSpec, CheckKind, CheckSpec, LoadSpec, Protocol, VipAddr, VipSpec};

/// Largest weight: keeps weight arithmetic in the table builder far from overflow.
pub const MAX_WEIGHT: u32 = 1_000_000;
/// Shortest check interval: a shorter one is a busy loop against the backend.
pub const MIN_CHECK_INTERVAL: Duration = Duration::from_millis(10);
/// Largest `min_usable` (a VIP cannot have more backends than a table has slots anyway).
pub const MAX_MIN_USABLE: usize = 1 << 16;
/// Longest VIP name (it appears in status lines, logs and metrics labels).
pub const MAX_NAME_LEN: usize = 64;

/// The field of a [`Place`] when all VIPs' tables together do not fit: the top-level
/// `table_budget`, not a VIP's setting.
pub const TABLE_BUDGET: &str = "table_budget";

/// What the maps can hold, fixed when the data path is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_vips: u32,
    pub max_backends: u32,
    pub tables: crate::plan::sizing::TableSizing,
}

/// Where in a list of VIPs a problem is. `field` names the setting as the TOML file spells
/// it (check fields as "check.interval").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    Vip {
        vip: usize,
        field: Option<&'static str>,
    },
    Backend {
        vip: usize,
        backend: usize,
        field: Option<&'static str>,
    },
}

/// A refused spec: where, what, and for duplicates where the first one is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    pub place: Place,
    pub message: String,
    /// The earlier item a duplicate collides with.
    pub first: Option<Place>,
    /// "VIP web: backend 198.18.0.11", for callers without a file.
    pub context: String,
    /// The same for `first`.
    pub first_context: String,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.context.is_empty() {
            write!(f, "{}: ", self.context)?;
        }
        f.write_str(&self.message)?;
        if self.first.is_some() {
            write!(f, " (first: {})", self.first_context)?;
        }
        Ok(())
    }
}

impl std::error::Error for Invalid {}

/// Message of a check setting given for a check type it does not apply to (the TOML file
/// and the CLI both refuse such settings rather than ignore them).
pub fn http_only(field: &str, kind: &str) -> String {
    format!("check field {field} only applies to type = \"http\" (this check is {kind:?})")
}

/// Validates a whole set of VIPs against the map limits.
pub fn vips(vips: &[VipSpec], limits: Limits) -> Result<(), Box<Invalid>> {
    let fail = |place: Place, message: String, first: Option<Place>| {
        Err(Box::new(Invalid {
            place,
            context: context(vips, place),
            first_context: first.map(|p| context(vips, p)).unwrap_or_default(),
            message,
            first,
        }))
    };
    if vips.len() > limits.max_vips as usize {
        return fail(
            Place::Vip {
                vip: limits.max_vips as usize,
                field: None,
            },
            format!(
                "{} VIPs configured but max_vips is {}",
                vips.len(),
                limits.max_vips
            ),
            None,
        );
    }
    let mut seen: HashMap<VipAddr, usize> = HashMap::new();
    let mut names: HashMap<&str, usize> = HashMap::new();
    // (address, protocol, VLAN) -> (first VIP, takes fragments) of all-ports and fragment VIPs.
    let mut fragment_owners: HashMap<(IpAddr, Protocol, u16), (usize, bool)> = HashMap::new();
    // The first backend past the limit is where the file says too much.
    let over_limit = vips
        .iter()
        .enumerate()
        .flat_map(|(i, v)| (0..v.backends.len()).map(move |j| (i, j)))
        .nth(limits.max_backends as usize);
    let total_backends: usize = vips.iter().map(|v| v.backends.len()).sum();
    for (i, v) in vips.iter().enumerate() {
        let at = |field| Place::Vip { vip: i, field };
        if let Err((field, message)) = vip(v) {
            return fail(at(field), message, None);
        }
        if let Some(&first) = seen.get(&v.addr) {
            return fail(
                at(None),
                format!("VIP {} is configured twice", v.addr),
                Some(Place::Vip {
                    vip: first,
                    field: None,
                }),
            );
        }
        seen.insert(v.addr, i);
        if let Some(&first) = names.get(v.name.as_str()) {
            return fail(
                at(Some("name")),
                format!("VIP name {:?} is used twice", v.name),
                Some(Place::Vip {
                    vip: first,
                    field: None,
                }),
            );
        }
        names.insert(&v.name, i);
        // Fragments of one address/protocol/VLAN can only go to one VIP: a non-first
        // fragment has no port to choose by. An all-ports VIP takes them.
        if v.fragments || v.addr.port == 0 {
            let owner = (v.addr.address, v.addr.protocol, v.addr.vlan);
            if let Some(&(first, takes)) = fragment_owners.get(&owner)
                && (v.fragments || takes)
            {
                return fail(
                    at(None),
                    format!(
                        "VIP {}: only one VIP per address, protocol and VLAN may take its \
                         fragments, and an all-ports VIP takes them",
                        v.addr
                    ),
                    Some(Place::Vip {
                        vip: first,
                        field: None,
                    }),
                );
            }
            fragment_owners.entry(owner).or_insert((i, false)).1 |= v.fragments;
        }
        let mut seen_backends: HashMap<IpAddr, usize> = HashMap::new();
        for (j, b) in v.backends.iter().enumerate() {
            let at = |field| Place::Backend {
                vip: i,
                backend: j,
                field,
            };
            if let Some(&first) = seen_backends.get(&b.address) {
                return fail(
                    at(Some("address")),
                    format!("backend {} appears twice in VIP {}", b.address, v.name),
                    Some(Place::Backend {
                        vip: i,
                        backend: first,
                        field: None,
                    }),
                );
            }
            seen_backends.insert(b.address, j);
            if let Err((field, message)) = backend(b, v) {
                return fail(at(field), message, None);
            }
        }
    }
    if let Some((vip, backend)) = over_limit {
        return fail(
            Place::Backend {
                vip,
                backend,
                field: None,
            },
            format!(
                "{total_backends} backends configured but max_backends is {}",
                limits.max_backends
            ),
            None,
        );
    }
    if let Err(e) = limits.tables.sizes(vips) {
        let Some(vip) = e.vip else {
            // All VIPs together do not fit: the budget is what is wrong, not a VIP.
            return Err(Box::new(Invalid {
                place: Place::Vip {
                    vip: 0,
                    field: Some(TABLE_BUDGET),
                },
                message: e.message,
                first: None,
                context: String::new(),
                first_context: String::new(),
            }));
        };
        let place = Place::Vip {
            vip,
            field: Some("table_size"),
        };
        return fail(place, e.message, None);
    }
    Ok(())
}

/// The rules of one VIP on its own (not its backends).
fn vip(v: &VipSpec) -> Result<(), (Option<&'static str>, String)> {
    if v.name.is_empty() || v.name.len() > MAX_NAME_LEN || v.name.chars().any(char::is_control) {
        return Err((
            Some("name"),
            format!(
                "VIP name {:?} must be 1-{MAX_NAME_LEN} printable characters",
                v.name
            ),
        ));
    }
    // A name that reads as another VIP's address would make `dsr backend add NAME` ambiguous.
    if let Ok(addr) = v.name.parse::<VipAddr>()
        && addr != v.addr
    {
        return Err((
            Some("name"),
            format!(
                "VIP name {:?} is the address of another VIP; name it after this one ({}) or \
                 use a plain name",
                v.name, v.addr
            ),
        ));
    }
    // Traffic to these never reaches a VIP: such an entry could only swallow frames that
    // are not ours (broadcasts, multicast groups).
    let unicast = match v.addr.address {
        IpAddr::V4(a) => !(a.is_unspecified() || a.is_multicast() || a.is_broadcast()),
        IpAddr::V6(a) => !(a.is_unspecified() || a.is_multicast()),
    };
    if !unicast {
        return Err((
            Some("address"),
            format!("VIP address {} is not a unicast address", v.addr.address),
        ));
    }
    if v.addr.vlan > 4094 {
        return Err((
            Some("vlan"),
            format!("vlan {} is not 1..=4094", v.addr.vlan),
        ));
    }
    hash(v.hash_fields, v.fragments).map_err(|m| (Some("hash"), m))?;
    if v.min_usable as usize > MAX_MIN_USABLE {
        return Err((
            Some("min_usable"),
            format!("min_usable {} is above {MAX_MIN_USABLE}", v.min_usable),
        ));
    }
    if let Some(cmd) = &v.notify {
        notify_command(cmd).map_err(|m| (Some("notify"), m))?;
    }
    check(&v.check).map_err(|(f, m)| (Some(f), m))?;
    if v.addr.port == 0 && v.check.kind != CheckKind::None && v.check.port.is_none() {
        return Err((
            Some("check.port"),
            "an all-ports VIP has no port to check; set the check's port".into(),
        ));
    }
    if let Some(l) = &v.load {
        load(l, v)?;
    }
    Ok(())
}

/// Shortest `weight_interval`: effective weights are stepped on a 100 ms timer.
pub const MIN_WEIGHT_INTERVAL: Duration = Duration::from_millis(100);
/// Longest `agent_send`: one short line, as HAProxy's agent-send.
pub const MAX_AGENT_SEND: usize = 256;

/// The `[vip.load]` rules (bounds are in eighths here, percent in the file).
fn load(l: &LoadSpec, v: &VipSpec) -> Result<(), (Option<&'static str>, String)> {
    let (conntrack, hash_fields) = (v.conntrack, v.hash_fields);
    if l.agent.is_none() && !l.flows {
        return Err((
            None,
            "[vip.load] needs an agent (agent_port) or flows = true: with neither, no weight \
             would ever change"
                .into(),
        ));
    }
    if l.flows && !conntrack {
        return Err((
            Some("load.flows"),
            "load.flows counts the VIP's tracked flows, and this VIP has conntrack = false".into(),
        ));
    }
    if l.flows && hash_fields & HASH_PORTS != HASH_PORTS {
        return Err((
            Some("load.flows"),
            "load.flows counts connections, and this VIP's hash leaves out ports (one flow \
             entry then stands for many connections of a client)"
                .into(),
        ));
    }
    if let Some(a) = &l.agent {
        // Port 0: no VIP-wide agent, only backends with an agent_port of their own (the
        // file refuses a written 0; removing the last such backend at run time is fine).
        if let Some(path) = &a.path {
            // What the HTTP request takes as its target, or every ask would fail.
            let valid = path.starts_with('/')
                && path.parse::<hyper::http::uri::PathAndQuery>().is_ok()
                && !path.contains(|c: char| c.is_whitespace() || c.is_control());
            if !valid {
                return Err((
                    Some("load.agent_path"),
                    format!(
                        "load.agent_path {path:?} must be a URL path starting with '/', without \
                         spaces"
                    ),
                ));
            }
            if a.send.is_some() {
                return Err((
                    Some("load.agent_send"),
                    "load.agent_send is for the plain TCP agent; with load.agent_path the agent \
                     is asked by HTTP GET"
                        .into(),
                ));
            }
        }
        if a.interval < MIN_CHECK_INTERVAL {
            return Err((
                Some("load.agent_interval"),
                format!(
                    "load.agent_interval {:?} is below {MIN_CHECK_INTERVAL:?}",
                    a.interval
                ),
            ));
        }
        // Whole milliseconds, as the saved state keeps it (and the health checks' rule).
        if a.timeout < Duration::from_millis(1) {
            return Err((
                Some("load.agent_timeout"),
                format!("load.agent_timeout {:?} must be at least 1ms", a.timeout),
            ));
        }
        // A silent agent holds one of the check slots it shares with the health checks for
        // its whole timeout.
        if a.timeout > a.interval {
            return Err((
                Some("load.agent_timeout"),
                format!(
                    "load.agent_timeout {:?} is longer than load.agent_interval {:?}",
                    a.timeout, a.interval
                ),
            ));
        }
        if let Some(s) = &a.send
            && (s.len() > MAX_AGENT_SEND || s.contains('\0'))
        {
            return Err((
                Some("load.agent_send"),
                format!("load.agent_send must be at most {MAX_AGENT_SEND} bytes, without NUL"),
            ));
        }
    }
    if l.weight_interval < MIN_WEIGHT_INTERVAL {
        return Err((
            Some("load.weight_interval"),
            format!(
                "load.weight_interval {:?} is below {MIN_WEIGHT_INTERVAL:?}",
                l.weight_interval
            ),
        ));
    }
    for (field, e) in [
        ("load.min_weight", l.min_eighths),
        ("load.max_weight", l.max_eighths),
    ] {
        if !(1..=16).contains(&e) {
            return Err((
                Some(field),
                format!("{field} is {e}/8 of the configured weight; it must be 1/8..=16/8"),
            ));
        }
    }
    if l.min_eighths > l.max_eighths {
        return Err((
            Some("load.min_weight"),
            format!(
                "load.min_weight ({}/8) is above load.max_weight ({}/8)",
                l.min_eighths, l.max_eighths
            ),
        ));
    }
    Ok(())
}

/// The hash-field rules: known fields, a source field, no ports with fragments.
pub fn hash(fields: u32, fragments: bool) -> Result<(), String> {
    if fields & !HASH_ALL != 0 {
        return Err(format!("hash fields {fields:#x} include unknown bits"));
    }
    if fields & (HASH_SRC_ADDR | HASH_SRC_PORT) == 0 {
        return Err(
            "the hash must include the source address or port, or every client \
                    lands on one backend"
                .into(),
        );
    }
    if fragments && fields & HASH_PORTS != 0 {
        return Err(
            "a VIP that accepts fragments cannot hash on ports (non-first fragments carry \
             none): use e.g. hash = \"addresses\" or \"source\""
                .into(),
        );
    }
    Ok(())
}

/// The rules of one backend of `vip`.
fn backend(b: &BackendSpec, vip: &VipSpec) -> Result<(), (Option<&'static str>, String)> {
    if b.agent_port.is_some() && vip.load.is_none() {
        return Err((
            Some("agent_port"),
            "agent_port needs [vip.load] in its VIP (the load-aware weights it feeds)".into(),
        ));
    }
    if b.agent_port.is_some_and(|p| p != 0) && vip.load.as_ref().is_some_and(|l| l.agent.is_none())
    {
        return Err((
            Some("agent_port"),
            "agent_port needs agent settings in its VIP's [vip.load] (its agent would never be \
             asked)"
                .into(),
        ));
    }
    let unicast = match b.address {
        IpAddr::V4(a) => !(a.is_unspecified() || a.is_multicast() || a.is_broadcast()),
        IpAddr::V6(a) => !(a.is_unspecified() || a.is_multicast()),
    };
    if !unicast {
        return Err((
            Some("address"),
            format!("backend address {} is not a unicast address", b.address),
        ));
    }
    if b.address == vip.addr.address {
        return Err((
            Some("address"),
            format!(
                "backend {} is the VIP's own address: a backend needs an address of its own",
                b.address
            ),
        ));
    }
    if b.weight > MAX_WEIGHT {
        return Err((
            Some("weight"),
            format!("weight {} is above the maximum {MAX_WEIGHT}", b.weight),
        ));
    }
    if let Some(mac) = b.mac
        && (mac.0[0] & 1 == 1 || mac.0 == [0; 6])
    {
        return Err((
            Some("mac"),
            format!("mac {mac}: a backend needs a unicast MAC"),
        ));
    }
    if let Some(name) = &b.interface
        && !valid_ifname(name)
    {
        return Err((
            Some("interface"),
            format!("interface {name:?} is not a valid interface name"),
        ));
    }
    check(&b.check).map_err(|(f, m)| (Some(f), m))?;
    if vip.addr.port == 0 && b.check.kind != CheckKind::None && b.check.port.is_none() {
        return Err((
            None,
            format!(
                "backend {}: an all-ports VIP has no port to check; set the check's port",
                b.address
            ),
        ));
    }
    Ok(())
}

/// The rules of a health check. Returns the offending field and why.
pub fn check(c: &CheckSpec) -> Result<(), (&'static str, String)> {
    if let CheckKind::Http {
        path,
        expect_status,
        host,
        ..
    } = &c.kind
    {
        // Both go into the request as they are: a space or a line break would end the
        // request line or header early, and the check would fail on every try.
        let unsafe_char = |c: char| c.is_whitespace() || c.is_control();
        if !path.starts_with('/') || path.contains(unsafe_char) {
            return Err((
                "check.path",
                format!("check path {path:?} must start with '/' and contain no spaces"),
            ));
        }
        if let Some(host) = host
            && (host.is_empty() || host.contains(unsafe_char))
        {
            return Err((
                "check.host",
                format!("check host {host:?} must be a non-empty name without spaces"),
            ));
        }
        if !(100..=599).contains(expect_status) {
            return Err((
                "check.expect_status",
                format!("expect_status {expect_status} is not an HTTP status"),
            ));
        }
    }
    if c.port == Some(0) {
        return Err(("check.port", "check port must be 1..=65535".into()));
    }
    if c.interval < MIN_CHECK_INTERVAL {
        return Err((
            "check.interval",
            format!(
                "check interval {:?} must be at least {MIN_CHECK_INTERVAL:?}",
                c.interval
            ),
        ));
    }
    if c.timeout < Duration::from_millis(1) {
        return Err((
            "check.timeout",
            format!("check timeout {:?} must be at least 1ms", c.timeout),
        ));
    }
    // A check still waiting when the next one is due would make the interval a lie: a
    // black-holed backend would be checked every `timeout`, and fall x interval would no
    // longer say how soon it goes down.
    if c.timeout > c.interval {
        return Err((
            "check.timeout",
            format!(
                "check timeout {:?} is longer than its interval {:?}: a check would still be \
                 waiting when the next is due; make timeout at most the interval",
                c.timeout, c.interval
            ),
        ));
    }
    for (name, n) in [("rise", c.rise), ("fall", c.fall)] {
        if !(1..=100).contains(&n) {
            return Err((
                if name == "rise" {
                    "check.rise"
                } else {
                    "check.fall"
                },
                format!("{name} {n} must be 1..=100"),
            ));
        }
    }
    Ok(())
}

/// A notify command: "" (none), or a command line that dsr can append `VIP NAME STATE`
/// to (it runs `sh -c 'COMMAND "$@"'`): one line, and no `#`, or a trailing `;`, `&` or
/// `|`, which would swallow the arguments or run them as a command of their own.
pub fn notify_command(cmd: &str) -> Result<(), String> {
    if cmd.is_empty() {
        return Ok(());
    }
    let end = cmd.trim_end();
    if end.trim_start().is_empty()
        || cmd
            .chars()
            .any(|c| c == '\0' || c == '\n' || c == '\r' || c == '#')
        || end.ends_with([';', '&', '|'])
    {
        return Err(format!(
            "notify {cmd:?} must be a command on one line that takes arguments (it runs as \
             COMMAND VIP NAME STATE): no '#', and no trailing ';', '&' or '|'"
        ));
    }
    Ok(())
}

pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty() && name.len() <= 15 && !name.contains(['/', ' ', '\0'])
}

/// "VIP web" / "VIP web: backend 198.18.0.11", naming the place for callers without a file.
fn context(vips: &[VipSpec], place: Place) -> String {
    let vip_name = |i: usize| {
        vips.get(i)
            .map_or_else(|| format!("VIP #{}", i + 1), |v| format!("VIP {}", v.name))
    };
    match place {
        Place::Vip { vip, .. } => vip_name(vip),
        Place::Backend { vip, backend, .. } => {
            let addr = vips
                .get(vip)
                .and_then(|v| v.backends.get(backend))
                .map_or_else(|| format!("#{}", backend + 1), |b| b.address.to_string());
            format!("{}: backend {addr}", vip_name(vip))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::model::MacAddr;

    const LIMITS: Limits = Limits {
        max_vips: 4,
        max_backends: 8,
        tables: crate::plan::sizing::TableSizing::DEFAULT,
    };

    fn backend(last: u8) -> BackendSpec {
        BackendSpec::plain(IpAddr::from([198, 18, 0, last]))
    }

    fn web() -> VipSpec {
        VipSpec::plain(
            "web",
            "198.18.0.100:80/tcp".parse().unwrap(),
            vec![backend(11), backend(12)],
        )
    }

    fn refused(v: Vec<VipSpec>) -> Box<Invalid> {
        vips(&v, LIMITS).expect_err("should be refused")
    }

    /// A VIP whose only agents are the backends' own: removing the last of them at run time
    /// (every change is validated) is no error, and a backend of a VIP without [vip.load]
    /// cannot name one.
    #[test]
    fn backend_agent_ports_come_and_go() {
        use crate::spec::model::{AgentSpec, LoadSpec};
        let mut v = web();
        v.load = Some(LoadSpec {
            agent: Some(AgentSpec {
                port: 0,
                interval: Duration::from_secs(2),
                timeout: Duration::from_secs(1),
                send: None,
                path: None,
            }),
            flows: true,
            weight_interval: Duration::from_secs(5),
            min_eighths: 2,
            max_eighths: 8,
        });
        v.backends[0].agent_port = Some(6000);
        assert_eq!(vips(std::slice::from_ref(&v), LIMITS), Ok(()));
        v.backends.remove(0);
        assert_eq!(vips(std::slice::from_ref(&v), LIMITS), Ok(()));
        let mut plain = web();
        plain.backends[0].agent_port = Some(6000);
        let e = refused(vec![plain]);
        assert!(e.message.contains("agent_port needs [vip.load]"), "{e}");
    }

    #[test]
    fn each_rule_names_its_place() {
        vips(&[web()], LIMITS).unwrap();
        let mut v = web();
        v.backends[1].check.interval = Duration::ZERO;
        let e = refused(vec![v]);
        assert_eq!(
            e.place,
            Place::Backend {
                vip: 0,
                backend: 1,
                field: Some("check.interval")
            }
        );
        assert_eq!(
            e.to_string(),
            "VIP web: backend 198.18.0.12: check interval 0ns must be at least 10ms"
        );

        let mut v = web();
        v.backends[0].weight = 2_000_000;
        assert!(refused(vec![v]).message.contains("above the maximum"));

        let mut v = web();
        v.backends[0].mac = Some(MacAddr([1, 0, 0, 0, 0, 1]));
        assert!(refused(vec![v]).message.contains("unicast MAC"));

        let mut v = web();
        v.backends[0].address = v.addr.address;
        assert!(refused(vec![v]).message.contains("VIP's own address"));

        let mut v = web();
        v.backends.push(backend(11));
        let e = refused(vec![v]);
        assert!(e.to_string().contains("appears twice"), "{e}");
        assert!(
            e.to_string()
                .ends_with("(first: VIP web: backend 198.18.0.11)")
        );

        let mut all = web();
        all.addr = "198.18.0.100:*/tcp".parse().unwrap();
        all.name = "all".into();
        all.check.kind = CheckKind::Tcp;
        assert!(refused(vec![all]).message.contains("set the check's port"));

        let mut v = web();
        v.check.kind = CheckKind::Http {
            path: "nopath".into(),
            expect_status: 200,
            host: None,
            expect_body: None,
        };
        assert_eq!(
            refused(vec![v]).place,
            Place::Vip {
                vip: 0,
                field: Some("check.path")
            }
        );

        let mut named = web();
        named.name = "198.18.0.100:81/tcp".into();
        assert!(
            refused(vec![named])
                .message
                .contains("address of another VIP")
        );
    }

    #[test]
    fn rules_across_vips() {
        let mut dns = web();
        dns.name = "dns".into();
        dns.addr = "198.18.0.100:53/udp".parse().unwrap();
        dns.fragments = true;
        dns.hash_fields = HASH_SRC_ADDR;
        let mut dns2 = dns.clone();
        dns2.name = "dns2".into();
        dns2.addr.port = 54;
        let e = refused(vec![web(), dns.clone(), dns2]);
        assert!(e.message.contains("only one VIP per address"), "{e}");
        assert_eq!(
            e.first,
            Some(Place::Vip {
                vip: 1,
                field: None
            })
        );
        let mut twin = web();
        twin.name = "twin".into();
        assert!(
            refused(vec![web(), twin])
                .message
                .contains("configured twice")
        );
        let mut many = Vec::new();
        for i in 0..5u16 {
            let mut v = web();
            v.name = format!("v{i}");
            v.addr.port = 80 + i;
            v.backends.clear();
            many.push(v);
        }
        assert!(refused(many).message.contains("max_vips is 4"));
        let mut big = web();
        big.backends = (1..=9).map(backend).collect();
        assert!(refused(vec![big]).message.contains("max_backends is 8"));
    }
}
