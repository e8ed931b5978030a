//! `dsr run`: the daemon. It owns the runtime [`State`], feeds it every event (check results,
//! neighbour changes, control requests, reloads) and after each one hands the result to the
//! map writer ([`Daemon::apply`]), which writes only what differs from what the kernel holds.
//!
//! The data path outlives the daemon: maps and link are pinned per instance, SIGTERM leaves
//! them in place (traffic keeps flowing), and the next start adopts them together with the
//! saved state (ids, MACs, health, runtime changes), so restarts and upgrades lose nothing.

mod explain;
mod placement;
mod planning;

use std::{
    collections::HashMap,
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use anyhow::{Result, anyhow};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use crate::{
    control::{
        self, Call, Request, Response, Status,
        status::{self, Rates},
    },
    datapath::{
        self, Counters, Datapath, LoadOptions, Sizes,
        writer::{self, Writer},
    },
    plan::{self, sizing::TableSizing},
    runtime::{
        health::{self, Report},
        neighbour::{self, NeighbourEvent, Netlink},
        persistence::{Saved, read_saved, state_file, write_saved},
        state::State,
    },
    spec::model::{CheckKind, MacAddr, Model, Role, VipAddr, VipSpec},
    spec::toml_file,
    spec::{
        journal::{self, Change},
        validate::Limits,
    },
};

/// Flow-table keys `dsr plan` reads at most (its flow counts are then a sample).
const MAX_FLOWS_SCANNED_FOR_PLAN: usize = 1 << 20;
/// Most flows one `dsr flows` lists (the table can hold millions).
const MAX_FLOWS_LISTED: usize = 100_000;
/// How long start-up waits for backends' MACs before going on without the missing ones.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);
/// Housekeeping period: neighbour poll (backstop for missed events), rates, map re-sync.
const TICK: Duration = Duration::from_secs(1);
/// How often load-aware weights are looked at (`weight_interval` is at least this).
const LOAD_TICK: Duration = Duration::from_millis(100);
/// Check results taken in one go before the tables are rebuilt.
const MAX_REPORTS_PER_APPLY: usize = 1024;
/// How often an unresolved backend is solicited again, in ticks.
const RESOLICIT_TICKS: u64 = 5;
/// Tables that cost at most this many slots to build, all together (`TableInput::cost`: one
/// VIP of 8 backends at the default size, all up), are built on the daemon's loop, so that
/// the data path follows before the next request (a release build takes 40-70 ns a slot:
/// under 20 ms); the others are built off it, so that status and checks go on meanwhile.
const INLINE_BUILD_COST: u64 = 1 << 18;
/// What one build off the loop costs at most (one table of any size when alone): about a
/// second's work, and 64 MiB of tables held built before they are written.
const BUILD_BATCH_COST: u64 = 1 << 24;

pub struct Daemon {
    /// The slots per backend the default table sizes got last (logged when it changes).
    table_slots_per_backend: Option<u32>,
    config_path: PathBuf,
    config: Model,
    journal: Vec<Change>,
    state: State,
    datapath: Datapath,
    netlink: Netlink,
    ifindex: u32,
    /// Other interfaces backends sit behind: ifindex -> (TX_PORTS entry, its MAC).
    ports: HashMap<u32, (u32, MacAddr)>,
    writer: Writer,
    /// Whether each VIP was announced when last written.
    announced: HashMap<VipAddr, bool>,
    /// The receiving interface was found gone (logged once).
    interface_gone: bool,
    /// Reloads applied and refused since start.
    reloads: (u64, u64),
    /// Who got each VIP's new flows when last logged.
    serving: HashMap<VipAddr, Option<Role>>,
    checks: health::Supervisor,
    reports_rx: Option<mpsc::Receiver<Report>>,
    rates: Rates,
    /// Load steps moved since the state was last saved (saved on the next tick, not at
    /// every step).
    load_unsaved: bool,
    /// The last count of the flow table (none yet: `None`).
    flow_count:
        tokio::sync::watch::Receiver<Option<std::sync::Arc<datapath::flowcount::FlowCount>>>,
    /// The VIPs' notify hooks.
    notifier: crate::runtime::notify::Notifier,
    /// The flow-state exchange's key (read at start) and, once running, its status.
    sync_key: Option<Vec<u8>>,
    sync: Option<std::sync::Arc<std::sync::Mutex<crate::runtime::sync::SyncStatus>>>,
    /// Names of the data-path ids, for `dsr trace`'s records.
    trace_names: tokio::sync::watch::Sender<std::sync::Arc<crate::runtime::state::Names>>,
    /// Tables built off the loop arrive here; one batch is built at a time (what changes
    /// meanwhile is built next, in one go).
    built: (
        mpsc::UnboundedSender<writer::Builds>,
        Option<mpsc::UnboundedReceiver<writer::Builds>>,
    ),
    building: bool,
}

impl Daemon {
    /// Loads (or adopts) the data path, brings it to the config plus saved runtime changes,
    /// and attaches.
    pub async fn start(config_path: &Path, config: Model, clean: bool) -> Result<Self> {
        let netlink = Netlink::new()?;
        let (ifindex, if_mac) = netlink.link(&config.interface).await?;
        check_interfaces(&netlink, &config.vips)
            .await
            .map_err(|e| anyhow!("{}: {e}", config_path.display()))?;
        // Before any map, pin or program: a start refused here changes nothing.
        let mut journal = read_saved(&config).map(|s| s.journal).unwrap_or_default();
        journal::upgrade(&mut journal);
        let (vips, _) = journal::replay(&config.vips, &journal, limits(&config));
        let uses_vlan = vips.iter().any(|v| v.addr.vlan != 0);
        crate::datapath::offload::check_start(&config.interface, uses_vlan, config.vlan_tags)?;
        let sync_key = match &config.sync {
            Some(s) => Some(crate::runtime::sync::read_key(&s.key_file)?),
            None => None,
        };
        let sizes = Sizes {
            max_vips: config.max_vips,
            max_backends: config.max_backends,
            table_budget: config.tables.budget,
            flow_table_size: config.flow_table_size,
        };
        let pin_dir = datapath::pin_dir(&config.instance);
        let mut saved = read_saved(&config);
        if clean {
            if datapath::remove_pinned(&pin_dir)? {
                log::info!(
                    "--clean: removed the pinned data path in {}",
                    pin_dir.display()
                );
            }
            if let Some(s) = saved.as_mut() {
                s.state = None;
            }
        }
        // Pins of another map layout or other sizes are refused with the remedy (never
        // replaced behind the operator's back: that stops traffic).
        if !clean {
            datapath::check_pinned(&pin_dir, &sizes)?;
        }
        // Adopting maps needs the saved ids: without them a flow entry could name the wrong
        // backend. Start fresh instead (established flows are re-placed once).
        if datapath::is_pinned(&pin_dir) && saved.as_ref().and_then(|s| s.state.as_ref()).is_none()
        {
            log::warn!(
                "a pinned data path exists in {} but no saved state in {}: starting it afresh",
                pin_dir.display(),
                state_file(&config).display()
            );
            datapath::remove_pinned(&pin_dir)?;
        }
        let mut datapath = Datapath::load(&LoadOptions {
            sizes,
            hash_seed: config.hash_seed,
            flow_idle: config.flow_idle_timeout,
            pin_dir: Some(pin_dir.clone()),
            datapath_log: config.datapath_log,
        })?;
        // The data path can be had: now keep VLAN tags in band (checked above, so this only
        // turns RX tag stripping off and saves the old values).
        crate::datapath::offload::prepare(
            &config.interface,
            uses_vlan,
            config.vlan_tags,
            &config.state_dir,
        )?;
        datapath.set_iface(ifindex, if_mac)?;
        let (mut state, journal) = match (datapath.adopted(), saved) {
            (
                true,
                Some(Saved {
                    state: Some(state),
                    journal,
                    interface,
                    ..
                }),
            ) => {
                log::info!(
                    "adopted the running data path in {} ({} VIPs, {} runtime changes)",
                    pin_dir.display(),
                    state.vips.len(),
                    journal.len()
                );
                if interface != config.interface {
                    log::info!(
                        "interface changed from {interface} to {}: moving",
                        config.interface
                    );
                    datapath.unpin_link()?;
                }
                (state, journal)
            }
            (_, saved) => {
                log::info!(
                    "loaded a new data path: {} VIPs max, {} backends max, {} table slots ({} MiB), \
                     {} flows (about {} MiB), seed {:#010x}",
                    sizes.max_vips,
                    sizes.max_backends,
                    sizes.table_budget,
                    sizes.table_bytes() >> 20,
                    sizes.flow_table_size,
                    sizes.flow_bytes() >> 20,
                    config.hash_seed
                );
                let state = State::new(
                    config.max_vips,
                    config.max_backends,
                    config.flow_idle_timeout,
                );
                (state, saved.map(|s| s.journal).unwrap_or_default())
            }
        };
        // Freed ids wait out the idle timeout in force now (a restart may change it).
        state.set_quarantine(config.flow_idle_timeout);
        let mut journal = journal;
        for note in journal::upgrade(&mut journal) {
            log::warn!("{note}");
        }
        let (vips, skipped) = journal::replay(&config.vips, &journal, limits(&config));
        for s in skipped {
            log::warn!("{s}; dropped from the journal");
        }
        let journal = journal::prune(&config.vips, &journal, limits(&config));
        let reconciled = state.reconcile(&vips, &config.tables, SystemTime::now());
        let per_backend = reconciled.table_slots_per_backend;
        for e in &reconciled.errors {
            log::error!("{e}");
        }
        // What the maps hold (an adopted data path's included): the writer diffs against it.
        let writer = Writer::read(&datapath)?;
        let (reports, reports_rx) = mpsc::channel(1024);
        let (built_tx, built_rx) = mpsc::unbounded_channel();
        let (config_instance, config_notify_timeout) =
            (config.instance.clone(), config.notify_timeout);
        let mut daemon = Daemon {
            config_path: config_path.to_owned(),
            config,
            journal,
            state,
            datapath,
            netlink,
            ifindex,
            ports: HashMap::new(),
            writer,
            serving: HashMap::new(),
            reloads: (0, 0),
            interface_gone: false,
            announced: HashMap::new(),
            checks: {
                let budget = health::check_budget();
                log::info!("health checks: at most {budget} at once (file descriptor limit)");
                health::Supervisor::new(reports, budget)
            },
            reports_rx: Some(reports_rx),
            rates: Rates::default(),
            trace_names: tokio::sync::watch::Sender::new(Default::default()),
            load_unsaved: false,
            flow_count: tokio::sync::watch::Sender::new(None).subscribe(),
            notifier: crate::runtime::notify::Notifier::new(
                &config_instance,
                config_notify_timeout,
            ),
            sync_key,
            sync: None,
            table_slots_per_backend: None,
            built: (built_tx, Some(built_rx)),
            building: false,
        };
        daemon.after_reconcile(per_backend);
        daemon.restore_ports();
        // An egress interface may have gone (or come back) while dsr was down.
        daemon.follow_egress().await;
        daemon.place_backends().await;
        daemon.resolve(RESOLVE_TIMEOUT).await;
        // Past this point the maps are being written: a failed write is retried (and shown
        // as DEGRADED), never a reason to exit with the data path half updated.
        if let Err(e) = daemon.apply_now().await {
            log::error!("{e:#}");
        }
        let iface = daemon.config.interface.clone();
        let mode = daemon.config.xdp_mode;
        daemon.datapath.attach(ifindex, &iface, mode)?;
        if let Some(gid) = daemon.config.control_group
            && let Err(e) = datapath::share_pins(&pin_dir, gid)
        {
            log::warn!("the control group cannot read the pins: {e:#}");
        }
        log::info!("attached to {iface} (ifindex {ifindex}, {if_mac}, {mode:?} mode)");
        daemon.log_state();
        daemon.save();
        Ok(daemon)
    }

    /// Runs until SIGTERM/SIGINT (data path left in place) or `dsr stop` (data path removed).
    pub async fn run(mut self) -> Result<()> {
        let (calls_tx, mut calls) = mpsc::channel::<Call>(64);
        let metrics = match self.config.metrics {
            Some(addr) => {
                let task = crate::control::metrics::serve(addr, calls_tx.clone()).await?;
                log::info!("metrics on http://{addr}/metrics");
                Some(task)
            }
            None => None,
        };
        self.flow_count = count_flows(
            self.datapath.flow_counter(self.config.flow_idle_timeout)?,
            self.config.flow_count_interval,
        );
        if let (Some(spec), Some(key)) = (&self.config.sync, self.sync_key.take()) {
            self.sync = Some(
                crate::runtime::sync::start(
                    spec,
                    key,
                    self.datapath.flow_counter(self.config.flow_idle_timeout)?,
                    self.datapath.flow_adopter(self.config.flow_idle_timeout)?,
                    self.trace_names.subscribe(),
                    self.config.flow_idle_timeout,
                )
                .await?,
            );
            log::info!(
                "sync: sending flows to {:?} every {:?}, listening on {}",
                spec.peers,
                spec.interval,
                spec.listen
            );
        }
        if let Some(logger) = self.datapath.take_logger() {
            forward_datapath_log(logger)?;
        }
        let tracer = match self.datapath.take_trace() {
            Some((switch, ring)) => Some(control::trace::Tracer::start(
                switch,
                ring,
                self.trace_names.subscribe(),
            )?),
            None => None,
        };
        let server = control::serve(
            &self.config.control_socket,
            self.config.control_group,
            calls_tx,
            tracer.clone(),
        )
        .await?;
        // Where `--instance NAME` finds this daemon (kept after exit: it also says where
        // the instance's state lives).
        let record = crate::runtime::instance::Record {
            pid: std::process::id(),
            config: std::fs::canonicalize(&self.config_path).unwrap_or(self.config_path.clone()),
            control_socket: self.config.control_socket.clone(),
            state_dir: self.config.state_dir.clone(),
        };
        if let Err(e) = crate::runtime::instance::write_record(&self.config.instance, &record) {
            log::warn!("{e:#}");
        }
        log::info!("control socket {}", self.config.control_socket.display());
        let mut neighbours = neighbour::subscribe()?;
        let mut reports = self.reports_rx.take().expect("run once");
        let mut built = self.built.1.take().expect("run once");
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let mut tick = tokio::time::interval(TICK);
        let mut ticks = 0u64;
        let mut load_tick = tokio::time::interval(LOAD_TICK);
        load_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // `dsr stop` is answered only once the data path is gone, so that its answer is true.
        let (clean, stop_reply) = loop {
            tokio::select! {
                _ = term.recv() => { log::info!("SIGTERM"); break (false, None); }
                _ = int.recv() => { log::info!("SIGINT"); break (false, None); }
                _ = hup.recv() => {
                    // Logged inside, as for `dsr reload`.
                    let _ = self.reload_logged("SIGHUP").await;
                }
                Some((request, reply)) = calls.recv() => {
                    if let Request::Stop { clean } = request {
                        break (clean, Some(reply));
                    }
                    let response = self.handle(request).await;
                    let _ = reply.send(response);
                }
                Some(report) = reports.recv() => {
                    // Results that arrived together are applied together: one table build
                    // for a rack going down, not one per backend.
                    let mut changed = self.on_check(report).await;
                    let mut more = 0;
                    while more < MAX_REPORTS_PER_APPLY
                        && let Ok(report) = reports.try_recv()
                    {
                        changed |= self.on_check(report).await;
                        more += 1;
                    }
                    if changed {
                        self.apply_logged();
                        self.save();
                    }
                }
                Some(event) = neighbours.recv() => self.on_neighbour(event),
                Some(tables) = built.recv() => {
                    self.building = false;
                    self.writer.add_built(tables);
                    self.apply_logged();
                }
                _ = tick.tick() => {
                    ticks += 1;
                    if std::mem::take(&mut self.load_unsaved) {
                        self.save();
                    }
                    self.housekeeping(ticks.is_multiple_of(RESOLICIT_TICKS)).await;
                }
                _ = load_tick.tick() => self.follow_load(),
            }
        };
        server.abort();
        if let Some(t) = &tracer {
            // Running traces end with their summary, not a cut connection.
            t.stop();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if let Some(m) = metrics {
            m.abort();
        }
        let _ = std::fs::remove_file(&self.config.control_socket);
        self.checks.stop_all();
        self.log_counters();
        if clean {
            // Withdrawn at once, and the WITHDRAWN hooks given their time to run (a cloud
            // VIP is released before the daemon goes).
            self.announce(true);
            // A runner may be busy with an earlier event: two runs' time.
            self.notifier
                .settle(self.config.notify_timeout * 2 + Duration::from_secs(1))
                .await;
        }
        if clean || stop_reply.is_some() {
            let result = if clean {
                self.stop_clean()
            } else {
                self.save();
                Ok("stopped; the data path keeps forwarding".into())
            };
            if let Some(reply) = stop_reply {
                let response = match &result {
                    Ok(msg) => Response::ok(msg.clone()),
                    Err(e) => Response::error(format!("{e:#}")),
                };
                let _ = reply.send(response);
                // Let the connection task write the answer before the runtime goes away.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            result.map(|_| ())
        } else {
            self.save();
            log::info!(
                "exiting; the data path keeps forwarding (pinned in {}). `dsr stop` removes it",
                datapath::pin_dir(&self.config.instance).display()
            );
            Ok(())
        }
    }

    fn stop_clean(mut self) -> Result<String> {
        // Withdrawn at once, not after the grace.
        self.announce(true);
        let pin_dir = datapath::pin_dir(&self.config.instance);
        let saved = Saved {
            layout_version: dsr_common::LAYOUT_VERSION,
            interface: self.config.interface.clone(),
            state: None,
            journal: self.journal.clone(),
        };
        if let Err(e) = write_saved(&self.config, &saved) {
            log::error!("{e:#}");
        }
        let interface = self.config.interface.clone();
        drop(self.datapath);
        datapath::remove_pinned(&pin_dir)?;
        crate::datapath::offload::restore_logged(&self.config.state_dir);
        // Nothing of the instance runs any more: its record goes (the lock with the process).
        crate::runtime::instance::remove_record(&self.config.instance);
        let msg = format!(
            "stopped: detached from {interface} and removed {}",
            pin_dir.display()
        );
        log::info!("{msg}");
        Ok(msg)
    }

    fn desired_vips(&self) -> (Vec<VipSpec>, Vec<String>) {
        journal::replay(&self.config.vips, &self.journal, limits(&self.config))
    }

    /// Runs the checks of exactly the backends there are, frees the TX ports no backend uses
    /// any more, and says when the default table sizes had to shrink to fit the budget.
    fn after_reconcile(&mut self, per_backend: Option<u32>) {
        if per_backend != self.table_slots_per_backend {
            if let Some(k) = per_backend.filter(|&k| k < dsr_common::TABLE_SLOTS_PER_BACKEND) {
                log::warn!(
                    "the VIPs' default table sizes do not fit table_budget {}: they get {k} slots \
                     per backend instead of {} (more new flows move when a backend fails); \
                     raise table_budget (fixed when the data path is created) or set table_size",
                    self.config.tables.budget,
                    dsr_common::TABLE_SLOTS_PER_BACKEND
                );
            }
            self.table_slots_per_backend = per_backend;
        }
        let used: std::collections::HashSet<u32> = self
            .state
            .vips
            .iter()
            .flat_map(|v| v.backends.iter())
            .filter(|b| b.egress.is_some() && !b.egress_lost)
            .map(|b| b.ifindex)
            .collect();
        self.ports.retain(|ifindex, _| used.contains(ifindex));
        self.trace_names
            .send_replace(std::sync::Arc::new(crate::runtime::state::Names::of(
                &self.state,
            )));
        self.checks.sync(self.state.vips.iter().flat_map(|vip| {
            vip.backends.iter().flat_map(move |b| {
                let wanted = |token, job| health::Wanted {
                    token,
                    address: b.spec.address,
                    default_port: vip.spec.addr.port,
                    job,
                };
                let check = wanted(b.check_token, health::Job::Check(&b.spec.check));
                let agent = vip
                    .spec
                    .load
                    .as_ref()
                    .and_then(|l| l.agent_for(&b.spec))
                    .filter(|_| b.agent_token != 0)
                    .map(|a| wanted(b.agent_token, health::Job::Agent(a)));
                std::iter::once(check).chain(agent)
            })
        }));
    }

    /// TX_PORTS entries of an adopted state (backends keep their egress across restarts).
    fn restore_ports(&mut self) {
        let ports: Vec<(u32, (u32, MacAddr))> = self
            .state
            .vips
            .iter()
            .flat_map(|v| v.backends.iter())
            .filter(|b| !b.egress_lost)
            .filter_map(|b| b.egress.map(|e| (b.ifindex, e)))
            .collect();
        for (ifindex, (port, mac)) in ports {
            self.ports.insert(ifindex, (port, mac));
        }
    }

    /// Writes the VIPs' announcement files (logging changes); `withdraw_all` for `dsr stop`.
    fn announce(&mut self, withdraw_all: bool) {
        let mut events = Vec::new();
        for vip in &self.state.vips {
            let now = !withdraw_all && crate::runtime::announce::announced(vip);
            if self.announced.insert(vip.spec.addr, now) != Some(now) {
                use crate::runtime::notify::State;
                events.extend(notify_event(
                    vip,
                    self.config.notify.as_deref(),
                    if now {
                        State::Announced
                    } else {
                        State::Withdrawn
                    },
                ));
                log::info!(
                    "VIP {}: {}",
                    vip.spec.name,
                    match (now, vip.spec.drained) {
                        (true, _) => "announced".to_owned(),
                        (false, true) => "withdrawn (drained)".into(),
                        (false, false) if withdraw_all => "withdrawn (dsr stop)".into(),
                        (false, false) => format!(
                            "withdrawn ({} usable backends, min_usable {})",
                            crate::runtime::announce::usable(vip),
                            vip.spec.min_usable
                        ),
                    }
                );
            }
        }
        self.announced
            .retain(|a, _| self.state.vips.iter().any(|v| v.spec.addr == *a));
        for e in events {
            self.notifier.send(e);
        }
        let vips = &self.state.vips;
        self.notifier
            .retain(|a| vips.iter().any(|v| v.spec.addr == *a));
        if let Err(e) = crate::runtime::announce::write_all(
            &self.config.state_dir,
            &self.state,
            &self.config.announce,
            withdraw_all,
        ) {
            log::error!("announcement files: {e:#}");
        }
    }

    /// Receives for the virtual MAC of each VRRP instance this node is master of, and drops
    /// frames to the others': compared with what the kernel's IFACES entry holds, changes
    /// logged.
    fn sync_vmacs(&mut self) {
        let mut want = Vec::new();
        let mut why = Vec::new();
        for g in &self.config.announce {
            let Some(vmac) = g.vmac() else { continue };
            let (master, reason) = crate::runtime::vrrp::master(&self.config.state_dir, &g.name);
            want.push((MacAddr(vmac), master));
            why.push((g.name.clone(), MacAddr(vmac), master, reason));
        }
        let mut have = match self.datapath.vmacs(self.ifindex) {
            Ok(h) => h,
            Err(e) => {
                log::warn!(
                    "reading the virtual MACs of interface {}: {e:#}",
                    self.ifindex
                );
                return;
            }
        };
        have.sort_by_key(|(m, _)| m.0);
        want.sort_by_key(|(m, _)| m.0);
        if have == want {
            return;
        }
        if let Err(e) = self.datapath.set_vmacs(self.ifindex, &want) {
            log::error!("writing the virtual MACs: {e:#}");
            return;
        }
        for (group, vmac, master, reason) in why {
            let was = have
                .iter()
                .find(|(m, _)| *m == vmac)
                .is_some_and(|(_, on)| *on);
            match (was, master) {
                (false, true) => log::info!("VRRP {group}: {reason}: receiving for {vmac}"),
                (true, false) => {
                    log::warn!("VRRP {group}: {reason}: dropping frames for {vmac}")
                }
                _ => {}
            }
        }
    }

    /// Hands the state's desired data path to the map writer. Tables not built yet are built
    /// off the loop (status and checks go on meanwhile) and written when they arrive; their
    /// VIPs keep their old tables until then.
    fn apply(&mut self) -> Result<()> {
        let desired = plan::desired(&self.state);
        let seed = self.datapath.hash_seed();
        let missing = self.writer.missing(&desired);
        // Small tables are built at once: the data path follows before the next request.
        let (small, big) = writer::take_by_cost(missing, INLINE_BUILD_COST, false);
        if !small.is_empty() {
            self.writer.add_built(writer::build(small, seed));
        }
        if !big.is_empty() && !self.building {
            self.building = true;
            // A batch at a time, so that what is held built but not written stays bounded.
            let (missing, _) = writer::take_by_cost(big, BUILD_BATCH_COST, true);
            let tx = self.built.0.clone();
            tokio::spawn(async move {
                let built = tokio::task::spawn_blocking(move || writer::build(missing, seed))
                    .await
                    .unwrap_or_else(|e| {
                        log::error!("building tables failed: {e}");
                        Default::default()
                    });
                let _ = tx.send(built);
            });
        }
        self.write(&desired)
    }

    /// Writes what of `desired` is built.
    fn write(&mut self, desired: &plan::Desired) -> Result<()> {
        self.log_serving();
        self.announce(false);
        let applied = self
            .writer
            .apply(&mut self.datapath, desired)
            .into_result()?;
        for t in applied.tables {
            let who = match t.standby {
                0 => format!("{} backends taking new flows", t.backends),
                n => format!(
                    "{} backends taking new flows ({n} standing by, their slots lent)",
                    t.backends
                ),
            };
            if let Some((old, share)) = t.resized {
                log::info!(
                    "VIP {}: table resized from {old} to {} slots for {who}: {:.1}% of new \
                     flows move (tracked flows keep their backends; without conntrack every \
                     flow follows the table)",
                    t.vip,
                    t.size,
                    share * 100.0
                );
                continue;
            }
            match t.moved {
                // An empty table has no slots to count moves against.
                Some(_) if t.size == 0 => {
                    log::info!("VIP {}: table emptied (no backend takes new flows)", t.vip)
                }
                Some(moved) => log::info!(
                    "VIP {}: table rebuilt for {who}: {moved} of {} slots ({:.2}%) moved",
                    t.vip,
                    t.size,
                    moved as f64 * 100.0 / t.size as f64
                ),
                None => log::debug!("VIP {}: table of {} backends written", t.vip, t.backends),
            }
        }
        Ok(())
    }

    /// The one place a VIP's change of who gets its new flows is logged: primaries, backups,
    /// sorry servers, nobody (dropping), and back. A VIP seen for the first time is only
    /// recorded (its backends may not be resolved yet: no noise at creation).
    fn log_serving(&mut self) {
        let mut now = HashMap::new();
        let mut events = Vec::new();
        for vip in &self.state.vips {
            let (serving, _) = vip.serving();
            now.insert(vip.spec.addr, serving);
            let before = self.serving.get(&vip.spec.addr);
            if before.is_none_or(|b| b.is_some() != serving.is_some()) {
                use crate::runtime::notify::State;
                events.extend(notify_event(
                    vip,
                    self.config.notify.as_deref(),
                    if serving.is_some() {
                        State::Usable
                    } else {
                        State::Unusable
                    },
                ));
            }
            match before {
                Some(before) if *before != serving => match serving {
                    Some(role) => log::warn!(
                        "VIP {}: new flows now go to its {}{}",
                        vip.spec.name,
                        role.plural(),
                        match role {
                            Role::Primary => String::new(),
                            Role::Backup => " (no primary is usable)".into(),
                            Role::Sorry => " (no primary or backup is usable)".into(),
                        }
                    ),
                    None => log::error!(
                        "VIP {}: NO USABLE BACKEND: its packets are dropped",
                        vip.spec.name
                    ),
                },
                _ => {}
            }
        }
        self.serving = now;
        for e in events {
            self.notifier.send(e);
        }
    }

    /// [`Daemon::apply`] with every table built first (the loop waits for it): for changes
    /// whose caller is told they are done, and for the first write at start.
    async fn apply_now(&mut self) -> Result<()> {
        let desired = plan::desired(&self.state);
        loop {
            let missing = self.writer.missing(&desired);
            if missing.is_empty() {
                break;
            }
            // A batch at a time, each written before the next is built.
            let (batch, _) = writer::take_by_cost(missing, BUILD_BATCH_COST, true);
            let seed = self.datapath.hash_seed();
            let built = tokio::task::spawn_blocking(move || writer::build(batch, seed))
                .await
                .map_err(|e| anyhow!("building tables failed: {e}"))?;
            self.writer.add_built(built);
            self.write(&desired)?;
        }
        self.write(&desired)
    }

    fn apply_logged(&mut self) {
        if let Err(e) = self.apply() {
            log::error!("{e:#}");
        }
    }

    /// Load-aware weights: takes a new count of the active flows, and moves the steps whose
    /// `weight_interval` has passed; writes the tables when one moved.
    fn follow_load(&mut self) {
        if !self.state.vips.iter().any(|v| v.spec.load.is_some()) {
            return;
        }
        if self.flow_count.has_changed().unwrap_or(false) {
            let count = self.flow_count.borrow_and_update().clone();
            if let Some(count) = count {
                self.state.observe_flows(&count.per_backend);
            }
        }
        let moved = self.state.step_loads(std::time::SystemTime::now());
        for (vip, addr, from, to, why) in &moved {
            log::info!("VIP {vip}: backend {addr} weight step {from}/8 -> {to}/8 ({why})");
        }
        if !moved.is_empty() {
            self.apply_logged();
            self.load_unsaved = true;
        }
    }

    /// Records what a check task found; whether which backends take or keep flows changed
    /// (the caller applies).
    async fn on_check(&mut self, report: Report) -> bool {
        let result = match report.outcome {
            health::Outcome::Check(result) => result,
            health::Outcome::Agent(reading) => {
                let Some(news) = self.state.record_agent(report.token, reading) else {
                    return false;
                };
                let (vip, addr) = (news.vip, news.backend);
                match (&news.unreachable, &news.said) {
                    (Some(e), _) => log::warn!(
                        "VIP {vip}: backend {addr}'s agent cannot be asked ({e}); what it said \
                         last stays in force"
                    ),
                    (None, Some(said)) => log::info!(
                        "VIP {vip}: backend {addr}'s agent says {}",
                        crate::runtime::agent::describe(said)
                    ),
                    (None, None) => {}
                }
                if !news.unknown.is_empty() {
                    log::warn!(
                        "VIP {vip}: backend {addr}'s agent used words dsr ignores: {:?}",
                        news.unknown
                    );
                }
                return news.flows_changed;
            }
        };
        if let Some((vip, addr, up)) = self.state.record_check(report.token, result.clone()) {
            if up {
                log::info!("VIP {vip}: backend {addr} is UP ({})", result.message);
            } else {
                log::warn!("VIP {vip}: backend {addr} is DOWN ({})", result.message);
                // The address may have moved to another host: learn its MAC afresh.
                let ifindex = self
                    .state
                    .backend(&vip, addr)
                    .filter(|b| b.spec.mac.is_none())
                    .map(|b| b.ifindex);
                if let Some(ifindex) = ifindex
                    && let Err(e) = self.netlink.reprobe(ifindex, addr).await
                {
                    log::debug!("re-probing {addr}: {e:#}");
                }
            }
            return true;
        }
        false
    }

    fn on_neighbour(&mut self, (ifindex, addr, mac): NeighbourEvent) {
        self.set_mac(ifindex, addr, mac);
    }

    fn set_mac(&mut self, ifindex: u32, addr: IpAddr, mac: MacAddr) {
        let old = self
            .state
            .vips
            .iter()
            .flat_map(|v| v.backends.iter())
            // Among the entries that will change: an unchanged MAC is no news.
            .find(|b| {
                b.spec.address == addr
                    && b.ifindex == ifindex
                    && b.spec.mac.is_none()
                    && b.mac != Some(mac)
            })
            .map(|b| b.mac);
        if self.state.set_neighbour(ifindex, addr, mac) > 0 {
            match old.flatten() {
                Some(o) => log::info!("backend {addr} moved from {o} to {mac}"),
                None => log::info!("backend {addr} resolved to {mac}"),
            }
            self.apply_logged();
            self.save();
        }
    }

    async fn housekeeping(&mut self, resolicit: bool) {
        self.follow_interface().await;
        // The announcement heartbeat.
        self.announce(false);
        // A keepalived that died is master no more.
        self.sync_vmacs();
        if self.follow_egress().await {
            self.apply_logged();
            self.save();
        }
        // The neighbour tables, in case an event was missed (netlink multicast can drop).
        let dynamic = self.state.dynamic_addresses();
        let mut ifaces: Vec<u32> = dynamic.iter().map(|(i, _)| *i).collect();
        ifaces.dedup();
        for ifindex in ifaces {
            match self.netlink.neighbours(ifindex).await {
                Ok(table) => {
                    for &(i, addr) in dynamic.iter().filter(|(i, _)| *i == ifindex) {
                        match table.get(&addr) {
                            Some(&mac) => self.set_mac(i, addr, mac),
                            None if resolicit => {
                                if let Err(e) = self.netlink.solicit(i, addr).await {
                                    log::debug!("{e:#}");
                                }
                            }
                            None => {}
                        }
                    }
                }
                Err(e) => log::warn!("reading the neighbour table: {e:#}"),
            }
        }
        for vip in &self.state.vips {
            if let Ok(t) = self.datapath.vip_totals(vip.id) {
                self.rates.sample(true, vip.id, t);
            }
            for b in &vip.backends {
                if let Ok(t) = self.datapath.backend_totals(b.id) {
                    self.rates.sample(false, b.id, t);
                }
            }
        }
        // Retries anything a failed map write left behind (a no-op when nothing differs).
        self.apply_logged();
    }

    /// Whether `vips` can be applied completely: every interface a backend names exists and
    /// there are ids for every new VIP and backend. Checked before anything is written, so a
    /// change that cannot apply fully changes nothing.
    /// `tables`: the sizing settings the change runs with (a reload's new ones).
    async fn can_apply(&self, vips: &[VipSpec], tables: &TableSizing) -> Result<(), String> {
        check_interfaces(&self.netlink, vips).await?;
        let mut trial = self.state.clone();
        let r = trial.reconcile(vips, tables, SystemTime::now());
        if !r.errors.is_empty() {
            return Err(r.errors.join("; "));
        }
        Ok(())
    }

    /// Brings the state to config + journal and applies it.
    async fn resync(&mut self) -> Vec<String> {
        let (vips, mut notes) = self.desired_vips();
        let r = self
            .state
            .reconcile(&vips, &self.config.tables, SystemTime::now());
        notes.extend(r.errors.iter().cloned());
        self.after_reconcile(r.table_slots_per_backend);
        self.place_backends().await;
        // Backends without a MAC are solicited now; the answer arrives as a neighbour event
        // and brings them into the table.
        for (vip, addr) in &r.added {
            let unresolved = self
                .state
                .backend(vip, *addr)
                .filter(|b| b.mac.is_none())
                .map(|b| b.ifindex);
            if let Some(ifindex) = unresolved
                && let Err(e) = self.netlink.solicit(ifindex, *addr).await
            {
                log::debug!("{e:#}");
            }
        }
        if let Err(e) = self.apply_now().await {
            notes.push(format!("{e:#}"));
        }
        self.save();
        notes
    }

    /// [`Daemon::reload`], logged once whatever asked for it.
    async fn reload_logged(&mut self, by: &str) -> Result<String> {
        let result = self.reload().await;
        match &result {
            Ok(msg) => {
                self.reloads.0 += 1;
                log::info!("{by}: {msg}")
            }
            Err(e) => {
                self.reloads.1 += 1;
                log::error!("{by}: reload refused, still running the previous config: {e:#}")
            }
        }
        result
    }

    /// Re-reads the config file. On any error nothing changes.
    async fn reload(&mut self) -> Result<String> {
        let new = toml_file::load(&self.config_path)?;
        let uses_vlan = new.vips.iter().any(|v| v.addr.vlan != 0);
        crate::datapath::offload::check(&new.interface, uses_vlan, new.vlan_tags)?;
        let fixed = [
            ("instance", self.config.instance != new.instance),
            ("interface", self.config.interface != new.interface),
            ("xdp_mode", self.config.xdp_mode != new.xdp_mode),
            ("vlan_tags", self.config.vlan_tags != new.vlan_tags),
            ("datapath_log", self.config.datapath_log != new.datapath_log),
            (
                "notify_timeout",
                self.config.notify_timeout != new.notify_timeout,
            ),
            ("sync", self.config.sync != new.sync),
            (
                "flow_count_interval",
                self.config.flow_count_interval != new.flow_count_interval,
            ),
            (
                "table_budget",
                self.config.tables.budget != new.tables.budget,
            ),
            ("max_vips", self.config.max_vips != new.max_vips),
            ("max_backends", self.config.max_backends != new.max_backends),
            (
                "flow_table_size",
                self.config.flow_table_size != new.flow_table_size,
            ),
            ("hash_seed", self.config.hash_seed != new.hash_seed),
            (
                "flow_idle_timeout",
                self.config.flow_idle_timeout != new.flow_idle_timeout,
            ),
            (
                "control_socket",
                self.config.control_socket != new.control_socket,
            ),
            ("state_dir", self.config.state_dir != new.state_dir),
            ("metrics", self.config.metrics != new.metrics),
        ];
        let changed: Vec<&str> = fixed.iter().filter(|(_, c)| *c).map(|(n, _)| *n).collect();
        if !changed.is_empty() {
            return Err(anyhow!(
                "{}: {} cannot change on reload (restart dsr for that); nothing was changed",
                self.config_path.display(),
                changed.join(", ")
            ));
        }
        // Only the VIPs (and their backends/checks) can differ now. Refuse what cannot apply
        // completely before anything changes.
        let (vips, _) = journal::replay(&new.vips, &self.journal, limits(&new));
        self.can_apply(&vips, &new.tables)
            .await
            .map_err(|e| anyhow!("{}: {e}; nothing was changed", self.config_path.display()))?;
        let before = self.config.vips.clone();
        self.config = new;
        // The journal keeps only what still differs from the new config.
        let (_, skipped) = self.desired_vips();
        for s in skipped {
            log::warn!("{s}; dropped from the journal");
        }
        self.journal = journal::prune(&self.config.vips, &self.journal, limits(&self.config));
        let notes = self.resync().await;
        let names = |vips: Vec<&VipSpec>| -> String {
            let list: Vec<&str> = vips.iter().map(|v| v.name.as_str()).collect();
            if list.is_empty() {
                String::new()
            } else {
                format!(" ({})", list.join(", "))
            }
        };
        let added: Vec<&VipSpec> = self
            .config
            .vips
            .iter()
            .filter(|v| !before.iter().any(|b| b.addr == v.addr))
            .collect();
        let removed: Vec<&VipSpec> = before
            .iter()
            .filter(|b| !self.config.vips.iter().any(|v| v.addr == b.addr))
            .collect();
        let changed: Vec<&VipSpec> = self
            .config
            .vips
            .iter()
            .filter(|v| before.iter().any(|b| b.addr == v.addr && b != *v))
            .collect();
        let mut msg = format!(
            "reloaded {}: {} VIPs added{}, {} removed{}, {} changed{}",
            self.config_path.display(),
            added.len(),
            names(added.clone()),
            removed.len(),
            names(removed.clone()),
            changed.len(),
            names(changed.clone())
        );
        for n in notes {
            msg += &format!("; {n}");
        }
        Ok(msg)
    }

    /// The change a request asks for (resolving its VIP name), or why it cannot be one.
    fn change_of(&self, request: &Request) -> Result<Change, String> {
        let vip = |state: &State, name: &str| {
            state
                .find_vip(name)
                .map(|v| v.spec.addr)
                .ok_or_else(|| format!("no VIP named or addressed {name:?}"))
        };
        match request {
            Request::VipAdd { vip } => {
                let (iface, tags) = (&self.config.interface, self.config.vlan_tags);
                crate::datapath::offload::check(iface, vip.addr.vlan != 0, tags)
                    .map(|()| Change::AddVip { vip: vip.clone() })
                    .map_err(|e| format!("{e:#}"))
            }
            Request::VipRemove { vip: name } => {
                vip(&self.state, name).map(|v| Change::RemoveVip { vip: v })
            }
            Request::VipDrain { vip: name } | Request::VipUndrain { vip: name } => {
                let drained = matches!(request, Request::VipDrain { .. });
                vip(&self.state, name).map(|v| Change::DrainVip { vip: v, drained })
            }
            Request::BackendAdd {
                vip: name,
                backend,
                inherit_check,
            } => vip(&self.state, name).map(|v| {
                let mut backend = backend.clone();
                if *inherit_check && backend.role != crate::spec::model::Role::Sorry {
                    backend.check = self
                        .state
                        .vip(&v)
                        .map(|x| x.spec.check.clone())
                        .unwrap_or_else(crate::spec::model::CheckSpec::none);
                }
                Change::AddBackend { vip: v, backend }
            }),
            Request::BackendRemove { vip: name, address } => {
                vip(&self.state, name).map(|v| Change::RemoveBackend {
                    vip: v,
                    address: *address,
                })
            }
            Request::BackendWeight {
                vip: name,
                address,
                weight,
            } => vip(&self.state, name).map(|v| Change::SetWeight {
                vip: v,
                address: *address,
                weight: *weight,
            }),
            Request::BackendDrain { vip: name, address } => {
                vip(&self.state, name).map(|v| Change::Drain {
                    vip: v,
                    address: *address,
                })
            }
            Request::BackendEnable { vip: name, address } => {
                vip(&self.state, name).map(|v| Change::Enable {
                    vip: v,
                    address: *address,
                })
            }
            _ => Err("not a change".into()),
        }
    }

    /// The data-path id of the VIP a request names (by name or address), if it names one;
    /// why not if it names none there is.
    fn vip_id(&self, name: Option<&str>) -> Result<Option<u32>, String> {
        match name {
            None => Ok(None),
            Some(name) => self
                .state
                .find_vip(name)
                .map(|v| Some(v.id))
                .ok_or_else(|| format!("no VIP named or addressed {name:?}")),
        }
    }

    async fn handle(&mut self, request: Request) -> Response {
        let change = match &request {
            Request::Status => {
                return Response {
                    ok: true,
                    status: Some(self.status()),
                    ..Response::default()
                };
            }
            Request::Explain { flow } => {
                return Response {
                    ok: true,
                    explained: Some(self.explain(flow)),
                    ..Response::default()
                };
            }
            Request::Flows { vip, limit } => {
                let vip_id = match self.vip_id(vip.as_deref()) {
                    Ok(id) => id,
                    Err(e) => return Response::error(e),
                };
                return Response {
                    ok: true,
                    flows: Some(self.flows(vip_id, (*limit).min(MAX_FLOWS_LISTED))),
                    ..Response::default()
                };
            }
            Request::Trace { query } => {
                if let Err(e) = query.validate() {
                    return Response::error(e);
                }
                let vip = match self.vip_id(query.vip.as_deref()) {
                    Ok(id) => id,
                    Err(e) => return Response::error(e),
                };
                return Response {
                    ok: true,
                    trace: Some(control::trace::TraceGrant {
                        vip,
                        client: query.client,
                    }),
                    ..Response::default()
                };
            }
            Request::VrrpNotified => {
                self.sync_vmacs();
                return Response::ok(String::new());
            }
            Request::Reload => {
                return match self.reload_logged("dsr reload").await {
                    Ok(m) => Response::ok(m),
                    Err(e) => Response::error(format!(
                        "reload refused, still running the previous config: {e:#}"
                    )),
                };
            }
            Request::Reset => {
                // The config alone must be able to apply completely, as any change must.
                let tables = self.config.tables;
                if let Err(e) = self.can_apply(&self.config.vips.clone(), &tables).await {
                    return Response::error(format!("reset refused, nothing was changed: {e}"));
                }
                if let Err(e) = self.save_journal(&[]) {
                    return Response::error(format!("reset refused, nothing was changed: {e:#}"));
                }
                let n = self.journal.len();
                self.journal.clear();
                let notes = self.resync().await;
                let mut msg = format!(
                    "dropped {n} runtime changes: back to {}",
                    self.config_path.display()
                );
                for note in notes {
                    msg += &format!("; {note}");
                }
                log::info!("dsr reset: {msg}");
                return Response::ok(msg);
            }
            // Answered by run() once the data path is gone.
            Request::Stop { .. } => return Response::error("stop is handled by the main loop"),
            Request::Plan { config, change } => {
                return match self.plan(config.as_deref(), change.as_deref()) {
                    Ok(report) => Response {
                        ok: true,
                        plan: Some(report),
                        ..Response::default()
                    },
                    Err(e) => Response::error(e),
                };
            }
            _ => self.change_of(&request),
        };
        let change = match change {
            Ok(c) => c,
            Err(e) => return Response::error(e),
        };
        // Try it on the current desired state first: a change that does not apply changes
        // nothing, and only a change that applies enters the journal.
        let (mut vips, _) = self.desired_vips();
        let message = match change.apply(&mut vips, limits(&self.config)) {
            Ok(m) => m,
            Err(e) => return Response::error(e),
        };
        if let Err(e) = self.can_apply(&vips, &self.config.tables).await {
            return Response::error(format!("refused, nothing was changed: {e}"));
        }
        // Enabling undoes the operator's drain only: an agent's word still holds.
        let enabled = match &change {
            Change::Enable { vip, address } => Some((*vip, *address)),
            _ => None,
        };
        let mut journal = self.journal.clone();
        journal.push(change);
        let journal = journal::prune(&self.config.vips, &journal, limits(&self.config));
        // Kept on disk before it runs: a change that could not be saved would be undone by
        // the next restart.
        if let Err(e) = self.save_journal(&journal) {
            return Response::error(format!("refused, nothing was changed: {e:#}"));
        }
        self.journal = journal;
        let notes = self.resync().await;
        let mut message = message;
        if let Some((vip, address)) = enabled
            && let Some(block) = self
                .state
                .backend(&vip, address)
                .and_then(|b| b.load.said.blocks())
        {
            message += &format!(
                "; it still takes no new flows: its {block} (until the agent says otherwise)"
            );
        }
        // The change applied and is kept; map writes that failed are retried.
        log::info!("control: {message}");
        if notes.is_empty() {
            Response::ok(message)
        } else {
            Response::ok(format!(
                "{message} (applied; being retried: {})",
                notes.join("; ")
            ))
        }
    }

    fn status(&self) -> Status {
        let hooks = self.notifier.status();
        status::build(status::Source {
            instance: &self.config.instance,
            interface: &self.config.interface,
            config_path: self.config_path.clone(),
            daemon: status::DaemonState::Running,
            pid: Some(std::process::id()),
            data_path_pinned: true,
            state: Some(&self.state),
            config_vips: &self.config.vips,
            counters: Some(&self.datapath),
            rates: Some(&self.rates),
            writes_pending: self.writer.pending,
            write_failures: self.writer.failures,
            tables_building: self.writer.waiting,
            reloads: self.reloads,
            digests: Some(&self.writer.digests),
            slots: Some(&self.writer.slots),
            configured_digests: Some(&self.writer.configured_digests),
            active_sizes: Some(
                &self
                    .state
                    .vips
                    .iter()
                    .filter_map(|v| Some((v.spec.addr, self.writer.active_size(&v.spec.addr)?)))
                    .collect(),
            ),
            announce_groups: &self.config.announce,
            state_dir: &self.config.state_dir,
            flow_count: self.flow_count.borrow().clone(),
            flow_capacity: self.config.flow_table_size,
            hooks: Some(&hooks),
            notify_default: self.config.notify.as_deref(),
            sync: self
                .sync
                .as_ref()
                .map(|s| s.lock().expect("not poisoned").clone()),
            tables: Some(self.datapath.table_usage()),
        })
    }

    fn save(&self) {
        if let Err(e) = self.save_journal(&self.journal) {
            log::error!("{e:#}");
        }
    }

    /// Saves the state with `journal` as its runtime changes.
    fn save_journal(&self, journal: &[Change]) -> Result<()> {
        let saved = Saved {
            layout_version: dsr_common::LAYOUT_VERSION,
            interface: self.config.interface.clone(),
            state: Some(self.state.clone()),
            journal: journal.to_vec(),
        };
        write_saved(&self.config, &saved)
    }

    fn log_state(&self) {
        for v in &self.state.vips {
            let (serving, _) = v.serving();
            log::info!(
                "VIP {} = {} ({} backends, new flows to: {})",
                v.spec.name,
                v.spec.addr,
                v.backends.len(),
                serving.map_or("nobody (dropping)".to_owned(), |r| r.plural().to_owned())
            );
            for b in &v.backends {
                let mac = b.mac.map_or("unresolved".to_owned(), |m| m.to_string());
                log::info!(
                    "  -> {} {} weight {} mac {} check {}",
                    b.spec.address,
                    b.spec.role,
                    b.spec.weight,
                    mac,
                    check_name(&b.spec.check.kind)
                );
            }
        }
    }

    fn log_counters(&self) {
        for v in &self.state.vips {
            if let Ok(t) = self.datapath.vip_totals(v.id) {
                log::info!(
                    "VIP {}: {} packets, {} bytes, {} flows",
                    v.spec.name,
                    t.packets,
                    t.bytes,
                    t.flows
                );
            }
            for b in &v.backends {
                if let Ok(t) = self.datapath.backend_totals(b.id) {
                    log::info!(
                        "  -> {}: {} packets, {} bytes, {} flows",
                        b.spec.address,
                        t.packets,
                        t.bytes,
                        t.flows
                    );
                }
            }
        }
        let line: Vec<String> = self
            .datapath
            .reasons()
            .iter()
            .filter(|(_, t)| t.packets > 0)
            .map(|(r, t)| format!("{}={}", r.name(), t.packets))
            .collect();
        log::info!("verdicts: {}", line.join(" "));
    }
}

/// The event for a VIP's notify hook, if it has one.
fn notify_event(
    vip: &crate::runtime::state::Vip,
    default: Option<&str>,
    state: crate::runtime::notify::State,
) -> Option<crate::runtime::notify::Event> {
    Some(crate::runtime::notify::Event {
        vip: vip.spec.name.clone(),
        addr: vip.spec.addr,
        command: crate::runtime::notify::command_of(vip.spec.notify.as_deref(), default)?
            .to_owned(),
        state,
        usable_backends: crate::runtime::announce::usable(vip) as usize,
        at: SystemTime::now(),
    })
}

/// Counts the flow table every `interval`, off the daemon's loop (a walk of a big table
/// takes a while); the latest count is in the receiver.
fn count_flows(
    counter: datapath::flowcount::FlowCounter,
    interval: Duration,
) -> tokio::sync::watch::Receiver<Option<std::sync::Arc<datapath::flowcount::FlowCount>>> {
    let (tx, rx) = tokio::sync::watch::channel(None);
    let counter = std::sync::Arc::new(counter);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tick.tick().await;
            let c = counter.clone();
            match tokio::task::spawn_blocking(move || c.count()).await {
                Ok(Ok(count)) => {
                    failing = false;
                    tx.send_replace(Some(std::sync::Arc::new(count)));
                }
                Ok(Err(e)) if !failing => {
                    failing = true;
                    log::warn!("{e:#}; the flow counts in status are stale until it works");
                }
                Ok(Err(_)) => {}
                Err(_) => return,
            }
        }
    });
    rx
}

/// Forwards the data path's own log messages (aya-log) to the daemon's log, as they come.
fn forward_datapath_log(logger: aya_log::EbpfLogger<&'static dyn log::Log>) -> Result<()> {
    // SAFETY: the logger owns its ring's fd for as long as the AsyncFd holds it, and
    // as_raw_fd always returns that one.
    let mut logger = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    }
    .map_err(|e| anyhow!("polling the data path's log: {e}"))?;
    tokio::spawn(async move {
        loop {
            let Ok(mut ready) = logger.readable_mut().await else {
                log::warn!("the data path's log cannot be read any more");
                return;
            };
            ready.get_inner_mut().flush();
            ready.clear_ready();
        }
    });
    Ok(())
}

/// `dsr check --host`: the interfaces the config names exist on this host, as `run` and a
/// reload require (a plain `dsr check` validates only the file).
pub async fn check_host(config: &Model) -> Result<(), String> {
    let netlink = Netlink::new().map_err(|e| format!("{e:#}"))?;
    netlink
        .link(&config.interface)
        .await
        .map_err(|e| format!("{e:#} (interface = {:?})", config.interface))?;
    check_interfaces(&netlink, &config.vips).await?;
    if let Some(s) = &config.sync {
        crate::runtime::sync::read_key(&s.key_file).map_err(|e| format!("{e:#}"))?;
    }
    Ok(())
}

/// Every interface a backend is configured behind must exist (a typo would otherwise send
/// the backend's frames out of the wrong interface).
async fn check_interfaces(netlink: &Netlink, vips: &[VipSpec]) -> Result<(), String> {
    let mut names: Vec<(&str, &VipSpec, IpAddr)> = Vec::new();
    for v in vips {
        for b in &v.backends {
            if let Some(name) = &b.interface
                && !names.iter().any(|(n, _, _)| n == name)
            {
                names.push((name, v, b.address));
            }
        }
    }
    for (name, vip, address) in names {
        if let Err(e) = netlink.link(name).await {
            return Err(format!(
                "VIP {}: backend {address}: {e:#} (interface = {name:?})",
                vip.name
            ));
        }
    }
    Ok(())
}

fn limits(config: &Model) -> Limits {
    Limits {
        max_vips: config.max_vips,
        max_backends: config.max_backends,
        tables: config.tables,
    }
}

pub fn check_name(kind: &CheckKind) -> String {
    match kind {
        CheckKind::None => "none".into(),
        CheckKind::Tcp => "tcp".into(),
        CheckKind::Http { path, .. } => format!("http {path}"),
    }
}

/// `dsr status` while the daemon is down: the saved state and the pinned maps' counters.
pub fn offline_status(config_path: &Path, model: &Model) -> Result<Status> {
    let saved = read_saved(model);
    let state = saved.as_ref().and_then(|s| s.state.clone());
    let pin_dir = datapath::pin_dir(&model.instance);
    let counters = datapath::PinnedCounters::open(&pin_dir).ok();
    let interface = saved
        .as_ref()
        .map_or(model.interface.clone(), |s| s.interface.clone());
    Ok(status::build(status::Source {
        instance: &model.instance,
        interface: &interface,
        config_path: config_path.to_owned(),
        daemon: status::DaemonState::Down,
        pid: None,
        data_path_pinned: counters.is_some(),
        // Without the pinned maps the saved state describes nothing that runs.
        state: state.as_ref().filter(|_| counters.is_some()),
        config_vips: &model.vips,
        counters: counters.as_ref().map(|c| c as &dyn datapath::Counters),
        rates: None,
        writes_pending: 0,
        write_failures: 0,
        tables_building: 0,
        reloads: (0, 0),
        digests: None,
        slots: None,
        configured_digests: None,
        active_sizes: None,
        announce_groups: &model.announce,
        state_dir: &model.state_dir,
        // Counted by a running daemon only.
        flow_count: None,
        flow_capacity: model.flow_table_size,
        hooks: None,
        notify_default: model.notify.as_deref(),
        sync: None,
        tables: None,
    }))
}
