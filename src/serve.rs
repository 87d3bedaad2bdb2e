//! `wasmail serve`: starts every configured service in one tokio process and shuts them down
//! gracefully.
//!
//! Each service is a future `run(.., shutdown)` that accepts until the shutdown watch flips,
//! then lets its sessions finish. On SIGTERM/SIGINT the watch flips; services get
//! `[server] shutdown_grace` to return, after which they are aborted (their connections
//! close). SIGHUP reloads the plugin directory. If any service fails, the others are shut
//! down the same way and `serve` returns the first error.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use std::collections::HashMap;

use crate::config::Config;
use crate::host::engine::World;
use crate::host::set::PluginHost;
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
}

/// Runs `serve` on a fresh multi-threaded runtime until shutdown.
pub fn run(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("wasmail")
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(serve(config))
}

/// Starts the services of `config` and waits for a signal or a service failure.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let grace = config.server.shutdown_grace;
    let config = std::sync::Arc::new(config);
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
    let shared = Shared {
        config,
        plugins,
        registry,
    };
    let mut services: JoinSet<(&'static str, anyhow::Result<()>)> = JoinSet::new();
    for (name, fut) in build_services(&shared, shutdown_rx.clone()).await? {
        services.spawn(async move { (name, fut.await) });
    }
    if services.is_empty() {
        warn!("no service is configured; waiting for a signal anyway");
    }
    info!(
        services = ?shared.config.services(),
        version = env!("CARGO_PKG_VERSION"),
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
            _ = hup.recv() => { info!("SIGHUP: reloading"); reload(&shared).await; }
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
    drain(&mut services, grace).await;
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
            shutdown.clone(),
        )
        .await
        .context("starting the milter service")?;
        services.push(("milter", service));
    }
    if let Some(lookup) = shared.config.lookup.clone() {
        let tables =
            crate::lookup::Tables::new(&lookup, shared.registry.clone(), shared.plugins.clone())
                .context("[lookup] tables")?;
        let service = crate::lookup::service::start(lookup, tables, shutdown.clone())
            .await
            .context("starting the lookup service")?;
        services.push(("lookup", service));
    }
    if let Some(policy) = shared.config.policy.clone() {
        let service = crate::policy::service::start(
            policy,
            shared.registry.clone(),
            shared.plugins.clone(),
            shutdown.clone(),
        )
        .await
        .context("starting the policy service")?;
        services.push(("policy", service));
    }
    Ok(services)
}

/// Opens the domain registry when a service that reads it is configured (the lookup and
/// policy responders), or the file has a `[registry]` section (the milter then also runs
/// registry domain chains); the schema is created or migrated here.
async fn open_registry(config: &Config) -> anyhow::Result<Option<std::sync::Arc<Live>>> {
    if config.lookup.is_none() && config.policy.is_none() && config.registry.is_none() {
        return Ok(None);
    }
    let section = config.registry_section();
    let path = section.path.clone();
    let live = tokio::task::spawn_blocking(move || Live::open(&section))
        .await
        .context("registry thread")?
        .context("opening the registry")?;
    let snap = live.snapshot();
    info!(
        path = %path.display(),
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

/// SIGHUP: reload plugin files (compiled on a blocking thread; a bad file keeps the old
/// version serving).
async fn reload(shared: &Shared) {
    let Some(host) = shared.plugins.clone() else {
        info!("SIGHUP: no plugins configured");
        return;
    };
    match tokio::task::spawn_blocking(move || host.reload()).await {
        Ok(report) => info!(
            loaded = ?report.loaded,
            unchanged = report.unchanged.len(),
            failed = ?report.failed.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            "plugins reloaded"
        ),
        Err(e) => error!(error = %e, "plugin reload thread panicked"),
    }
}
