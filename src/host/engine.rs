//! The wasmtime engine with the configuration DESIGN.md §2 prescribes, its epoch ticker,
//! and one component linker per world.
//!
//! - Cranelift, `concurrency_support(false)` (component-model-async off: a component call
//!   costs ~200 ns instead of ~1 µs), epoch interruption on every call, optional fuel.
//! - Pooling allocator with `linear_memory_keep_resident` and `pagemap_scan` when the kernel
//!   has it; if the pool cannot be reserved (small address space, `ulimit -v`), the engine
//!   falls back to on-demand allocation and says so loudly.
//! - A ticker thread advances the epoch every `[plugins] tick`; it holds only a weak
//!   reference and exits when the engine is dropped.
//! - Plugins get WASI p2 with nothing in it: no preopened directories, no environment or
//!   arguments, stdin empty, stdout/stderr discarded, all socket and DNS access denied.
//!   Clocks and random numbers stay available (Rust's `HashMap` needs random seeds).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tracing::{info, warn};
use wasmtime::component::Linker;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::bindings;
use super::config::PluginsSection;
use super::state::HostState;

/// How instances get their memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocation {
    /// Pooling allocator (the fast path).
    Pooling,
    /// On-demand mmap per instance (fallback).
    OnDemand,
}

/// The engine plus everything shared by all plugins.
pub struct PluginEngine {
    engine: Engine,
    allocation: Allocation,
    tick: Duration,
    fuel: bool,
    milter: Linker<HostState>,
    table: Linker<HostState>,
    policy: Linker<HostState>,
    hook: Linker<HostState>,
}

impl std::fmt::Debug for PluginEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginEngine")
            .field("allocation", &self.allocation)
            .field("tick", &self.tick)
            .field("fuel", &self.fuel)
            .finish_non_exhaustive()
    }
}

/// Largest linear memory any plugin may be configured with (the pool's slot size).
fn max_memory_bytes(section: &PluginsSection, plugin_max_mib: u32) -> usize {
    let mib = section.limits.memory_mib.max(plugin_max_mib).max(1) as usize;
    mib << 20
}

fn base_config(section: &PluginsSection) -> Config {
    let mut cfg = Config::new();
    cfg.strategy(wasmtime::Strategy::Cranelift)
        .epoch_interruption(true)
        .consume_fuel(section.fuel)
        .concurrency_support(false)
        .wasm_component_model(true)
        .parallel_compilation(true);
    cfg
}

fn pagemap_scan_supported() -> bool {
    // PAGEMAP_SCAN arrived in Linux 6.7.
    let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") else {
        return false;
    };
    let mut it = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    matches!((it.next(), it.next()), (Some(major), Some(minor)) if (major, minor) >= (6, 7))
}

impl PluginEngine {
    /// Builds the engine. `plugin_max_mib` is the largest `memory_mib` any configured
    /// plugin uses (the pool's memory slots are sized for it).
    pub fn new(section: &PluginsSection, plugin_max_mib: u32) -> anyhow::Result<Arc<Self>> {
        let max_memory = max_memory_bytes(section, plugin_max_mib);
        let mut pool = PoolingAllocationConfig::default();
        let instances = section.pool_instances;
        pool.total_component_instances(instances)
            .total_core_instances(instances.saturating_mul(4))
            .total_memories(instances.saturating_mul(2))
            .total_tables(instances.saturating_mul(4))
            .total_stacks(instances)
            .max_memories_per_component(4)
            .max_memory_size(max_memory)
            .linear_memory_keep_resident(2 << 20)
            .table_keep_resident(64 << 10);
        if pagemap_scan_supported() {
            pool.pagemap_scan(Enabled::Yes);
        }
        let mut cfg = base_config(section);
        cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let (engine, allocation) = match Engine::new(&cfg) {
            Ok(e) => (e, Allocation::Pooling),
            Err(e) => {
                warn!(
                    error = %format!("{e:#}"),
                    instances,
                    max_memory_mib = max_memory >> 20,
                    "the pooling allocator could not reserve its address space; falling back \
                     to on-demand allocation (slower instantiation). Lower [plugins] \
                     pool_instances or raise the address-space limit (ulimit -v)"
                );
                let mut cfg = base_config(section);
                cfg.allocation_strategy(InstanceAllocationStrategy::OnDemand);
                (
                    Engine::new(&cfg)
                        .map_err(anyhow::Error::from)
                        .context("creating the wasmtime engine")?,
                    Allocation::OnDemand,
                )
            }
        };
        info!(allocation = ?allocation, instances, max_memory_mib = max_memory >> 20, "plugin engine ready");
        spawn_ticker(&engine, section.tick);
        Ok(Arc::new(PluginEngine {
            milter: milter_linker(&engine)?,
            table: table_linker(&engine)?,
            policy: policy_linker(&engine)?,
            hook: hook_linker(&engine)?,
            engine,
            allocation,
            tick: section.tick,
            fuel: section.fuel,
        }))
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// How instances get memory.
    pub fn allocation(&self) -> Allocation {
        self.allocation
    }

    /// Whether fuel is metered.
    pub fn fuel(&self) -> bool {
        self.fuel
    }

    /// Epoch ticks for a wall-clock `deadline` (at least one).
    pub fn ticks(&self, deadline: Duration) -> u64 {
        let tick = self.tick.as_nanos().max(1);
        (deadline.as_nanos().div_ceil(tick) as u64).max(1)
    }

    /// The linker for `world`.
    pub fn linker(&self, world: World) -> &Linker<HostState> {
        match world {
            World::MilterFilter => &self.milter,
            World::Table => &self.table,
            World::Policy => &self.policy,
            World::MailHook => &self.hook,
        }
    }
}

/// The plugin worlds of `wit/plugin.wit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum World {
    /// `milter-filter`: exports `wasmail:plugin/filter`.
    MilterFilter,
    /// `table`: exports `wasmail:plugin/lookup`.
    Table,
    /// `policy`: exports `wasmail:plugin/access`.
    Policy,
    /// `mail-hook`: exports `wasmail:plugin/hook`.
    MailHook,
}

impl World {
    /// Every world.
    pub const ALL: [World; 4] = [
        World::MilterFilter,
        World::Table,
        World::Policy,
        World::MailHook,
    ];

    /// The world's WIT name.
    pub fn name(self) -> &'static str {
        match self {
            World::MilterFilter => "milter-filter",
            World::Table => "table",
            World::Policy => "policy",
            World::MailHook => "mail-hook",
        }
    }

    /// The interface the world exports, without version.
    pub fn export(self) -> &'static str {
        match self {
            World::MilterFilter => "wasmail:plugin/filter",
            World::Table => "wasmail:plugin/lookup",
            World::Policy => "wasmail:plugin/access",
            World::MailHook => "wasmail:plugin/hook",
        }
    }
}

impl std::fmt::Display for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn spawn_ticker(engine: &Engine, tick: Duration) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("wasmail-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(tick);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => return,
                }
            }
        })
        .expect("spawning the epoch ticker thread");
}

/// WASI p2 as plugins get it: everything from wasmtime-wasi with an empty context, except
/// the functions that could block the calling thread (stdio streams, `poll`, `block`),
/// which trap with a message saying why. Plugins log through the `log` capability and
/// never wait, so plugin calls can run inline on a runtime thread (wasmtime-wasi's sync
/// stream and poll implementations would otherwise try to block on tokio).
fn wasi(linker: &mut Linker<HostState>) -> anyhow::Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker)
        .map_err(anyhow::Error::from)
        .context("linking WASI")?;
    linker.allow_shadowing(true);
    let refuse = |what: &'static str| {
        move |_: wasmtime::StoreContextMut<'_, HostState>,
              _: wasmtime::component::types::ComponentFunc,
              _: &[wasmtime::component::Val],
              _: &mut [wasmtime::component::Val]|
              -> wasmtime::Result<()> { Err(wasmtime::Error::msg(what)) }
    };
    for (iface, func, what) in [
        (
            "wasi:cli/stdout@0.2.12",
            "get-stdout",
            "plugins have no stdout: use the log capability (a Rust panic message is written there too)",
        ),
        (
            "wasi:cli/stderr@0.2.12",
            "get-stderr",
            "plugins have no stderr: use the log capability (a Rust panic message is written there too)",
        ),
        (
            "wasi:cli/stdin@0.2.12",
            "get-stdin",
            "plugins have no stdin",
        ),
        (
            "wasi:io/poll@0.2.12",
            "poll",
            "plugins may not block (wasi:io/poll)",
        ),
        (
            "wasi:io/poll@0.2.12",
            "[method]pollable.block",
            "plugins may not block (sleep or wait)",
        ),
    ] {
        linker
            .instance(iface)
            .map_err(anyhow::Error::from)?
            .func_new(func, refuse(what))
            .map_err(anyhow::Error::from)
            .with_context(|| format!("restricting {iface}#{func}"))?;
    }
    linker.allow_shadowing(false);
    Ok(())
}

/// A linker with the sandboxed WASI and one world's capability imports.
fn linker_with(
    engine: &Engine,
    add_world: impl FnOnce(&mut Linker<HostState>) -> wasmtime::Result<()>,
) -> anyhow::Result<Linker<HostState>> {
    let mut l = Linker::new(engine);
    wasi(&mut l)?;
    add_world(&mut l)?;
    Ok(l)
}

type Data = wasmtime::component::HasSelf<HostState>;

fn milter_linker(engine: &Engine) -> anyhow::Result<Linker<HostState>> {
    linker_with(engine, |l| {
        bindings::milter::MilterFilter::add_to_linker::<_, Data>(l, |s| s)
    })
}

fn table_linker(engine: &Engine) -> anyhow::Result<Linker<HostState>> {
    linker_with(engine, |l| {
        bindings::table::Table::add_to_linker::<_, Data>(l, |s| s)
    })
}

fn policy_linker(engine: &Engine) -> anyhow::Result<Linker<HostState>> {
    linker_with(engine, |l| {
        bindings::policy::Policy::add_to_linker::<_, Data>(l, |s| s)
    })
}

fn hook_linker(engine: &Engine) -> anyhow::Result<Linker<HostState>> {
    linker_with(engine, |l| {
        bindings::hook::MailHook::add_to_linker::<_, Data>(l, |s| s)
    })
}
