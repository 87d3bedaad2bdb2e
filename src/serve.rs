//! `wasmail serve`: starts every configured service in one tokio process and shuts them down
//! gracefully.
//!
//! Each service is a future `run(.., shutdown)` that accepts until the shutdown watch flips,
//! then lets its sessions finish. On SIGTERM/SIGINT the watch flips; services get
//! `[server] shutdown_grace` to return, after which they are aborted (their connections
//! close). SIGHUP reloads the plugin directory. If any service fails, the others are shut
//! down the same way and `serve` returns the first error.
//!
//! With `[fastcontainer]`, the worker manager is created first (root and usable cgroups
//! are checked at start) and shared with the services through [`Shared`]; its reaper runs
//! beside the services and, once they have drained, stops every worker before `serve`
//! returns. With `[admin]`, the admin API runs as the `admin` service; with `[dovecot]`,
//! the Dovecot delegation endpoints run as the `dovecot` service. The `[proxy]` and
//! `[lmtp]` fronts get a [`Router`] over the manager: they reach a domain's worker for
//! its sessions. With `[cluster]`, the placement ([`Cluster`]) starts after the manager
//! (membership, cache sync and release sweep in the background), the host-to-host relay
//! runs as the `relay` service, the router forwards sessions of domains owned elsewhere,
//! and after the workers have stopped the host leaves the cluster (its lease is revoked).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{error, info, warn};
use wasmail_milter::net::EventLoops;

use std::collections::HashMap;

use crate::cluster::tls::RelayTls;
use crate::cluster::{Cluster, Router};
use crate::config::Config;
use crate::fastcontainer::manager::{Manager, Settings};
use crate::fastcontainer::spawn::{LinuxSpawner, LinuxSpawnerConfig, default_init_exe};
use crate::host::engine::World;
use crate::host::set::{PluginHost, ReloadReport};
use crate::host::state::Services;
use crate::registry::Live;

/// A service future: resolves when the service has stopped.
pub type ServiceFuture = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// Shared handles built once at start-up and handed to the services that need them.
#[derive(Debug, Clone)]
pub struct Shared {
    /// The configuration `serve` was started with.
    pub config: std::sync::Arc<Config>,
    /// The plugin host, when any `[plugin.NAME]` is configured.
    pub plugins: Option<std::sync::Arc<PluginHost>>,
    /// The live domain registry, when a service that reads it is configured.
    pub registry: Option<std::sync::Arc<Live>>,
    /// The FastContainer worker manager, when `[fastcontainer]` is configured.
    pub fastcontainer: Option<Manager>,
    /// The placement, when `[cluster]` is configured.
    pub cluster: Option<Cluster>,
    /// Reaches a domain's worker socket, here or on its owner host.
    pub router: Router,
    /// The relay's TLS, when `[cluster.tls]` is configured.
    pub relay_tls: Option<RelayTls>,
    /// The event loops the milter, lookup and policy connections run on (`[server]
    /// event_loops`, resolved for this host); `None` runs them on the runtime's workers.
    pub event_loops: Option<EventLoops>,
}

/// How often orphans reparented to `serve` (the child subreaper) are collected.
const ORPHAN_REAP_INTERVAL: Duration = Duration::from_secs(5);

/// Runs `serve` on a fresh multi-threaded runtime until shutdown.
pub fn run(config: Config) -> anyhow::Result<()> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all().thread_name("wasmail");
    if config.server.worker_threads > 0 {
        builder.worker_threads(config.server.worker_threads);
    }
    let runtime = builder.build().context("starting the tokio runtime")?;
    runtime.block_on(serve(config))
}

/// The event loops for the milter, lookup and policy connections (`[server]
/// event_loops`), when one of those services is configured.
fn start_event_loops(config: &Config) -> anyhow::Result<Option<EventLoops>> {
    if config.milter.is_none() && config.lookup.is_none() && config.policy.is_none() {
        return Ok(None);
    }
    let n = config.server.event_loops.resolve_here();
    if n == 0 {
        return Ok(None);
    }
    let loops = EventLoops::start(n, "wasmail-loop").context("starting the event loops")?;
    Ok(Some(loops))
}

/// Starts the services of `config` and waits for a signal or a service failure.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let grace = config.server.shutdown_grace;
    let config = std::sync::Arc::new(config);
    let event_loops = start_event_loops(&config)?;
    let plugins = start_plugins(&config).await?;
    let _watch = match &plugins {
        Some(host) if config.plugins.watch => Some(host.watch()?),
        _ => None,
    };
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let registry = open_registry(&config).await?;
    if let Some(live) = &registry {
        live.spawn_refresher(config.registry_section().refresh, shutdown_rx.clone());
    }
    let fastcontainer = match &config.fastcontainer {
        Some(_) => Some(start_fastcontainer(&config, registry.clone())?),
        None => None,
    };
    // The reaper stops every worker at shutdown, but only after the services have
    // drained (sessions end before their workers), so it has a shutdown watch of its own.
    let (reaper_stop_tx, reaper_stop_rx) = watch::channel(false);
    let reaper = fastcontainer.as_ref().map(|(manager, _)| {
        let manager = manager.clone();
        tokio::spawn(async move { manager.run_reaper(reaper_stop_rx).await })
    });
    if let Some((_, spawner)) = &fastcontainer {
        spawn_orphan_reaper(spawner.clone(), shutdown_rx.clone());
    }
    let manager = fastcontainer.map(|(manager, _)| manager);
    let (cluster, relay_tls) = match start_cluster(&config, manager.clone()).await {
        Ok(c) => c,
        Err(e) => {
            stop_workers(&reaper_stop_tx, reaper).await;
            return Err(e);
        }
    };
    let shared = Shared {
        config,
        plugins,
        registry,
        router: Router::new(manager.clone(), cluster.clone(), relay_tls.clone()),
        fastcontainer: manager,
        cluster,
        relay_tls,
        event_loops,
    };
    let mut services: JoinSet<(&'static str, anyhow::Result<()>)> = JoinSet::new();
    let built = match build_services(&shared, shutdown_rx.clone()).await {
        Ok(built) => built,
        Err(e) => {
            stop_workers(&reaper_stop_tx, reaper).await;
            leave_cluster(&shared).await;
            return Err(e);
        }
    };
    for (name, fut) in built {
        services.spawn(async move { (name, fut.await) });
    }
    if services.is_empty() {
        warn!("no service is configured; waiting for a signal anyway");
    }
    info!(
        services = ?shared.config.services(),
        version = env!("CARGO_PKG_VERSION"),
        workers = tokio::runtime::Handle::current().metrics().num_workers(),
        event_loops = shared.event_loops.as_ref().map_or(0, EventLoops::len),
        "wasmail serving"
    );

    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    let mut first_error = None;
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { info!("SIGINT: shutting down"); break; }
            _ = hup.recv() => { info!("SIGHUP: reloading"); reload_plugins(&shared).await; }
            Some(done) = services.join_next(), if !services.is_empty() => {
                match done {
                    Ok((name, Ok(()))) => warn!(service = name, "service stopped on its own"),
                    Ok((name, Err(e))) => {
                        error!(service = name, error = %format!("{e:#}"), "service failed");
                        first_error = Some(e.context(format!("service {name}")));
                        break;
                    }
                    Err(e) => {
                        error!(error = %e, "service task panicked");
                        first_error = Some(anyhow::anyhow!("service task panicked: {e}"));
                        break;
                    }
                }
            }
        }
    }
    let _ = shutdown_tx.send(true);
    if let Some(c) = &shared.cluster {
        c.begin_shutdown();
    }
    drain(&mut services, grace).await;
    stop_workers(&reaper_stop_tx, reaper).await;
    leave_cluster(&shared).await;
    info!("wasmail stopped");
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

async fn drain(services: &mut JoinSet<(&'static str, anyhow::Result<()>)>, grace: Duration) {
    let wait = async {
        while let Some(done) = services.join_next().await {
            if let Ok((name, Err(e))) = done {
                warn!(service = name, error = %format!("{e:#}"), "service ended with an error during shutdown");
            }
        }
    };
    if tokio::time::timeout(grace, wait).await.is_err() {
        warn!(
            grace_secs = grace.as_secs_f64(),
            "shutdown grace elapsed; closing remaining sessions"
        );
        services.abort_all();
        while services.join_next().await.is_some() {}
    }
}

/// Lets the FastContainer reaper stop every worker and waits for it (never aborted: a
/// worker left running would outlive `serve`).
async fn stop_workers(stop: &watch::Sender<bool>, reaper: Option<tokio::task::JoinHandle<()>>) {
    let Some(reaper) = reaper else {
        return;
    };
    let _ = stop.send(true);
    if let Err(e) = reaper.await {
        error!(error = %e, "fastcontainer reaper panicked");
    }
}

/// The `[fastcontainer]` manager over the Linux spawner, with specs from the section and
/// the registry (when one is open). Refuses to start without root or usable cgroups.
fn start_fastcontainer(
    config: &Config,
    registry: Option<std::sync::Arc<Live>>,
) -> anyhow::Result<(Manager, std::sync::Arc<LinuxSpawner>)> {
    let section = config
        .fastcontainer
        .clone()
        .context("no [fastcontainer] section")?;
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!(
            "[fastcontainer] needs root (namespaces, cgroups, bind mounts): run `wasmail serve` \
             as root or remove the section"
        );
    }
    if section.favordynmods {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .context("[fastcontainer] favordynmods: reading /proc/self/mountinfo")?;
        let at = crate::fastcontainer::cgroup::favor_dynmods(&mountinfo)
            .context("[fastcontainer] favordynmods")?;
        info!(mount = %at.display(), "cgroups switched to favordynmods");
    }
    // The spawner's (empty) root mount points live next to the run directories.
    let roots_dir = section.run_root.parent().map_or_else(
        || LinuxSpawnerConfig::default().roots_dir,
        |parent| parent.join("roots"),
    );
    std::fs::create_dir_all(&section.run_root).with_context(|| {
        format!(
            "[fastcontainer] run_root: creating {}",
            section.run_root.display()
        )
    })?;
    let spawner = LinuxSpawner::new(LinuxSpawnerConfig {
        init_exe: default_init_exe(),
        cgroup_parent: section.cgroup_root.clone().into(),
        roots_dir,
        subreaper: true,
        template_roots: section.template_roots,
    })
    .context("[fastcontainer]: cannot set up worker cgroups (is cgroupfs mounted and writable?)")?;
    let spawner = std::sync::Arc::new(spawner);
    let settings = Settings::from_section(&section);
    let specs = move |domain: &str| {
        let snapshot = registry.as_ref().map(|live| live.snapshot());
        section.spec_with_registry(domain, snapshot.as_deref())
    };
    let manager = Manager::new(spawner.clone(), specs, settings);
    info!(
        cgroups = ?spawner.cgroups().version(),
        init = %default_init_exe().display(),
        "fastcontainer manager ready"
    );
    Ok((manager, spawner))
}

/// With `[cluster]`: connects to etcd, starts membership, sync and sweep, and waits a
/// little for the first registration (serving starts anyway when etcd is slow: sessions
/// of unknown domains tempfail until it answers).
async fn start_cluster(
    config: &Config,
    manager: Option<Manager>,
) -> anyhow::Result<(Option<Cluster>, Option<RelayTls>)> {
    let Some(section) = config.cluster.clone() else {
        return Ok((None, None));
    };
    let tls = match &section.tls {
        Some(t) => Some(RelayTls::load(t).context("[cluster.tls]")?),
        None => None,
    };
    let wait = section.etcd_timeout * 2;
    let cluster = Cluster::new(section, manager)
        .await
        .context("[cluster] etcd client")?;
    cluster.start();
    if cluster.ready(wait).await {
        info!(host = %cluster.host(), "cluster: member");
    } else {
        warn!(host = %cluster.host(), "cluster: not registered yet (etcd unreachable?); retrying in the background");
    }
    Ok((Some(cluster), tls))
}

/// Leaves the cluster (revokes this host's lease), if it is a member.
async fn leave_cluster(shared: &Shared) {
    if let Some(c) = &shared.cluster {
        c.leave().await;
    }
}

/// Collects orphans reparented to this process (the spawner made it a child subreaper)
/// until shutdown.
fn spawn_orphan_reaper(spawner: std::sync::Arc<LinuxSpawner>, mut shutdown: watch::Receiver<bool>) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = crate::listen::flipped(&mut shutdown) => break,
                () = tokio::time::sleep(ORPHAN_REAP_INTERVAL) => {}
            }
            let s = spawner.clone();
            if let Ok(n) = tokio::task::spawn_blocking(move || s.reap_orphans()).await
                && n > 0
            {
                info!(reaped = n, "collected orphaned processes");
            }
        }
    });
}

async fn build_services(
    shared: &Shared,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<Vec<(&'static str, ServiceFuture)>> {
    let mut services: Vec<(&'static str, ServiceFuture)> = Vec::new();
    if let Some(milter) = shared.config.milter.clone() {
        let service = crate::milter_service::service::start(
            milter,
            shared.plugins.clone(),
            shared.registry.clone(),
            shared.event_loops.clone(),
            shutdown.clone(),
        )
        .await
        .context("starting the milter service")?;
        services.push(("milter", service));
    }
    if let Some(lookup) = shared.config.lookup.clone() {
        let tables =
            crate::lookup::Tables::new(&lookup, shared.registry.clone(), shared.plugins.clone())
                .context("[lookup] tables")?
                .with_cluster(shared.cluster.clone());
        let service = crate::lookup::service::start(
            lookup,
            tables,
            shared.event_loops.clone(),
            shutdown.clone(),
        )
        .await
        .context("starting the lookup service")?;
        services.push(("lookup", service));
    }
    if let Some(policy) = shared.config.policy.clone() {
        let service = crate::policy::service::start(
            policy,
            shared.registry.clone(),
            shared.plugins.clone(),
            shared.event_loops.clone(),
            shutdown.clone(),
        )
        .await
        .context("starting the policy service")?;
        services.push(("policy", service));
    }
    if let Some(proxy) = shared.config.proxy.clone() {
        let fronts = crate::proxy::service::start(proxy, shared, shutdown.clone())
            .await
            .context("starting the IMAP/POP3 fronts")?;
        services.extend(fronts);
    }
    if shared.config.dovecot.is_some() {
        let service = crate::dovecot::start(shared, shutdown.clone())
            .await
            .context("starting the dovecot endpoints")?;
        services.push(("dovecot", service));
    }
    if let Some(lmtp) = shared.config.lmtp.clone() {
        let service = crate::lmtp::service::start(
            lmtp,
            shared.registry.clone(),
            shared.plugins.clone(),
            shared.router.clone(),
            shutdown.clone(),
        )
        .await
        .context("starting the LMTP front")?;
        services.push(("lmtp", service));
    }
    if let Some(cluster) = &shared.cluster {
        let service = crate::cluster::relay::start(
            cluster.clone(),
            shared.fastcontainer.clone(),
            shared.relay_tls.clone(),
            shutdown.clone(),
        )
        .await
        .context("starting the cluster relay")?;
        services.push(("relay", service));
    }
    if shared.config.admin.is_some() {
        let service = crate::admin::server::start(shared, shutdown.clone())
            .await
            .context("starting the admin API")?;
        services.push(("admin", service));
    }
    Ok(services)
}

/// Opens the domain registry when a service that reads it is configured (the lookup and
/// policy responders, the IMAP/POP3 and LMTP fronts, the Dovecot endpoints), or the file has a
/// `[registry]` section (the milter then also runs registry domain chains); the schema is
/// created or migrated here.
async fn open_registry(config: &Config) -> anyhow::Result<Option<std::sync::Arc<Live>>> {
    if config.lookup.is_none()
        && config.policy.is_none()
        && config.proxy.is_none()
        && config.dovecot.is_none()
        && config.lmtp.is_none()
        && config.registry.is_none()
    {
        return Ok(None);
    }
    let section = config.registry_section();
    let live = tokio::task::spawn_blocking(move || Live::open(&section))
        .await
        .context("registry thread")?
        .context("opening the registry")?;
    let snap = live.snapshot();
    info!(
        registry = %live.registry().location(),
        domains = snap.domains.len(),
        mailboxes = snap.mailboxes.len(),
        aliases = snap.aliases.len(),
        "registry open"
    );
    Ok(Some(live))
}

/// Builds the capability services and loads every configured plugin (off the runtime's
/// worker threads: compiling is CPU-bound).
async fn start_plugins(config: &Config) -> anyhow::Result<Option<std::sync::Arc<PluginHost>>> {
    if config.plugin.is_empty() {
        return Ok(None);
    }
    let section = config.plugins.clone();
    let entries = config.plugin.clone();
    let mut expect = HashMap::new();
    if let Some(m) = &config.milter {
        for name in m
            .chain
            .iter()
            .chain(m.domains.values().flat_map(|d| d.chain.iter()))
        {
            expect.insert(name.clone(), World::MilterFilter);
        }
    }
    if let Some(l) = &config.lookup {
        for name in l.plugins() {
            expect.insert(name.clone(), World::Table);
        }
    }
    if let Some(p) = &config.policy {
        for name in &p.chain {
            expect.insert(name.clone(), World::Policy);
        }
    }
    if let Some(p) = &config.proxy {
        for name in &p.hooks {
            expect.insert(name.clone(), World::MailHook);
        }
    }
    if let Some(d) = &config.dovecot {
        for name in &d.hooks {
            expect.insert(name.clone(), World::MailHook);
        }
    }
    if let Some(l) = &config.lmtp {
        for name in &l.hooks {
            expect.insert(name.clone(), World::MailHook);
        }
    }
    let runtime = tokio::runtime::Handle::current();
    let host = tokio::task::spawn_blocking(move || {
        let services = Services::start(&section, &entries, &runtime)?;
        PluginHost::start(&section, &entries, expect, services)
    })
    .await
    .context("plugin loading thread")?
    .context("loading plugins")?;
    info!(plugins = ?host.names(), "plugins loaded");
    Ok(Some(host))
}

/// SIGHUP and the admin API's `/plugins/reload`: reload plugin files (compiled on a
/// blocking thread; a bad file keeps the old version serving). None when no plugins are
/// configured or the reload thread panicked.
pub async fn reload_plugins(shared: &Shared) -> Option<ReloadReport> {
    let Some(host) = shared.plugins.clone() else {
        info!("reload: no plugins configured");
        return None;
    };
    match tokio::task::spawn_blocking(move || host.reload()).await {
        Ok(report) => {
            info!(
                loaded = ?report.loaded,
                unchanged = report.unchanged.len(),
                failed = ?report.failed.iter().map(|(n, _)| n).collect::<Vec<_>>(),
                "plugins reloaded"
            );
            Some(report)
        }
        Err(e) => {
            error!(error = %e, "plugin reload thread panicked");
            None
        }
    }
}
