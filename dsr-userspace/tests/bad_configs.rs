//! Every key of the config file given a bad value, one row each: refused with the file, the
//! line of the mistake and a message naming the key and the problem, by the parser and by
//! `dsr check`. A key the parser accepts without a row here fails `every_key_has_a_row`.

use std::{path::Path, process::Command};

use dsr::spec::toml_file;

/// A valid config that sets every key once, each on a line of its own (headers made unique
/// by comments), so that a row breaks exactly one line.
const BASE: &str = r#"instance = "lb1"
interface = "eth0"
xdp_mode = "native"
vlan_tags = "auto"
datapath_log = "off"
hash_seed = 0x64737231
table_size = 65537
max_table_slots = 4194301
table_budget = 33554432
max_vips = 256
max_backends = 4096
flow_table_size = 1048576
flow_idle_timeout = "300s"
flow_count_interval = "10s"
metrics = "127.0.0.1:9464"
control_socket = "/run/dsr/lb1.sock"
control_group = "0"
state_dir = "/var/lib/dsr/lb1"
notify = "/etc/dsr/vip-moved"
notify_timeout = "10s"

[[vip]]  # web
name = "web"
address = "192.0.2.10"
port = 80
protocol = "tcp"
vlan = 100
hash = "5-tuple"
fragments = false
conntrack = true
inhibit_on_failure = false
min_usable = 1
table_size = 130003
notify = "/etc/dsr/web-moved --zone a"
[vip.check]
type = "http"
path = "/healthz"
expect_status = 200
host = "www.example.com"
expect_body = "OK"
port = 8080
interval = "1s"
timeout = "500ms"
rise = 2
fall = 3
[vip.load]
agent_port = 5555
agent_interval = "2s"
agent_timeout = "1s"
agent_send = "load\n"
flows = true
weight_interval = "5s"
min_weight = 25
max_weight = 100

  [[vip.backend]]  # primary
  address = "192.0.2.21"
  weight = 1
  mac = "02:00:00:00:00:21"
  inhibit_on_failure = true
  interface = "eth1"
  [vip.backend.check]
  port = 8081

  [[vip.backend]]  # backup
  address = "192.0.2.31"
  backup = true

  [[vip.backend]]  # sorry
  address = "192.0.2.99"
  sorry = true

[[vip]]  # dns
name = "dns"
address = "2001:db8::53"
all_ports = true
protocol = "udp"

[[announce]]  # VI_1
name = "VI_1"
vips = ["web"]
require = "all"
vmac_vrid = 51

[sync]
peers = ["198.51.100.3:7947"]
key_file = "/etc/dsr/sync.key"
listen = "0.0.0.0:7947"
interval = "2s"
"#;

/// One bad input: `key` ("section.key", the sections of `toml_file::accepted_keys`) is
/// broken by turning the line `line` of [`BASE`] into `with`.
struct Row {
    key: &'static str,
    line: &'static str,
    with: &'static str,
    /// Words the message must hold: the key's name (or what it names) and the problem.
    says: &'static [&'static str],
    /// The line the error points at, when not the broken one (its text in the broken config).
    at: Option<&'static str>,
    /// For a duplicate: the line of the first one, which the message cites.
    first: Option<&'static str>,
}

const fn row(
    key: &'static str,
    line: &'static str,
    with: &'static str,
    says: &'static [&'static str],
) -> Row {
    Row {
        key,
        line,
        with,
        says,
        at: None,
        first: None,
    }
}

impl Row {
    const fn at(self, at: &'static str) -> Row {
        Row {
            at: Some(at),
            ..self
        }
    }
    const fn first(self, first: &'static str) -> Row {
        Row {
            first: Some(first),
            ..self
        }
    }
}

/// A twin of VIP web (same address, port, protocol and VLAN), put before the announce group.
const TWIN: &str = "[[vip]]  # twin\nname = \"twin\"\naddress = \"192.0.2.10\"\nport = 80\nprotocol = \"tcp\"\nvlan = 100\n\n[[announce]]  # VI_1";

// One row a line: a table reads down its columns.
#[rustfmt::skip]
const ROWS: &[Row] = &[
    // Top level.
    row("top.instance", r#"instance = "lb1""#, r#"instance = "a/b""#, &["instance \"a/b\"", "letters, digits"]),
    row("top.instance", r#"instance = "lb1""#, r#"instance = """#, &["instance \"\"", "1-32"]),
    row("top.instance", r#"instance = "lb1""#, "instance = 7", &["invalid type: integer", "instance = 7"]),
    row("top.interface", r#"interface = "eth0""#, r#"interface = "eth/0""#, &["interface \"eth/0\" is not a valid interface name"]),
    row("top.interface", r#"interface = "eth0""#, r#"interface = "a-very-long-name0""#, &["interface \"a-very-long-name0\" is not a valid"]),
    row("top.interface", r#"interface = "eth0""#, r#"interface = ["eth0"]"#, &["invalid type: sequence", "interface = "]),
    row("top.interface", r#"interface = "eth0""#, "", &["missing field `interface`"]).at("instance = \"lb1\""),
    row("top.xdp_mode", r#"xdp_mode = "native""#, r#"xdp_mode = "turbo""#, &["unknown variant `turbo`", "xdp_mode"]),
    row("top.vlan_tags", r#"vlan_tags = "auto""#, r#"vlan_tags = "stripped""#, &["unknown variant `stripped`", "in-band", "vlan_tags"]),
    row("top.datapath_log", r#"datapath_log = "off""#, r#"datapath_log = "trace""#, &["unknown variant `trace`", "datapath_log"]),
    row("top.datapath_log", r#"datapath_log = "off""#, "datapath_log = false", &["wanted string or table", "datapath_log = false"]),
    row("top.hash_seed", "hash_seed = 0x64737231", r#"hash_seed = "dsr1""#, &["invalid type: string", "hash_seed"]),
    row("top.hash_seed", "hash_seed = 0x64737231", "hash_seed = -1", &["invalid value: integer `-1`", "hash_seed"]),
    row("top.hash_seed", "hash_seed = 0x64737231", "hash_seed = 0x100000000", &["invalid value: integer `4294967296`", "hash_seed"]),
    row("top.table_size", "table_size = 65537", "table_size = 0", &["table_size 0 must be a prime"]),
    row("top.table_size", "table_size = 65537", "table_size = 65536", &["table_size 65536 must be a prime"]),
    row("top.table_size", "table_size = 65537", "table_size = 4194319", &["table_size 4194319 must be a prime between 7 and max_table_slots 4194301"]),
    row("top.max_table_slots", "max_table_slots = 4194301", "max_table_slots = 6", &["max_table_slots 6 must be 7..=134217689"]),
    row("top.max_table_slots", "max_table_slots = 4194301", "max_table_slots = 65521", &["table_size 65537 must be a prime between 7 and max_table_slots 65521"]).at("table_size = 65537"),
    row("top.max_table_slots", "max_table_slots = 4194301", "max_table_slots = -1", &["invalid value: integer `-1`", "max_table_slots"]),
    row("top.table_budget", "table_budget = 33554432", "table_budget = 1000", &["table_budget 1000 must be a multiple of 16"]),
    row("top.table_budget", "table_budget = 33554432", "table_budget = 536870912", &["table_budget 536870912 must be a multiple of 16 up to 268435456"]),
    row("top.table_budget", "table_budget = 33554432", "table_budget = 131072", &["the VIPs' tables need", "table_budget is 131072"]),
    row("top.table_size", "table_size = 65537", "table_size = -7", &["invalid value: integer `-7`", "table_size"]),
    row("top.table_size", "table_size = 65537", "table_size = 3", &["table_size 3"]),
    row("top.max_vips", "max_vips = 256", "max_vips = 0", &["max_vips 0 must be 1..=65536"]),
    row("top.max_vips", "max_vips = 256", "max_vips = 65537", &["max_vips 65537 must be 1..=65536"]),
    row("top.max_vips", "max_vips = 256", "max_vips = -1", &["invalid value: integer `-1`", "max_vips"]),
    row("top.max_vips", "max_vips = 256", "max_vips = 1", &["2 VIPs configured but max_vips is 1"]).at("[[vip]]  # dns"),
    row("top.max_backends", "max_backends = 4096", "max_backends = 0", &["max_backends 0 must be 1..=1048576"]),
    row("top.max_backends", "max_backends = 4096", "max_backends = 1048577", &["max_backends 1048577 must be"]),
    row("top.max_backends", "max_backends = 4096", "max_backends = 2", &["3 backends configured but max_backends is 2"]).at("[[vip.backend]]  # sorry"),
    row("top.flow_table_size", "flow_table_size = 1048576", "flow_table_size = 1023", &["flow_table_size 1023 must be 1024..=134217728"]),
    row("top.flow_table_size", "flow_table_size = 1048576", "flow_table_size = 134217729", &["flow_table_size 134217729 must be"]),
    row("top.flow_table_size", "flow_table_size = 1048576", "flow_table_size = 1e6", &["invalid type: floating point", "flow_table_size"]),
    row("top.flow_idle_timeout", r#"flow_idle_timeout = "300s""#, r#"flow_idle_timeout = "5 fortnights""#, &["flow_idle_timeout: \"5 fortnights\": unit must be ms, s, m or h"]),
    row("top.flow_idle_timeout", r#"flow_idle_timeout = "300s""#, r#"flow_idle_timeout = "0.5s""#, &["flow_idle_timeout must be at least 1s"]),
    row("top.flow_idle_timeout", r#"flow_idle_timeout = "300s""#, r#"flow_idle_timeout = "-1s""#, &["flow_idle_timeout: \"-1s\" is out of range"]),
    row("top.flow_idle_timeout", r#"flow_idle_timeout = "300s""#, "flow_idle_timeout = -300", &["flow_idle_timeout: -300 is not a duration"]),
    row("top.flow_idle_timeout", r#"flow_idle_timeout = "300s""#, "flow_idle_timeout = true", &["expected a duration like \"500ms\"", "flow_idle_timeout = true"]),
    row("top.flow_count_interval", r#"flow_count_interval = "10s""#, r#"flow_count_interval = "500ms""#, &["flow_count_interval must be at least 1s"]),
    row("top.flow_count_interval", r#"flow_count_interval = "10s""#, r#"flow_count_interval = "often""#, &["flow_count_interval: \"often\""]),
    row("top.flow_count_interval", r#"flow_count_interval = "10s""#, "flow_count_interval = false", &["expected a duration like \"500ms\"", "flow_count_interval = false"]),
    row("top.notify_timeout", r#"notify_timeout = "10s""#, r#"notify_timeout = "50ms""#, &["notify_timeout 50ms must be 100ms to 1h"]),
    row("top.notify_timeout", r#"notify_timeout = "10s""#, r#"notify_timeout = "2h""#, &["notify_timeout 7200s must be 100ms to 1h"]),
    row("top.notify_timeout", r#"notify_timeout = "10s""#, r#"notify_timeout = "later""#, &["notify_timeout: \"later\""]),
    row("top.notify", r#"notify = "/etc/dsr/vip-moved""#, "notify = 5", &["invalid type: integer", "notify = 5"]),
    row("vip.notify", r#"notify = "/etc/dsr/web-moved --zone a""#, r#"notify = "   ""#, &["notify \"   \" must be a command on one line"]),
    row("vip.notify", r#"notify = "/etc/dsr/web-moved --zone a""#, r#"notify = "a\nb""#, &["must be a command on one line"]),
    row("vip.notify", r#"notify = "/etc/dsr/web-moved --zone a""#, r#"notify = "/etc/dsr/web-moved;""#, &["no trailing ';', '&' or '|'"]),
    row("vip.notify", r#"notify = "/etc/dsr/web-moved --zone a""#, r#"notify = "/etc/dsr/web-moved # zone a""#, &["no '#'"]),
    row("top.notify", r#"notify = "/etc/dsr/vip-moved""#, r#"notify = "  ""#, &["must be a command on one line"]),
    row("sync.peers", r#"peers = ["198.51.100.3:7947"]"#, "peers = []", &["sync.peers is empty"]),
    row("sync.peers", r#"peers = ["198.51.100.3:7947"]"#, r#"peers = ["lb2"]"#, &["invalid socket address", "peers"]),
    row("sync.key_file", r#"key_file = "/etc/dsr/sync.key""#, r#"key_file = "sync.key""#, &["sync.key_file \"sync.key\" must be an absolute path"]),
    row("sync.listen", r#"listen = "0.0.0.0:7947""#, r#"listen = "0.0.0.0""#, &["invalid socket address", "listen"]),
    row("sync.interval", r#"interval = "2s""#, r#"interval = "10ms""#, &["sync.interval 10ms must be 100ms to 60s"]),
    row("sync.interval", r#"interval = "2s""#, r#"interval = "hourly""#, &["sync.interval: \"hourly\""]),
    row("sync.unknown", r#"key_file = "/etc/dsr/sync.key""#, r#"keyfile = "/etc/dsr/sync.key""#, &["unknown field `keyfile`", "key_file"]),
    row("top.metrics", r#"metrics = "127.0.0.1:9464""#, r#"metrics = "localhost:9464""#, &["invalid socket address syntax", "metrics"]),
    row("top.metrics", r#"metrics = "127.0.0.1:9464""#, r#"metrics = "127.0.0.1""#, &["invalid socket address syntax", "metrics"]),
    row("top.control_socket", r#"control_socket = "/run/dsr/lb1.sock""#, r#"control_socket = "lb1.sock""#, &["control_socket \"lb1.sock\" must be an absolute path"]),
    row("top.control_socket", r#"control_socket = "/run/dsr/lb1.sock""#, "control_socket = 1", &["invalid type: integer", "control_socket"]),
    row("top.control_group", r#"control_group = "0""#, r#"control_group = "no-such-group-dsr""#, &["control_group \"no-such-group-dsr\": no such group"]),
    row("top.state_dir", r#"state_dir = "/var/lib/dsr/lb1""#, r#"state_dir = """#, &["state_dir \"\" must be an absolute path"]),
    row("top.state_dir", r#"state_dir = "/var/lib/dsr/lb1""#, r#"state_dir = "var/lib/dsr""#, &["state_dir \"var/lib/dsr\" must be an absolute path"]),
    row("top.unknown", "max_vips = 256", "max_vip = 256", &["unknown field `max_vip`", "max_vips"]),
    row("top.syntax", "max_vips = 256", "max_vips = ", &["max_vips"]),
    // A VIP.
    row("vip.name", r#"name = "web""#, r#"name = """#, &["VIP name \"\" must be 1-64 printable characters"]),
    row("vip.name", r#"name = "web""#, r#"name = "web\u0007""#, &["VIP name \"web\\u{7}\" must be 1-64 printable"]),
    row("vip.name", r#"name = "web""#, r#"name = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa""#, &["must be 1-64 printable characters"]),
    row("vip.name", r#"name = "web""#, r#"name = "192.0.2.10:81/tcp""#, &["VIP name \"192.0.2.10:81/tcp\" is the address of another VIP"]),
    row("vip.name", r#"name = "web""#, "name = 5", &["invalid type: integer", "name = 5"]),
    row("vip.name", r#"name = "dns""#, r#"name = "web""#, &["VIP name \"web\" is used twice"]).first(r#"[[vip]]  # web"#),
    row("vip.address", r#"address = "192.0.2.10""#, r#"address = "192.0.2.300""#, &["invalid IP address syntax", "address = \"192.0.2.300\""]),
    row("vip.address", r#"address = "192.0.2.10""#, r#"address = "www.example.com""#, &["invalid IP address syntax"]),
    row("vip.address", r#"address = "192.0.2.10""#, r#"address = "224.0.0.18""#, &["VIP address 224.0.0.18 is not a unicast address"]),
    row("vip.address", r#"address = "192.0.2.10""#, r#"address = "0.0.0.0""#, &["VIP address 0.0.0.0 is not a unicast address"]),
    row("vip.address", r#"address = "2001:db8::53""#, r#"address = "ff02::1""#, &["VIP address ff02::1 is not a unicast address"]),
    row("vip.address", r#"address = "2001:db8::53""#, r#"address = """#, &["invalid IP address syntax"]),
    row("vip.address", "[[announce]]  # VI_1", TWIN, &["VIP 192.0.2.10:80/tcp@vlan100 is configured twice"]).at("[[vip]]  # twin").first("[[vip]]  # web"),
    row("vip.port", "port = 80", "port = 0", &["VIP port must be 1..=65535"]),
    row("vip.port", "port = 80", "port = 65536", &["invalid value: integer `65536`", "port = 65536"]),
    row("vip.port", "port = 80", "port = -80", &["invalid value: integer `-80`", "port"]),
    row("vip.port", "port = 80", r#"port = "80""#, &["invalid type: string", "port"]),
    row("vip.port", "port = 80", "", &["VIP needs a port (or all_ports = true)"]).at("[[vip]]  # web"),
    row("vip.all_ports", "port = 80", "port = 80\nall_ports = true", &["a VIP with all_ports = true has no port"]),
    row("vip.all_ports", "all_ports = true", r#"all_ports = "yes""#, &["invalid type: string", "all_ports"]),
    row("vip.protocol", r#"protocol = "tcp""#, r#"protocol = "sctp""#, &["unknown variant `sctp`", "protocol"]),
    row("vip.protocol", r#"protocol = "tcp""#, "", &["missing field `protocol`"]).at("[[vip]]  # web"),
    row("vip.vlan", "vlan = 100", "vlan = 0", &["vlan 0 is not 1..=4094"]),
    row("vip.vlan", "vlan = 100", "vlan = 4095", &["vlan 4095 is not 1..=4094"]),
    row("vip.vlan", "vlan = 100", "vlan = 70000", &["invalid value: integer `70000`", "vlan"]),
    row("vip.hash", r#"hash = "5-tuple""#, r#"hash = "random""#, &["hash \"random\" is not \"5-tuple\""]),
    row("vip.hash", r#"hash = "5-tuple""#, r#"hash = ["src_addr", "mac"]"#, &["hash field \"mac\" is not one of"]),
    row("vip.hash", r#"hash = "5-tuple""#, r#"hash = ["dst_addr", "dst_port"]"#, &["the hash must include the source address or port"]),
    row("vip.hash", r#"hash = "5-tuple""#, "hash = 5", &["expected a hash like \"5-tuple\"", "hash = 5"]),
    row("vip.fragments", "fragments = false", "fragments = true", &["a VIP that accepts fragments cannot hash on ports"]).at(r#"hash = "5-tuple""#),
    row("vip.fragments", "fragments = false", "fragments = 0", &["invalid type: integer", "fragments"]),
    row("vip.conntrack", "conntrack = true", r#"conntrack = "yes""#, &["invalid type: string", "conntrack"]),
    row("vip.inhibit_on_failure", "inhibit_on_failure = false", "inhibit_on_failure = 0", &["invalid type: integer", "inhibit_on_failure"]),
    row("vip.min_usable", "min_usable = 1", "min_usable = 65537", &["min_usable 65537 is above 65536"]),
    row("vip.min_usable", "min_usable = 1", "min_usable = -1", &["invalid value: integer `-1`", "min_usable"]),
    row("vip.table_size", "table_size = 130003", "table_size = 130000", &["table_size 130000 must be a prime"]),
    row("vip.table_size", "table_size = 130003", "table_size = 3", &["table_size 3 must be a prime between 7"]),
    row("vip.table_size", "table_size = 130003", "table_size = 4194319", &["max_table_slots 4194301"]),
    row("vip.unknown", "port = 80", "port = 80\nprot = 81", &["unknown field `prot`", "all_ports"]).at("prot = 81"),
    // A health check (the VIP's, and a backend's override).
    row("check.type", r#"type = "http""#, r#"type = "icmp""#, &["check type \"icmp\" is not one of"]),
    row("check.type", r#"type = "http""#, "type = 1", &["invalid type: integer", "type = 1"]),
    row("check.type", r#"type = "http""#, r#"type = "tcp""#, &["check field path only applies to type = \"http\""]).at(r#"path = "/healthz""#),
    row("check.path", r#"path = "/healthz""#, r#"path = "healthz""#, &["check path \"healthz\" must start with '/'"]),
    row("check.path", r#"path = "/healthz""#, r#"path = "/health z""#, &["check path \"/health z\"", "no spaces"]),
    row("check.expect_status", "expect_status = 200", "expect_status = 99", &["expect_status 99 is not an HTTP status"]),
    row("check.expect_status", "expect_status = 200", "expect_status = 600", &["expect_status 600 is not an HTTP status"]),
    row("check.expect_status", "expect_status = 200", "expect_status = 70000", &["invalid value: integer `70000`", "expect_status"]),
    row("check.host", r#"host = "www.example.com""#, r#"host = "www.example.com\r\nX-Evil: 1""#, &["check host", "must be a non-empty name without spaces"]),
    row("check.host", r#"host = "www.example.com""#, r#"host = """#, &["check host \"\" must be a non-empty name"]),
    row("check.expect_body", r#"expect_body = "OK""#, "expect_body = 200", &["invalid type: integer", "expect_body"]),
    row("check.port", "port = 8080", "port = 0", &["check port must be 1..=65535"]),
    row("check.port", "  port = 8081", "port = 0", &["check port must be 1..=65535"]),
    row("check.port", "port = 8080", "port = 65536", &["invalid value: integer `65536`", "port"]),
    row("check.interval", r#"interval = "1s""#, r#"interval = "0s""#, &["check interval 0ns must be at least 10ms"]),
    row("check.interval", r#"interval = "1s""#, r#"interval = "1 jiffy""#, &["check interval: \"1 jiffy\": unit must be"]),
    row("check.interval", r#"interval = "1s""#, "interval = -1", &["check interval: -1 is not a duration"]),
    row("check.timeout", r#"timeout = "500ms""#, r#"timeout = "0s""#, &["check timeout 0ns must be at least 1ms"]),
    row("check.timeout", r#"timeout = "500ms""#, r#"timeout = "soon""#, &["check timeout: \"soon\" is not a duration"]),
    row("check.timeout", r#"timeout = "500ms""#, r#"timeout = "2s""#, &["check timeout 2s is longer than its interval 1s"]),
    row("check.rise", "rise = 2", "rise = 0", &["rise 0 must be 1..=100"]),
    row("check.rise", "rise = 2", "rise = 101", &["rise 101 must be 1..=100"]),
    row("check.rise", "rise = 2", "rise = -1", &["invalid value: integer `-1`", "rise"]),
    row("check.fall", "fall = 3", "fall = 0", &["fall 0 must be 1..=100"]),
    row("check.fall", "fall = 3", "fall = 1000", &["fall 1000 must be 1..=100"]),
    row("check.unknown", "fall = 3", "fall = 3\nintervall = \"2s\"", &["unknown field `intervall`", "interval"]).at(r#"intervall = "2s""#),
    // Load-aware weights.
    row("load.agent_port", "agent_port = 5555", "agent_port = 0", &["load.agent_port must be 1..=65535 (leave it out"]),
    row("load.agent_port", "agent_port = 5555", "agent_port = 65536", &["invalid value: integer `65536`", "agent_port"]),
    row("load.agent_port", "agent_port = 5555", "# no agent", &["load.agent_interval needs an agent port (load.agent_port, or a backend's agent_port)"]).at(r#"agent_interval = "2s""#),
    row("load.agent_interval", r#"agent_interval = "2s""#, r#"agent_interval = "1ms""#, &["load.agent_interval 1ms is below 10ms"]),
    row("load.agent_interval", r#"agent_interval = "2s""#, r#"agent_interval = "often""#, &["load.agent_interval: \"often\" is not a duration"]),
    row("load.agent_timeout", r#"agent_timeout = "1s""#, r#"agent_timeout = "0s""#, &["load.agent_timeout 0ns must be at least 1ms"]),
    row("load.agent_timeout", r#"agent_timeout = "1s""#, r#"agent_timeout = "0.5ms""#, &["agent_timeout", "\"0.5ms\": durations are whole milliseconds"]),
    row("load.agent_timeout", r#"agent_timeout = "1s""#, "agent_timeout = 0.0005", &["load.agent_timeout: 0.0005 (seconds): durations are whole milliseconds"]),
    row("load.agent_timeout", r#"agent_timeout = "1s""#, r#"agent_timeout = "3s""#, &["load.agent_timeout 3s is longer than load.agent_interval 2s"]),
    row("load.agent_send", r#"agent_send = "load\n""#, "agent_send = 7", &["invalid type: integer", "agent_send"]),
    row("load.agent_path", r#"agent_send = "load\n""#, "agent_send = \"load\\n\"\nagent_path = \"/load\"", &["load.agent_send is for the plain TCP agent"]),
    row("load.agent_path", r#"agent_send = "load\n""#, r#"agent_path = "load now""#, &["load.agent_path \"load now\" must be a URL path starting with '/'"]),
    row("load.agent_path", r#"agent_port = 5555"#, r#"agent_path = "/load""#, &["load.agent_path needs an agent port"]),
    row("backend.agent_port", r#"  interface = "eth1""#, "  interface = \"eth1\"\n  agent_port = 70000", &["invalid value: integer `70000`", "agent_port"]).at("  agent_port = 70000"),
    row("backend.agent_port", r#"protocol = "udp""#, "protocol = \"udp\"\n  [[vip.backend]]\n  address = \"2001:db8::54\"\n  agent_port = 5556", &["agent_port needs [vip.load] in its VIP"]).at("  agent_port = 5556"),
    row("load.flows", "flows = true", r#"flows = "yes""#, &["invalid type: string", "flows"]),
    row("load.flows", r#"hash = "5-tuple""#, r#"hash = "source""#, &["load.flows counts connections, and this VIP's hash leaves out ports"]).at("flows = true"),
    row("load.flows", "conntrack = true", "conntrack = false", &["load.flows counts the VIP's tracked flows", "conntrack = false"]).at("flows = true"),
    row("load.weight_interval", r#"weight_interval = "5s""#, r#"weight_interval = "10ms""#, &["load.weight_interval 10ms is below 100ms"]),
    row("load.min_weight", "min_weight = 25", "min_weight = 0", &["load.min_weight 0 is not 1..=200 (percent of the configured weight)"]),
    row("load.min_weight", "min_weight = 25", "min_weight = 150", &["load.min_weight 150% is above load.max_weight 100%"]),
    row("load.max_weight", "max_weight = 100", "max_weight = 201", &["load.max_weight 201 is not 1..=200"]),
    row("load.unknown", "max_weight = 100", "max_weight = 100\nagent = true", &["unknown field `agent`", "agent_port"]).at("agent = true"),
    // A backend.
    row("backend.address", r#"address = "192.0.2.21""#, r#"address = "192.0.2.321""#, &["invalid IP address syntax", "address"]),
    row("backend.address", r#"address = "192.0.2.21""#, r#"address = "0.0.0.0""#, &["backend address 0.0.0.0 is not a unicast address"]),
    row("backend.address", r#"address = "192.0.2.21""#, r#"address = "224.0.0.5""#, &["backend address 224.0.0.5 is not a unicast address"]),
    row("backend.address", r#"address = "192.0.2.21""#, r#"address = "192.0.2.10""#, &["backend 192.0.2.10 is the VIP's own address"]),
    row("backend.address", r#"address = "192.0.2.31""#, r#"address = "192.0.2.21""#, &["backend 192.0.2.21 appears twice in VIP web"]).first("[[vip.backend]]  # primary"),
    row("backend.weight", "weight = 1", r#"weight = "heavy""#, &["invalid type: string", "weight"]),
    row("backend.weight", "weight = 1", "weight = -1", &["invalid value: integer `-1`", "weight"]),
    row("backend.weight", "weight = 1", "weight = 1000001", &["weight 1000001 is above the maximum 1000000"]),
    row("backend.mac", r#"mac = "02:00:00:00:00:21""#, r#"mac = "02:00:00:00:21""#, &["mac \"02:00:00:00:21\": expected six hex bytes"]),
    row("backend.mac", r#"mac = "02:00:00:00:00:21""#, r#"mac = "02:00:00:00:00:2g""#, &["mac \"02:00:00:00:00:2g\": byte \"2g\" is not hex"]),
    row("backend.mac", r#"mac = "02:00:00:00:00:21""#, r#"mac = "01:00:5e:00:00:01""#, &["mac \"01:00:5e:00:00:01\": a multicast/broadcast address"]),
    row("backend.mac", r#"mac = "02:00:00:00:00:21""#, r#"mac = "00:00:00:00:00:00""#, &["mac \"00:00:00:00:00:00\": the all-zero address"]),
    row("backend.mac", r#"mac = "02:00:00:00:00:21""#, "mac = 2", &["invalid type: integer", "mac"]),
    row("backend.backup", "backup = true", r#"backup = "yes""#, &["invalid type: string", "backup"]),
    row("backend.sorry", "sorry = true", "sorry = 1", &["invalid type: integer", "sorry"]),
    row("backend.sorry", "sorry = true", "sorry = true\nbackup = true  # too", &["a backend cannot be both backup and sorry"]).at("backup = true  # too"),
    row("backend.inhibit_on_failure", "inhibit_on_failure = true", r#"inhibit_on_failure = "no""#, &["invalid type: string", "inhibit_on_failure"]),
    row("backend.interface", r#"interface = "eth1""#, r#"interface = "eth/1""#, &["interface \"eth/1\" is not a valid interface name"]),
    row("backend.interface", r#"interface = "eth1""#, r#"interface = """#, &["interface \"\" is not a valid interface name"]),
    row("backend.unknown", "weight = 1", "wieght = 1", &["unknown field `wieght`", "weight"]),
    // An announcement group.
    row("announce.name", r#"name = "VI_1""#, r#"name = "VI/1""#, &["announce group name \"VI/1\"", "it names a file"]),
    row("announce.name", r#"name = "VI_1""#, r#"name = "192.0.2.10:80/tcp""#, &["announce group name \"192.0.2.10:80/tcp\""]),
    row("announce.name", r#"name = "VI_1""#, r#"name = """#, &["announce group name \"\" must be 1-64"]),
    row("announce.name", r#"vmac_vrid = 51"#, "vmac_vrid = 51\n[[announce]]  # again\nname = \"VI_1\"  # again\nvips = [\"dns\"]", &["announce group name \"VI_1\" is used twice"]).at("name = \"VI_1\"  # again"),
    row("announce.vips", r#"vips = ["web"]"#, "vips = []", &["announce group \"VI_1\": vips names no VIP"]),
    row("announce.vips", r#"vips = ["web"]"#, r#"vips = ["web", "nope"]"#, &["vips: no VIP is named \"nope\""]),
    row("announce.vips", r#"vips = ["web"]"#, r#"vips = "web""#, &["invalid type: string", "vips"]),
    row("announce.require", r#"require = "all""#, r#"require = "most""#, &["unknown variant `most`", "require"]),
    row("announce.vmac_vrid", "vmac_vrid = 51", "vmac_vrid = 0", &["vmac_vrid = 0: a VRRP virtual router id is 1-255"]),
    row("announce.vmac_vrid", "vmac_vrid = 51", "vmac_vrid = 256", &["vmac_vrid = 256: a VRRP virtual router id is 1-255"]),
    row("announce.vmac_vrid", "vmac_vrid = 51", "vmac_vrid = -1", &["vmac_vrid = -1"]),
    row("announce.vmac_vrid", "vmac_vrid = 51", r#"vmac_vrid = "51""#, &["invalid type: string", "vmac_vrid"]),
    row("announce.vmac_vrid", "vmac_vrid = 51", "vmac_vrid = 51\n[[announce]]  # B\nname = \"B\"\nvips = [\"dns\"]\nvmac_vrid = 51  # again", &["announce groups \"VI_1\" and \"B\" both have vmac_vrid = 51"]).at("vmac_vrid = 51  # again"),
    row("announce.vmac_vrid", "vmac_vrid = 51", "vmac_vrid = 51\n[[announce]]\nname = \"B\"\nvips = [\"dns\"]\nvmac_vrid = 52\n[[announce]]\nname = \"C\"\nvips = [\"dns\"]\nvmac_vrid = 53\n[[announce]]\nname = \"D\"\nvips = [\"dns\"]\nvmac_vrid = 54\n[[announce]]\nname = \"E\"\nvips = [\"dns\"]\nvmac_vrid = 55", &["announce group \"E\": at most 4 groups can have a vmac_vrid"]).at("vmac_vrid = 55"),
    row("announce.unknown", "vmac_vrid = 51", "vmac_vird = 51", &["unknown field `vmac_vird`", "vmac_vrid"]),
];

/// `row.line` of BASE broken as the row says (`with` indented as the line was), and the
/// 1-based line that is now `with`'s first.
fn broken(row: &Row) -> (String, usize) {
    let matches: Vec<usize> = BASE
        .lines()
        .enumerate()
        .filter(|(_, l)| *l == row.line || l.trim() == row.line)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        matches.len(),
        1,
        "{}: {:?} is not one line of BASE",
        row.key,
        row.line
    );
    let mut lines: Vec<String> = BASE.lines().map(str::to_owned).collect();
    let old = &lines[matches[0]];
    let indent = &old[..old.len() - old.trim_start().len()];
    lines[matches[0]] = row
        .with
        .lines()
        .map(|l| format!("{indent}{}", l.trim_start()))
        .collect::<Vec<_>>()
        .join("\n");
    (lines.join("\n") + "\n", matches[0] + 1)
}

/// The 1-based line of the broken config that is `text` (which must be unique there).
fn line_of(config: &str, key: &str, text: &str) -> usize {
    let found: Vec<usize> = config
        .lines()
        .enumerate()
        .filter(|(_, l)| l.trim() == text.trim())
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{key}: {text:?} is not one line of\n{config}"
    );
    found[0]
}

#[test]
fn the_base_config_is_valid() {
    toml_file::parse(BASE, Path::new("dsr.toml")).unwrap();
}

#[test]
fn every_bad_config_names_its_line_and_problem() {
    let mut wrong = Vec::new();
    for row in ROWS {
        let (text, replaced) = broken(row);
        let e = match toml_file::parse(&text, Path::new("dsr.toml")) {
            Ok(_) => {
                wrong.push(format!("{}: {:?} was accepted", row.key, row.with));
                continue;
            }
            Err(e) => e,
        };
        let line = row.at.map_or(replaced, |at| line_of(&text, row.key, at));
        let shown = e.to_string();
        if e.line != Some(line) || !shown.starts_with(&format!("dsr.toml:{line}: ")) {
            wrong.push(format!(
                "{}: {:?}: expected line {line}: {shown}",
                row.key, row.with
            ));
        }
        for word in row.says {
            if !e.message.contains(word) {
                wrong.push(format!(
                    "{}: {:?}: {shown:?} lacks {word:?}",
                    row.key, row.with
                ));
            }
        }
        if let Some(first) = row.first {
            let cited = format!("(first at line {})", line_of(&text, row.key, first));
            if !e.message.contains(&cited) {
                wrong.push(format!("{}: {shown:?} does not cite {cited}", row.key));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} rows wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

/// Every key the parser accepts has a row, and every row names a key (or a kind of mistake
/// that is not one key: an unknown key, broken syntax).
#[test]
fn every_key_has_a_row() {
    let accepted = toml_file::accepted_keys();
    let keys: Vec<String> = accepted
        .iter()
        .flat_map(|(section, keys)| keys.iter().map(move |k| format!("{section}.{k}")))
        .collect();
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| !ROWS.iter().any(|r| r.key == k.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "keys without a bad-input row: {missing:?}"
    );
    for row in ROWS {
        let (section, key) = row.key.split_once('.').unwrap();
        assert!(
            matches!(key, "unknown" | "syntax") || keys.contains(&row.key.to_owned()),
            "row for {section}.{key}, which the parser does not accept"
        );
    }
    for (section, _) in &accepted {
        let key = format!("{section}.unknown");
        assert!(
            ROWS.iter().any(|r| r.key == key),
            "no unknown-key row for section {section}"
        );
    }
}

fn dsr(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dsr"))
        .args(args)
        .output()
        .expect("run dsr");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// `dsr check` prints exactly the parser's error, with the file's own path, and fails; so
/// does `dsr run`, before it touches anything.
#[test]
fn dsr_check_prints_each_error_and_fails() {
    let dir = std::env::temp_dir().join(format!("dsr-bad-configs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (i, row) in ROWS.iter().enumerate() {
        let (text, _) = broken(row);
        let path = dir.join(format!("{i}.toml"));
        std::fs::write(&path, &text).unwrap();
        let expected = toml_file::parse(&text, &path).unwrap_err().to_string();
        let path = path.to_str().unwrap();
        let mut commands = vec!["check"];
        // `run` too for a few (it reads the file before anything else).
        if i % 20 == 0 {
            commands.push("run");
        }
        for cmd in commands {
            let (code, out) = dsr(&[cmd, "--config", path]);
            assert_eq!(code, 1, "dsr {cmd} {}: {out}", row.key);
            assert!(
                out.contains(&expected),
                "dsr {cmd} {}: {out:?} lacks {expected:?}",
                row.key
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// An interface that does not exist is no mistake of the file: `dsr check` accepts it,
/// `dsr check --host` (what `run` and a reload also do) refuses it, naming it.
#[test]
fn check_host_names_an_unknown_interface() {
    let dir = std::env::temp_dir().join(format!("dsr-bad-iface-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let host = BASE.replace(r#"interface = "eth0""#, r#"interface = "lo""#);
    for (what, text, says) in [
        (
            "the interface",
            host.replace(r#"interface = "lo""#, r#"interface = "nosuch0""#),
            r#"interface "nosuch0" not found (interface = "nosuch0")"#,
        ),
        (
            "a backend's interface",
            host.replace(r#"interface = "eth1""#, r#"interface = "nosuch1""#),
            r#"VIP web: backend 192.0.2.21: interface "nosuch1" not found (interface = "nosuch1")"#,
        ),
    ] {
        let path = dir.join("host.toml");
        std::fs::write(&path, &text).unwrap();
        let path = path.to_str().unwrap();
        let (code, out) = dsr(&["check", "--config", path]);
        assert_eq!(code, 0, "{what}: {out}");
        let (code, out) = dsr(&["check", "--host", "--config", path]);
        assert_eq!(code, 1, "{what}: {out}");
        assert!(out.contains(says), "{what}: {out}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
