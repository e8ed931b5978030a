//! The `dsr` command line: the daemon (`run`) and the operator's commands, which talk to the
//! daemon over its control socket.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use dsr::{
    control::{self, Request, Response, render},
    daemon::{self, Daemon},
    datapath, realserver,
    spec::{
        model::{
            BackendSpec, CheckKind, CheckSpec, DEFAULT_CHECK_INTERVAL, DEFAULT_CHECK_TIMEOUT,
            DEFAULT_FALL, DEFAULT_RISE, LoadSettings, LoadSpec, MacAddr, Model, Role, VipAddr,
            VipSpec, parse_duration,
        },
        toml_file, validate,
    },
};

#[derive(Parser)]
#[command(
    name = "dsr",
    version,
    about = "XDP Layer-4 load balancer with Direct Server Return"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Which running instance a command talks to.
#[derive(Args, Clone)]
struct Target {
    /// The daemon's config file (gives instance, socket and state paths).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Instance name, when no config is given (default "default").
    #[arg(long, global = true)]
    instance: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Load (or adopt) the data path, fill it from the config and run health checks until
    /// SIGTERM/SIGINT. The data path keeps forwarding after the daemon exits; `dsr stop`
    /// removes it. SIGHUP reloads the config.
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// Remove any pinned data path of this instance first (start from empty maps).
        #[arg(long)]
        clean: bool,
    },
    /// Validate a config file and print what it describes; changes nothing.
    Check {
        #[arg(long, short)]
        config: PathBuf,
        /// Also check this host: the interfaces the config names exist (`run` and reload
        /// refuse unknown ones).
        #[arg(long)]
        host: bool,
    },
    /// VIPs and backends: health, weights, roles, rates and counters.
    Status {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
        /// Refresh in place every this many seconds (default 1) until interrupted.
        #[arg(long, num_args = 0..=1, default_missing_value = "1", value_name = "SECONDS")]
        watch: Option<f64>,
    },
    /// One line per VIP and per backend (fits 100 columns), like `ipvsadm -Ln`.
    List {
        #[command(flatten)]
        target: Target,
        /// Rates (packets/s, bits/s, new flows/s) instead of health and weights.
        #[arg(long, conflicts_with = "stats")]
        rate: bool,
        /// Totals (packets, bytes, new flows) instead of health and weights.
        #[arg(long)]
        stats: bool,
    },
    /// Tracked flows (the flow table), like `ipvsadm -Lnc`: client, VIP, backend, idle time.
    Flows {
        /// Only this VIP's flows (name or ADDRESS:PORT/PROTOCOL).
        vip: Option<String>,
        /// At most this many (the table can hold millions).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Live per-frame decisions of the data path (like `cilium monitor`): verdict and
    /// reason, flow, VIP, backend, and whether the flow table or the VIP's table chose it.
    /// Stops after --count frames or --for, whichever comes first.
    Trace {
        /// Only frames that matched this VIP (name or ADDRESS:PORT/PROTOCOL).
        #[arg(long)]
        vip: Option<String>,
        /// Only frames from this client address.
        #[arg(long)]
        client: Option<IpAddr>,
        /// Stop after this many frames (at most 1000000).
        #[arg(long, default_value_t = 100)]
        count: u64,
        /// Stop after this long (at most 1h).
        #[arg(long = "for", default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        /// One JSON object per frame.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Counters: per-reason verdicts (forwarded, passed, dropped and why), per VIP, per backend.
    Stats {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
    },
    /// Change a VIP's backends at run time (kept across restarts and reloads; `dsr reset`
    /// reverts to the config).
    Backend {
        #[command(subcommand)]
        action: BackendCmd,
        #[command(flatten)]
        target: Target,
    },
    /// Add or remove VIPs at run time.
    Vip {
        #[command(subcommand)]
        action: VipCmd,
        #[command(flatten)]
        target: Target,
    },
    /// Which backend the data path gives a flow, and why (read from the running maps):
    /// `dsr explain 198.51.100.7:40000 192.0.2.10:80/tcp`.
    Explain {
        /// The client: ADDRESS:PORT ([v6]:PORT for IPv6).
        source: std::net::SocketAddr,
        /// The VIP side: ADDRESS:PORT/PROTOCOL.
        destination: VipAddr,
        /// The frame's outer VLAN id.
        #[arg(long, default_value_t = 0)]
        vlan: u16,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Exit 0 if a VIP's announcement file says announced and was refreshed within the grace
    /// (for keepalived's track_script or a routing daemon's watchdog), else 1 with why.
    AnnounceCheck {
        /// `<state_dir>/announce/<VIP name>`.
        file: PathBuf,
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        grace: Duration,
    },
    /// Follow an announcement file and run a command each time it changes between announced
    /// and withdrawn (by `announce-check`'s rule, grace included), e.g. `birdc enable` /
    /// `birdc disable` of the protocol that exports the VIP's route. It needs nothing of a
    /// running dsr, so a dead daemon is withdrawn; run it as a service of its own.
    AnnounceWatch {
        /// `<state_dir>/announce/<VIP name>` or `.../announce/groups/<name>`.
        file: PathBuf,
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        grace: Duration,
        /// Run (by `sh -c`) when the file turns announced, and at start if it is.
        #[arg(long = "on-announce", value_name = "COMMAND")]
        on_announce: String,
        /// Run (by `sh -c`) when the file turns withdrawn or stale, and at start if it is.
        #[arg(long = "on-withdraw", value_name = "COMMAND")]
        on_withdraw: String,
        /// How often the file is read; a failed command is retried at the next read.
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        interval: Duration,
    },
    /// For keepalived's `notify` of a `use_vmac` instance: records the instance's state so
    /// that dsr receives for its virtual MAC while (and only while) keepalived is alive and
    /// says MASTER. keepalived appends TYPE NAME STATE PRIORITY; NAME is the `[[announce]]`
    /// group (named as the vrrp_instance). Works while the daemon is down: it reads the
    /// record when it starts.
    VrrpNotify {
        /// INSTANCE (GROUP notifies are ignored).
        kind: String,
        name: String,
        /// MASTER, BACKUP, FAULT, STOP or DELETED.
        state: String,
        priority: Option<String>,
        /// The keepalived process (default: found among the parent processes).
        #[arg(long)]
        pid: Option<u32>,
        #[command(flatten)]
        target: Target,
    },
    /// Compare two nodes' `dsr status --json` output: which VIPs' tables differ (by their
    /// digests of seed, size and each slot's backend address). Exit 1 if any differ.
    Compare { a: PathBuf, b: PathBuf },
    /// What a change would do, before it is made: per VIP the table slots (share of new
    /// flows) that move and the tracked flows that change backend.
    Plan {
        #[command(subcommand)]
        what: PlanCmd,
        #[arg(long, global = true)]
        json: bool,
    },
    /// Re-read the config file (as SIGHUP does); on any error the running config stays.
    Reload {
        #[command(flatten)]
        target: Target,
    },
    /// Drop all runtime changes: back to the config file.
    Reset {
        #[command(flatten)]
        target: Target,
    },
    /// Stop the daemon and remove the data path (traffic to the VIPs stops being forwarded).
    Stop {
        #[command(flatten)]
        target: Target,
    },
    /// Prepare a backend (real server) for DSR: VIP on lo, ARP and rp_filter sysctls.
    Realserver {
        #[command(subcommand)]
        action: RealserverCmd,
    },
    /// Convert another load balancer's config into a dsr config (review its comments).
    Import {
        #[command(subcommand)]
        what: ImportCmd,
    },
    /// Print shell completions for SHELL (used to build the package).
    #[command(hide = true)]
    Completions { shell: clap_complete::Shell },
    /// Write the man pages (dsr.1, dsr-SUBCOMMAND.1) into DIR (used to build the package).
    #[command(hide = true)]
    Manpage { dir: PathBuf },
}

#[derive(Subcommand)]
enum ImportCmd {
    /// The LVS-DR virtual servers of a keepalived.conf (and the files it includes).
    Keepalived {
        file: PathBuf,
        /// Interface for VIPs that no vrrp_instance holds in its virtual_ipaddress.
        #[arg(long)]
        interface: Option<String>,
        /// Write the dsr config here (default: stdout).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Virtual servers that are not lb_kind DR (NAT, keepalived's default, or TUN).
        #[arg(long, value_enum, default_value = "refuse")]
        non_dr: NonDrArg,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum NonDrArg {
    /// An error naming the file and line.
    Refuse,
    /// Left out, with a comment.
    Skip,
    /// Converted as DR, with a comment (the real servers must then be DSR backends).
    AsDr,
}

#[derive(Subcommand)]
enum RealserverCmd {
    /// Add the VIP to the device and set the sysctls DSR needs; records what it changed.
    Setup {
        #[arg(long)]
        vip: IpAddr,
        #[arg(long, default_value = "lo")]
        dev: String,
        /// Where the record of changes is kept (default /var/lib/dsr/realserver-VIP.json).
        #[arg(long)]
        state: Option<PathBuf>,
    },
    /// Undo exactly what `setup` did.
    Teardown {
        #[arg(long)]
        vip: IpAddr,
        #[arg(long)]
        state: Option<PathBuf>,
    },
    /// Report what this host lacks to serve the VIP as a DSR backend (exit 1 if anything).
    Check {
        #[arg(long)]
        vip: IpAddr,
        #[arg(long, default_value = "lo")]
        dev: String,
    },
}

#[derive(Subcommand)]
enum BackendCmd {
    /// Add a backend to a VIP.
    Add {
        /// VIP name or ADDRESS:PORT/PROTOCOL.
        vip: String,
        address: IpAddr,
        #[arg(long, default_value_t = 1)]
        weight: u32,
        /// Static MAC (default: resolved from the neighbour table).
        #[arg(long)]
        mac: Option<MacAddr>,
        #[arg(long, conflicts_with = "sorry")]
        backup: bool,
        #[arg(long)]
        sorry: bool,
        #[arg(long)]
        inhibit_on_failure: bool,
        /// Interface the backend is reached through (default: from the routing table).
        #[arg(long)]
        interface: Option<String>,
        /// Port of its own agent (HAProxy agent-check) instead of the VIP's; 0 = none. Needs
        /// load-aware weights on the VIP.
        #[arg(long)]
        agent_port: Option<u16>,
        #[command(flatten)]
        check: CheckArgs,
    },
    /// Remove a backend; its flows move to the other backends.
    Remove { vip: String, address: IpAddr },
    /// Set a backend's weight (0: no new flows, its tracked flows stay; the table is rebuilt
    /// without it, while `drain` only lends its slots and so moves fewer new flows).
    Weight {
        vip: String,
        address: IpAddr,
        weight: u32,
    },
    /// No new flows to the backend; established flows stay until they end or idle out.
    Drain { vip: String, address: IpAddr },
    /// Undo `drain`.
    Enable { vip: String, address: IpAddr },
}

#[derive(Subcommand)]
enum PlanCmd {
    /// A changed config file (as `dsr reload` would apply it).
    Config {
        file: PathBuf,
        #[command(flatten)]
        target: Target,
    },
    /// A backend change, as `dsr backend ...` takes it.
    Backend {
        #[command(subcommand)]
        action: BackendCmd,
        #[command(flatten)]
        target: Target,
    },
    /// A VIP change, as `dsr vip ...` takes it.
    Vip {
        #[command(subcommand)]
        action: VipCmd,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand)]
enum VipCmd {
    /// Add a VIP (without backends; add them with `dsr backend add`).
    Add {
        /// ADDRESS:PORT/PROTOCOL[@vlanN], e.g. 192.0.2.10:80/tcp, [2001:db8::10]:53/udp,
        /// 192.0.2.10:*/udp (all ports)
        vip: VipAddr,
        /// Accept IP fragments (the hash then excludes ports).
        #[arg(long)]
        fragments: bool,
        /// Hash on the source address only (source affinity).
        #[arg(long)]
        source_affinity: bool,
        #[arg(long)]
        name: Option<String>,
        /// Do not track flows (cheaper for one-packet flows; drain then has no effect).
        #[arg(long)]
        no_conntrack: bool,
        /// Slots of its Maglev table (a prime); default: the config's `table_size`, else
        /// from its backends (each backend added then resizes it).
        #[arg(long)]
        table_size: Option<u32>,
        #[command(flatten)]
        check: CheckArgs,
        #[command(flatten)]
        load: Box<LoadArgs>,
    },
    /// Remove a VIP and its backends.
    Remove { vip: String },
    /// Stop announcing the VIP (its announcement file says withdrawn: keepalived gives up the
    /// address, the route is withdrawn) while it keeps forwarding what still arrives.
    Drain { vip: String },
    /// Undo `vip drain`.
    Undrain { vip: String },
}

#[derive(Clone, Copy, ValueEnum)]
enum CheckType {
    None,
    Tcp,
    Http,
}

#[derive(Args)]
struct CheckArgs {
    /// Health check (default for a backend: the VIP's check).
    #[arg(long = "check")]
    kind: Option<CheckType>,
    /// Port on the backend's own address (default: the VIP's port).
    #[arg(long, requires = "kind")]
    check_port: Option<u16>,
    /// HTTP path (default "/"); only with --check http.
    #[arg(long, requires = "kind")]
    check_path: Option<String>,
    /// Expected HTTP status (default 200); only with --check http.
    #[arg(long, requires = "kind")]
    check_status: Option<u16>,
    /// Default 1s.
    #[arg(long, requires = "kind", value_parser = parse_duration)]
    check_interval: Option<Duration>,
    /// Default 1s, or the interval if shorter.
    #[arg(long, requires = "kind", value_parser = parse_duration)]
    check_timeout: Option<Duration>,
    /// Successes that bring a down backend up (default 2).
    #[arg(long, requires = "kind")]
    rise: Option<u32>,
    /// Failures that take an up backend down (default 2).
    #[arg(long, requires = "kind")]
    fall: Option<u32>,
}

/// Load-aware weights (`[vip.load]` in the file): any of these turns them on.
#[derive(Args)]
struct LoadArgs {
    /// Each backend's agent (HAProxy agent-check: `75%`, `drain`, `down`, `up`, `maint`)
    /// on this port of its own address.
    #[arg(long, help_heading = "Load-aware weights")]
    agent_port: Option<u16>,
    /// How often each agent is asked (default 2s).
    #[arg(long, value_parser = parse_duration, help_heading = "Load-aware weights")]
    agent_interval: Option<Duration>,
    /// Default 1s, or the interval if shorter.
    #[arg(long, value_parser = parse_duration, help_heading = "Load-aware weights")]
    agent_timeout: Option<Duration>,
    /// A line sent to the agent before it answers (plain TCP agent).
    #[arg(long, help_heading = "Load-aware weights")]
    agent_send: Option<String>,
    /// Ask the agent by HTTP GET of this path (the body's first line is the answer).
    #[arg(long, help_heading = "Load-aware weights")]
    agent_path: Option<String>,
    /// A backend holding more than its share of the VIP's active flows steps down (least
    /// connection done from the flow table).
    #[arg(long, help_heading = "Load-aware weights")]
    load_flows: bool,
    /// At most one step of an eighth of the weight per interval (default 5s).
    #[arg(long, value_parser = parse_duration, help_heading = "Load-aware weights")]
    weight_interval: Option<Duration>,
    /// Lowest effective weight, percent of the configured one (default 25).
    #[arg(long, value_name = "PERCENT", help_heading = "Load-aware weights")]
    min_weight: Option<u32>,
    /// Highest effective weight, percent of the configured one (default 100, at most 200).
    #[arg(long, value_name = "PERCENT", help_heading = "Load-aware weights")]
    max_weight: Option<u32>,
}

impl LoadArgs {
    /// The load spec the flags describe (`None`: none given), built as the file's `[vip.load]`
    /// is; an error names the flag.
    fn spec(&self) -> Result<Option<LoadSpec>> {
        let settings = LoadSettings {
            agent_port: self.agent_port,
            backend_agents: false,
            agent_interval: self.agent_interval,
            agent_timeout: self.agent_timeout,
            agent_send: self.agent_send.clone(),
            agent_path: self.agent_path.clone(),
            flows: self.load_flows,
            weight_interval: self.weight_interval,
            min_weight: self.min_weight,
            max_weight: self.max_weight,
        };
        if settings == LoadSettings::default() {
            return Ok(None);
        }
        settings.spec().map(Some).map_err(|(key, message)| {
            let flag = LOAD_FLAGS
                .iter()
                .find(|(k, _)| *k == key)
                .map_or(key, |(_, f)| f);
            anyhow::anyhow!("{flag}: {message}")
        })
    }
}

impl CheckArgs {
    /// The check the flags describe (`None`: no --check given). Settings that do not apply
    /// to the check type are refused, as the config file refuses them; the ranges are the
    /// daemon's one validation's business.
    fn spec(&self) -> Result<Option<CheckSpec>> {
        let Some(kind) = self.kind else {
            return Ok(None);
        };
        let kind = match kind {
            CheckType::None => CheckKind::None,
            CheckType::Tcp => CheckKind::Tcp,
            CheckType::Http => CheckKind::Http {
                path: self.check_path.clone().unwrap_or_else(|| "/".into()),
                expect_status: self.check_status.unwrap_or(200),
                host: None,
                expect_body: None,
            },
        };
        if !matches!(kind, CheckKind::Http { .. }) {
            let name = kind.type_name();
            for (field, given) in [
                ("path", self.check_path.is_some()),
                ("expect_status", self.check_status.is_some()),
            ] {
                if given {
                    anyhow::bail!("{}", validate::http_only(field, name));
                }
            }
        }
        let interval = self.check_interval.unwrap_or(DEFAULT_CHECK_INTERVAL);
        Ok(Some(CheckSpec {
            kind,
            port: self.check_port,
            interval,
            timeout: self
                .check_timeout
                .unwrap_or(DEFAULT_CHECK_TIMEOUT.min(interval.max(validate::MIN_CHECK_INTERVAL))),
            rise: self.rise.unwrap_or(DEFAULT_RISE),
            fall: self.fall.unwrap_or(DEFAULT_FALL),
        }))
    }
}

/// Logs go through tracing (the code's `log` records too): to the journal, with its fields,
/// when systemd connected stderr to it (JOURNAL_STREAM), else as text on stderr. RUST_LOG
/// selects what (default `info`).
fn init_logging() {
    use tracing_subscriber::{EnvFilter, layer::SubscriberExt, util::SubscriberInitExt};
    // netlink-packet-route warns about every kernel attribute newer than itself; not ours to fix.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,netlink_packet_route=error"));
    let journald = std::env::var_os("JOURNAL_STREAM").and_then(|_| tracing_journald::layer().ok());
    let registry = tracing_subscriber::registry().with(filter);
    let result = match journald {
        Some(journal) => registry.with(journal).try_init(),
        None => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .with_target(false),
            )
            .try_init(),
    };
    if let Err(e) = result {
        eprintln!("dsr: logging not set up: {e}");
    }
}

fn main() -> std::process::ExitCode {
    init_logging();
    match real_main() {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("dsr: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The paths a command needs, from `--config` or `--instance`.
fn resolve(target: &Target) -> Result<(PathBuf, Model)> {
    if let Some(path) = &target.config {
        return Ok((path.clone(), toml_file::load(path)?));
    }
    let instance = target.instance.clone().unwrap_or_else(|| "default".into());
    // A daemon that ran for this instance recorded its config.
    if let Some(record) = dsr::runtime::instance::read_record(&instance)
        && let Ok(model) = toml_file::load(&record.config)
    {
        return Ok((record.config, model));
    }
    // The same defaults a config file without these settings gets.
    let text = format!("instance = {instance:?}\ninterface = \"-\"\n");
    let model = toml_file::parse(&text, std::path::Path::new("(defaults)"))
        .with_context(|| format!("instance name {instance:?}"))?;
    Ok((PathBuf::from("(unknown: --config not given)"), model))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// The daemon's instance name and control socket. From a config file this is read
/// leniently, so that commands for a running daemon work while the file is being edited.
fn socket(target: &Target) -> Result<(String, PathBuf)> {
    match &target.config {
        Some(path) => Ok(toml_file::control_socket_of(path)?),
        None => {
            let instance = target.instance.clone().unwrap_or_else(|| "default".into());
            if let Some(record) = dsr::runtime::instance::read_record(&instance) {
                return Ok((instance, record.control_socket));
            }
            let (_, model) = resolve(target)?;
            Ok((model.instance, model.control_socket))
        }
    }
}

/// Sends a request to the daemon and prints its answer; returns whether it succeeded.
fn send(target: &Target, request: Request) -> Result<bool> {
    let (instance, socket) = socket(target)?;
    let response: Response = runtime()?
        .block_on(control::call(&socket, &request))
        .with_context(|| {
            format!(
                "is the dsr daemon of instance {instance:?} running? (socket {})",
                socket.display()
            )
        })?;
    if response.ok {
        println!("{}", response.message);
    } else {
        eprintln!("dsr: {}", response.message);
        if let Some(hint) = load_flag_hint(&response.message) {
            eprintln!("dsr: {hint}");
        }
    }
    Ok(response.ok)
}

/// The daemon's one validation speaks the file's `[vip.load]` keys; name the `dsr vip add`
/// flags they come from.
fn load_flag_hint(message: &str) -> Option<String> {
    let named: Vec<String> = LOAD_FLAGS
        .iter()
        .filter(|(key, _)| message.contains(key))
        .map(|(key, flag)| format!("{key} is {flag}"))
        .collect();
    (!named.is_empty()).then(|| format!("on the command line, {}", named.join(", ")))
}

/// `[vip.load]` keys and the `dsr vip add` flags that set them.
const LOAD_FLAGS: [(&str, &str); 9] = [
    ("load.agent_port", "--agent-port"),
    ("load.agent_interval", "--agent-interval"),
    ("load.agent_timeout", "--agent-timeout"),
    ("load.agent_send", "--agent-send"),
    ("load.agent_path", "--agent-path"),
    ("load.flows", "--load-flows"),
    ("load.weight_interval", "--weight-interval"),
    ("load.min_weight", "--min-weight"),
    ("load.max_weight", "--max-weight"),
];

/// `status` / `stats`: from the daemon, or from the pinned maps when it is down.
/// What `show` prints.
enum View {
    Status,
    Stats,
    Json,
    List(render::ListColumns),
}

fn show(target: &Target, view: View) -> Result<bool> {
    let (instance, socket) = socket(target)?;
    let rt = runtime()?;
    let status = if rt.block_on(control::probe(&socket))? {
        let r = rt.block_on(control::call(&socket, &Request::Status))?;
        if !r.ok {
            anyhow::bail!("{}", r.message);
        }
        r.status.context("the daemon sent no status")?
    } else {
        let (path, model) = resolve(target)?;
        let known = dsr::runtime::instance::locked(&instance)
            || datapath::is_pinned(&datapath::pin_dir(&instance))
            || model.state_dir.join("state.json").exists()
            || target.config.is_some();
        if !known {
            anyhow::bail!(
                "no dsr instance {instance:?} here: no daemon answers on {}, no data path is \
                 pinned in {} and there is no state in {} (give --config FILE for an instance \
                 with other paths)",
                socket.display(),
                datapath::pin_dir(&instance).display(),
                model.state_dir.display()
            );
        }
        daemon::offline_status(&path, &model)?
    };
    match view {
        View::Json => println!("{}", serde_json::to_string_pretty(&status)?),
        View::Stats => print!("{}", render::render_stats(&status)),
        View::Status => print!("{}", render::render_status(&status)),
        View::List(columns) => print!("{}", render::render_list(&status, columns)),
    }
    Ok(true)
}

fn real_main() -> Result<bool> {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config, host } => {
            let model = toml_file::load(&config)?;
            if host {
                runtime()?
                    .block_on(daemon::check_host(&model))
                    .map_err(|e| anyhow::anyhow!("{}: {e}", config.display()))?;
            }
            println!(
                "{}: ok: instance {}, interface {}, {} VIPs, {} backends",
                config.display(),
                model.instance,
                model.interface,
                model.vips.len(),
                model.vips.iter().map(|v| v.backends.len()).sum::<usize>()
            );
            Ok(true)
        }
        Command::Run { config, clean } => {
            let model = toml_file::load(&config)?;
            // Before anything is touched: with too few privileges, or with a second daemon for
            // the instance, nothing changes.
            dsr::datapath::privileges::check_for_run()?;
            let _lock = dsr::runtime::instance::lock(&model.instance)?;
            runtime()?.block_on(async {
                let daemon = Daemon::start(&config, model, clean).await?;
                daemon.run().await
            })?;
            Ok(true)
        }
        Command::Status {
            target,
            json,
            watch,
        } => match watch {
            None => show(&target, if json { View::Json } else { View::Status }),
            Some(secs) => {
                let period = Duration::try_from_secs_f64(secs)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .context("--watch takes a positive number of seconds")?;
                loop {
                    // Home and clear: the view is redrawn in place.
                    print!("\x1b[H\x1b[2J");
                    show(&target, View::Status)?;
                    std::thread::sleep(period);
                }
            }
        },
        Command::Stats { target, json } => {
            show(&target, if json { View::Json } else { View::Stats })
        }
        Command::List {
            target,
            rate,
            stats,
        } => show(
            &target,
            View::List(if rate {
                render::ListColumns::Rate
            } else if stats {
                render::ListColumns::Stats
            } else {
                render::ListColumns::State
            }),
        ),
        Command::Flows {
            vip,
            limit,
            json,
            target,
        } => {
            let (_, socket) = socket(&target)?;
            let r = runtime()?
                .block_on(control::call(&socket, &Request::Flows { vip, limit }))
                .context("is the dsr daemon running? flows are read through it")?;
            if !r.ok {
                eprintln!("dsr: {}", r.message);
                return Ok(false);
            }
            let flows = r.flows.unwrap_or_default();
            if json {
                println!("{}", serde_json::to_string_pretty(&flows)?);
            } else {
                print!("{}", render::render_flows(&flows));
            }
            Ok(true)
        }
        Command::Trace {
            vip,
            client,
            count,
            duration,
            json,
            target,
        } => {
            let (_, socket) = socket(&target)?;
            let query = control::trace::TraceQuery {
                vip,
                client,
                count,
                duration_ms: duration.as_millis().min(u64::MAX as u128) as u64,
            };
            // Checked here as the daemon checks it, to fail before connecting.
            if let Err(e) = query.validate() {
                eprintln!("dsr: {e}");
                return Ok(false);
            }
            let print = |e: &control::trace::TraceEvent| {
                use std::io::Write;
                let line = if json {
                    serde_json::to_string(e).unwrap_or_default()
                } else {
                    render::render_trace_event(e)
                };
                // A reader that went away (`dsr trace | head`): the trace is over, quietly.
                if writeln!(std::io::stdout(), "{line}").is_err() {
                    std::process::exit(0);
                }
            };
            let r = runtime()?
                .block_on(control::trace::call(&socket, &query, print))
                .context("is the dsr daemon running? frames are traced through it")?;
            if !r.ok {
                eprintln!("dsr: {}", r.message);
                return Ok(false);
            }
            eprintln!("{}", r.message);
            Ok(true)
        }
        Command::Backend { action, target } => send(&target, backend_request(action)?),
        Command::Vip { action, target } => send(&target, vip_request(action)?),
        Command::Plan { what, json } => {
            let (target, request) = match what {
                PlanCmd::Config { file, target } => (
                    target,
                    Request::Plan {
                        config: Some(
                            std::fs::canonicalize(&file)
                                .with_context(|| format!("{}: cannot read", file.display()))?,
                        ),
                        change: None,
                    },
                ),
                PlanCmd::Backend { action, target } => (
                    target,
                    Request::Plan {
                        config: None,
                        change: Some(Box::new(backend_request(action)?)),
                    },
                ),
                PlanCmd::Vip { action, target } => (
                    target,
                    Request::Plan {
                        config: None,
                        change: Some(Box::new(vip_request(action)?)),
                    },
                ),
            };
            let (_, socket) = socket(&target)?;
            let r = runtime()?
                .block_on(control::call(&socket, &request))
                .context("is the dsr daemon running? plan works on its state")?;
            match r.plan {
                Some(plan) if json => {
                    println!("{}", serde_json::to_string_pretty(&plan)?);
                    Ok(true)
                }
                Some(plan) => {
                    print!("{}", control::planning::render(&plan));
                    Ok(true)
                }
                None => {
                    eprintln!("dsr: {}", r.message);
                    Ok(false)
                }
            }
        }
        Command::Realserver { action } => {
            let rt = runtime()?;
            match action {
                RealserverCmd::Setup { vip, dev, state } => {
                    let state = state.unwrap_or_else(|| realserver::default_record_path(vip));
                    for line in rt.block_on(realserver::setup(vip, &dev, &state))? {
                        println!("{line}");
                    }
                    Ok(true)
                }
                RealserverCmd::Teardown { vip, state } => {
                    let state = state.unwrap_or_else(|| realserver::default_record_path(vip));
                    for line in rt.block_on(realserver::teardown(&state))? {
                        println!("{line}");
                    }
                    Ok(true)
                }
                RealserverCmd::Check { vip, dev } => {
                    let items = rt.block_on(realserver::check(vip, &dev))?;
                    for (what, ok, detail) in &items {
                        println!("{:7} {what}: {detail}", if *ok { "ok" } else { "MISSING" });
                    }
                    Ok(items.iter().all(|(_, ok, _)| *ok))
                }
            }
        }
        Command::Import {
            what:
                ImportCmd::Keepalived {
                    file,
                    interface,
                    output,
                    non_dr,
                },
        } => {
            use dsr::spec::keepalived::{self, NonDr};
            let opts = keepalived::Options {
                interface,
                non_dr: match non_dr {
                    NonDrArg::Refuse => NonDr::Refuse,
                    NonDrArg::Skip => NonDr::Skip,
                    NonDrArg::AsDr => NonDr::AsDr,
                },
            };
            let text = keepalived::convert(&file, &opts)?;
            match output {
                Some(path) => std::fs::write(&path, text)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => print!("{text}"),
            }
            Ok(true)
        }
        Command::Reload { target } => send(&target, Request::Reload),
        Command::Explain {
            source,
            destination,
            vlan,
            json,
            target,
        } => {
            if destination.port == 0 {
                anyhow::bail!("explain needs the flow's destination port, not `*`");
            }
            let flow = control::explain::FlowQuery {
                src: source.ip(),
                sport: source.port(),
                dst: destination.address,
                dport: destination.port,
                protocol: destination.protocol,
                vlan,
            };
            let (_, socket) = socket(&target)?;
            let r = runtime()?
                .block_on(control::call(&socket, &Request::Explain { flow }))
                .context("is the dsr daemon running? explain reads its maps")?;
            let e = r.explained.context(r.message)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&e)?);
            } else {
                print!("{}", control::explain::render(&e));
            }
            Ok(true)
        }
        Command::AnnounceCheck { file, grace } => {
            dsr::runtime::announce::check(&file, grace)?;
            Ok(true)
        }
        Command::AnnounceWatch {
            file,
            grace,
            on_announce,
            on_withdraw,
            interval,
        } => {
            if interval < Duration::from_millis(100) {
                anyhow::bail!("--interval {interval:?}: at least 100ms");
            }
            dsr::runtime::announce::watch(&file, grace, interval, &on_announce, &on_withdraw);
        }
        Command::VrrpNotify {
            kind,
            name,
            state,
            priority: _,
            pid,
            target,
        } => {
            if kind != "INSTANCE" {
                println!("ignoring a {kind} notify: dsr follows vrrp_instances");
                return Ok(true);
            }
            let (path, model) = resolve(&target)?;
            let group = model.announce.iter().find(|g| g.name == name).ok_or_else(|| {
                anyhow::anyhow!(
                    "{}: no [[announce]] group is named {name:?} (name it as the vrrp_instance)",
                    path.display()
                )
            })?;
            if group.vmac_vrid.is_none() {
                anyhow::bail!(
                    "{}: announce group {name:?} has no vmac_vrid (only use_vmac instances need notifies)",
                    path.display()
                );
            }
            let pid = pid
                .or_else(dsr::runtime::vrrp::keepalived_ancestor)
                .ok_or_else(|| {
                    anyhow::anyhow!("no keepalived among the parent processes: give --pid")
                })?;
            dsr::runtime::vrrp::record(&model.state_dir, &name, &state, pid)?;
            // The daemon also reads the record every second; this makes it act now. A daemon
            // that is down reads it when it starts.
            if let Ok((_, socket)) = socket(&target) {
                let _ = runtime()?.block_on(control::call(&socket, &Request::VrrpNotified));
            }
            Ok(true)
        }
        Command::Compare { a, b } => {
            let read = |p: &PathBuf| -> Result<control::Status> {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?;
                serde_json::from_str(&text)
                    .with_context(|| format!("{}: not `dsr status --json` output", p.display()))
            };
            let (sa, sb) = (read(&a)?, read(&b)?);
            let differences = render::compare(&sa, &sb);
            for d in &differences {
                println!("{d}");
            }
            if differences.is_empty() {
                println!(
                    "{} VIPs, the same tables on both (seed, size and every slot's backend)",
                    sa.vips.len()
                );
            }
            Ok(differences.is_empty())
        }
        Command::Reset { target } => send(&target, Request::Reset),
        Command::Stop { target } => {
            let (instance, socket) = socket(&target)?;
            let rt = runtime()?;
            if rt.block_on(control::daemon_running(&socket)) {
                let ok = send(&target, Request::Stop { clean: true })?;
                // Wait for the daemon to let go of the socket (it removes the data path first).
                for _ in 0..100 {
                    if !rt.block_on(control::daemon_running(&socket)) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                return Ok(ok);
            }
            // A daemon that holds the lock but does not answer is still running: refuse.
            let _lock = dsr::runtime::instance::lock(&instance)?;
            let dir = datapath::pin_dir(&instance);
            if let Some(note) = resolve(&target)
                .ok()
                .and_then(|(_, m)| dsr::datapath::offload::pending(&m.state_dir))
            {
                eprintln!("dsr: {note}");
            }
            if datapath::remove_pinned(&dir)? {
                println!(
                    "daemon not running; removed the pinned data path {}",
                    dir.display()
                );
            } else {
                println!(
                    "nothing to stop: no daemon and no pinned data path for instance {instance:?}"
                );
            }
            Ok(true)
        }
        Command::Completions { shell } => {
            // Without the hidden commands (clap_complete would offer them).
            let cli = <Cli as clap::CommandFactory>::command();
            let mut cmd = clap::Command::new("dsr")
                .about(cli.get_about().cloned().unwrap_or_default())
                .version(env!("CARGO_PKG_VERSION"))
                .subcommand_required(true)
                .subcommands(cli.get_subcommands().filter(|c| !c.is_hide_set()).cloned());
            clap_complete::generate(shell, &mut cmd, "dsr", &mut std::io::stdout());
            Ok(true)
        }
        Command::Manpage { dir } => {
            let cmd = <Cli as clap::CommandFactory>::command().disable_help_subcommand(true);
            clap_mangen::generate_to(cmd.clone(), &dir)?;
            // dsr.1 again, with what clap does not describe.
            let mut page = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut page)?;
            page.extend_from_slice(MANPAGE_EXTRA.as_bytes());
            std::fs::write(dir.join("dsr.1"), page)?;
            Ok(true)
        }
    }
}

/// The request a `dsr backend ...` command sends.
fn backend_request(action: BackendCmd) -> Result<Request> {
    Ok(match action {
        BackendCmd::Add {
            vip,
            address,
            interface,
            weight,
            mac,
            backup,
            sorry,
            inhibit_on_failure,
            agent_port,
            check,
        } => {
            let role = if backup {
                Role::Backup
            } else if sorry {
                Role::Sorry
            } else {
                Role::Primary
            };
            let spec = check.spec()?;
            Request::BackendAdd {
                vip,
                inherit_check: spec.is_none(),
                backend: BackendSpec {
                    address,
                    weight,
                    mac,
                    role,
                    inhibit_on_failure,
                    check: spec.unwrap_or_else(CheckSpec::none),
                    drained: false,
                    agent_port,
                    interface,
                },
            }
        }
        BackendCmd::Remove { vip, address } => Request::BackendRemove { vip, address },
        BackendCmd::Weight {
            vip,
            address,
            weight,
        } => Request::BackendWeight {
            vip,
            address,
            weight,
        },
        BackendCmd::Drain { vip, address } => Request::BackendDrain { vip, address },
        BackendCmd::Enable { vip, address } => Request::BackendEnable { vip, address },
    })
}

/// The request a `dsr vip ...` command sends.
fn vip_request(action: VipCmd) -> Result<Request> {
    Ok(match action {
        VipCmd::Add {
            vip,
            fragments,
            source_affinity,
            name,
            no_conntrack,
            table_size,
            check,
            load,
        } => Request::VipAdd {
            vip: VipSpec {
                name: name.unwrap_or_else(|| vip.to_string()),
                addr: vip,
                conntrack: !no_conntrack,
                fragments,
                hash_fields: if source_affinity {
                    dsr_common::HASH_SRC_ADDR
                } else if fragments {
                    dsr_common::HASH_ALL & !dsr_common::HASH_PORTS
                } else {
                    dsr_common::HASH_ALL
                },
                check: check.spec()?.unwrap_or_else(CheckSpec::none),
                min_usable: 1,
                drained: false,
                notify: None,
                table_size,
                load: load.spec()?,
                backends: Vec::new(),
            },
        },
        VipCmd::Remove { vip } => Request::VipRemove { vip },
        VipCmd::Drain { vip } => Request::VipDrain { vip },
        VipCmd::Undrain { vip } => Request::VipUndrain { vip },
    })
}
/// Appended to the generated man page: what clap does not describe.
const MANPAGE_EXTRA: &str = r#".SH FILES
.TP
\fI/etc/dsr/dsr.toml\fR
The configuration the packaged systemd unit (\fBdsr.service\fR) runs with.
.TP
\fI/sys/fs/bpf/dsr/INSTANCE\fR, \fI/run/dsr/INSTANCE.sock\fR, \fI/var/lib/dsr/INSTANCE\fR
The pinned data path, the control socket, the state directory (defaults).
.SH SIGNALS
SIGTERM and SIGINT stop the daemon and leave the data path forwarding (so does
\fBsystemctl stop dsr\fR); the next \fBdsr run\fR adopts it. \fBdsr stop\fR also removes
the data path. SIGHUP reloads the config.
"#;
