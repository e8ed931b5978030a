//! The TOML config: parsed, then validated into a [`Model`]. Every error names the file, the
//! line and what is wrong, so an operator can fix it without guessing.

use std::{
    collections::HashMap,
    fmt,
    net::IpAddr,
    ops::Range,
    path::{Path, PathBuf},
};

use dsr_common::{DEFAULT_HASH_SEED, DEFAULT_MAX_BACKENDS, DEFAULT_MAX_VIPS, DEFAULT_TABLE_SIZE};
use serde::Deserialize;
use toml::Spanned;

use crate::model::{BackendSpec, MacAddr, Model, Protocol, VipSpec, XdpAttachMode};

/// Largest table size accepted: 2 rows per VIP of this many slots must fit in memory.
pub const MAX_TABLE_SIZE: u32 = 1_048_573;
/// Largest weight: keeps weight arithmetic in the table builder far from overflow.
pub const MAX_WEIGHT: u32 = 1_000_000;

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
    interface: Spanned<String>,
    #[serde(default)]
    xdp_mode: XdpAttachMode,
    #[serde(default = "default_seed")]
    hash_seed: u32,
    #[serde(default = "default_table_size")]
    table_size: Spanned<u32>,
    #[serde(default = "default_max_vips")]
    max_vips: Spanned<u32>,
    #[serde(default = "default_max_backends")]
    max_backends: Spanned<u32>,
    #[serde(default, rename = "vip")]
    vips: Vec<Spanned<RawVip>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVip {
    name: Option<String>,
    address: IpAddr,
    port: Spanned<u16>,
    protocol: Protocol,
    #[serde(default, rename = "backend")]
    backends: Vec<Spanned<RawBackend>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    address: IpAddr,
    #[serde(default = "default_weight")]
    weight: Spanned<u32>,
    mac: Option<Spanned<String>>,
}

fn default_seed() -> u32 {
    DEFAULT_HASH_SEED
}
fn default_table_size() -> Spanned<u32> {
    Spanned::new(0..0, DEFAULT_TABLE_SIZE)
}
fn default_max_vips() -> Spanned<u32> {
    Spanned::new(0..0, DEFAULT_MAX_VIPS)
}
fn default_max_backends() -> Spanned<u32> {
    Spanned::new(0..0, DEFAULT_MAX_BACKENDS)
}
fn default_weight() -> Spanned<u32> {
    Spanned::new(0..0, 1)
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

/// Parses and validates config text; `path` only names the file in errors.
pub fn parse(text: &str, path: &Path) -> Result<Model, ConfigError> {
    let err = |span: Option<Range<usize>>, message: String| ConfigError {
        file: path.to_owned(),
        line: span
            .filter(|s| s != &(0..0))
            .map(|s| line_of(text, s.start)),
        message,
    };
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        // toml's message repeats the source line with a caret; keep only the reason.
        let reason = e.message().trim().to_owned();
        err(e.span(), reason)
    })?;

    let interface = raw.interface.get_ref().trim().to_owned();
    if interface.is_empty() || interface.len() > 15 || interface.contains('/') {
        return Err(err(
            Some(raw.interface.span()),
            format!(
                "interface {:?} is not a valid interface name",
                raw.interface.get_ref()
            ),
        ));
    }
    let table_size = *raw.table_size.get_ref();
    if !(7..=MAX_TABLE_SIZE).contains(&table_size) || !is_prime(table_size) {
        return Err(err(
            Some(raw.table_size.span()),
            format!(
                "table_size {table_size} must be a prime between 7 and {MAX_TABLE_SIZE} \
                 (Maglev needs a prime; 65537 is the usual choice)"
            ),
        ));
    }
    let max_vips = *raw.max_vips.get_ref();
    if !(1..=65536).contains(&max_vips) {
        return Err(err(
            Some(raw.max_vips.span()),
            format!("max_vips {max_vips} must be 1..=65536"),
        ));
    }
    let max_backends = *raw.max_backends.get_ref();
    if !(1..=1 << 20).contains(&max_backends) {
        return Err(err(
            Some(raw.max_backends.span()),
            format!("max_backends {max_backends} must be 1..=1048576"),
        ));
    }
    if raw.vips.len() > max_vips as usize {
        return Err(err(
            raw.vips.get(max_vips as usize).map(|v| v.span()),
            format!(
                "{} VIPs configured but max_vips is {max_vips}",
                raw.vips.len()
            ),
        ));
    }

    let mut vips = Vec::with_capacity(raw.vips.len());
    let mut seen: HashMap<(IpAddr, u16, Protocol), usize> = HashMap::new();
    let mut total_backends = 0usize;
    for spanned in &raw.vips {
        let v = spanned.get_ref();
        let line = line_of(text, spanned.span().start);
        let port = *v.port.get_ref();
        if port == 0 {
            return Err(err(
                Some(v.port.span()),
                "VIP port must be 1..=65535".into(),
            ));
        }
        let key = (v.address, port, v.protocol);
        if let Some(first) = seen.insert(key, line) {
            return Err(err(
                Some(spanned.span()),
                format!(
                    "VIP {}:{port}/{} is configured twice (first at line {first})",
                    v.address, v.protocol
                ),
            ));
        }
        let name = v
            .name
            .clone()
            .unwrap_or_else(|| format!("{}:{port}/{}", v.address, v.protocol));
        let mut backends = Vec::with_capacity(v.backends.len());
        let mut seen_backends: HashMap<IpAddr, usize> = HashMap::new();
        for b in &v.backends {
            let raw_b = b.get_ref();
            let bline = line_of(text, b.span().start);
            if let Some(first) = seen_backends.insert(raw_b.address, bline) {
                return Err(err(
                    Some(b.span()),
                    format!(
                        "backend {} appears twice in VIP {name} (first at line {first})",
                        raw_b.address
                    ),
                ));
            }
            let weight = *raw_b.weight.get_ref();
            if weight > MAX_WEIGHT {
                return Err(err(
                    Some(raw_b.weight.span()),
                    format!("weight {weight} is above the maximum {MAX_WEIGHT}"),
                ));
            }
            let mac = match &raw_b.mac {
                None => None,
                Some(m) => Some(
                    m.get_ref()
                        .parse::<MacAddr>()
                        .map_err(|e| err(Some(m.span()), format!("mac {:?}: {e}", m.get_ref())))?,
                ),
            };
            backends.push(BackendSpec {
                address: raw_b.address,
                weight,
                mac,
            });
        }
        if backends.len() >= table_size as usize {
            return Err(err(
                Some(spanned.span()),
                format!(
                    "VIP {name} has {} backends; table_size {table_size} must be larger",
                    backends.len()
                ),
            ));
        }
        total_backends += backends.len();
        vips.push(VipSpec {
            name,
            address: v.address,
            port,
            protocol: v.protocol,
            backends,
        });
    }
    if total_backends > max_backends as usize {
        return Err(err(
            None,
            format!("{total_backends} backends configured but max_backends is {max_backends}"),
        ));
    }

    Ok(Model {
        interface,
        xdp_mode: raw.xdp_mode,
        hash_seed: raw.hash_seed,
        table_size,
        max_vips,
        max_backends,
        vips,
    })
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    (2..)
        .take_while(|d: &u32| d.saturating_mul(*d) <= n)
        .all(|d| !n.is_multiple_of(d))
}

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
        assert_eq!(m.table_size, DEFAULT_TABLE_SIZE);
        assert_eq!(m.hash_seed, DEFAULT_HASH_SEED);
        assert_eq!(m.xdp_mode, XdpAttachMode::Native);
        assert_eq!(m.vips.len(), 2);
        let web = &m.vips[0];
        assert_eq!(web.name, "web");
        assert_eq!(web.backends[0].weight, 2);
        assert_eq!(web.backends[1].weight, 1);
        assert_eq!(web.backends[1].mac, Some(MacAddr([2, 0, 0, 0, 0, 0x12])));
        assert_eq!(m.vips[1].name, "2001:db8::100:53/udp");
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse_err(&GOOD.replace("port = 53", "port = 0"));
        assert_eq!(e.line, Some(20), "{e}");
        assert!(e.to_string().contains("dsr.toml:20: VIP port"), "{e}");

        let e = parse_err(&GOOD.replace("02:00:00:00:00:12", "02:00:00:00:12"));
        assert_eq!(e.line, Some(16), "{e}");
        assert!(e.message.contains("mac"), "{e}");

        let e = parse_err(&GOOD.replace("protocol = \"udp\"", "protocol = \"sctp\""));
        assert_eq!(e.line, Some(21), "{e}");

        let e = parse_err(&GOOD.replace("weight = 2", "wieght = 2"));
        assert_eq!(e.line, Some(12), "{e}");
        assert!(e.message.contains("wieght"), "{e}");

        let e = parse_err(&GOOD.replace("address = \"198.18.0.11\"", "address = \"198.18.0.300\""));
        assert_eq!(e.line, Some(11), "{e}");
    }

    #[test]
    fn refuses_duplicates_and_bad_sizes() {
        let dup =
            format!("{GOOD}\n[[vip]]\naddress = \"198.18.0.100\"\nport = 80\nprotocol = \"tcp\"\n");
        let e = parse_err(&dup);
        assert!(
            e.message.contains("configured twice (first at line 4)"),
            "{e}"
        );
        assert_eq!(e.line, Some(23), "{e}");

        let e =
            parse_err(&GOOD.replace("mac = \"02:00:00:00:00:12\"", "address = \"198.18.0.11\""));
        assert!(
            e.message.contains("appears twice") || e.message.contains("duplicate"),
            "{e}"
        );

        let e = parse_err(&format!("table_size = 65536\n{GOOD}"));
        assert!(e.message.contains("prime"), "{e}");
        assert_eq!(e.line, Some(1));

        let e = parse_err(&format!("max_vips = 1\n{GOOD}"));
        assert!(e.message.contains("max_vips is 1"), "{e}");
    }

    #[test]
    fn xdp_mode_is_selectable() {
        let m = parse(&format!("xdp_mode = \"skb\"\n{GOOD}"), Path::new("x")).unwrap();
        assert_eq!(m.xdp_mode, XdpAttachMode::Skb);
        let e = parse_err(&format!("xdp_mode = \"turbo\"\n{GOOD}"));
        assert_eq!(e.line, Some(1), "{e}");
    }

    #[test]
    fn primes() {
        assert!(is_prime(65537) && is_prime(7) && is_prime(251));
        assert!(!is_prime(65536) && !is_prime(1) && !is_prime(9));
    }
}
