//! Per-instance host state (`Store<HostState>`) and the capability imports.
//!
//! Every capability call first checks the plugin's grants; a call to a capability that was
//! not granted traps with [`Denied`], which the failure handling reports by name.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, error, info, trace, warn};
use wasmtime::component::ResourceTable;
use wasmtime::{StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::milter::wasmail::plugin as wit;
use super::caps::auth::{AuthInput, AuthReport, AuthResult, Authenticator, DmarcPolicy};
use super::caps::kv::{KvError, KvStore};
use super::caps::message::MessageView;
use super::caps::send::{Outgoing, SendQueue};
use super::config::{Capability, Limits};

/// The milter macros of the current connection/message, shared between the milter
/// handler (which refreshes it before every stage) and the plugin instances that read it.
pub type SharedMacros = Arc<std::sync::Mutex<wasmail_milter::Macros>>;

/// Services the capabilities use, shared by all instances.
#[derive(Debug, Clone, Default)]
pub struct Services {
    /// Store behind the `kv` capability.
    pub kv: Option<Arc<dyn KvStore>>,
    /// Authenticator behind the `auth` capability.
    pub auth: Option<Arc<Authenticator>>,
    /// Relay queue behind the `send` capability.
    pub send: Option<SendQueue>,
    /// Runtime used to drive async capability work (`auth`) from a blocking thread.
    pub runtime: Option<tokio::runtime::Handle>,
}

/// What the host knows about one plugin version, shared by its instances.
#[derive(Debug)]
pub struct PluginMeta {
    /// Configured name (`[plugin.NAME]`).
    pub name: String,
    /// First 12 hex digits of the component's SHA-256.
    pub version: String,
    /// Capabilities granted.
    pub grants: Vec<Capability>,
    /// Effective limits.
    pub limits: Limits,
    /// Settings as text, for the `config` capability.
    pub settings: Vec<(String, String)>,
}

/// A trap raised by the host on purpose: the plugin called a capability it was not
/// granted, or broke a limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The capability is not in the plugin's `grants`.
    #[error("capability `{0}` is not granted to this plugin (add it to grants)")]
    Capability(&'static str),
    /// The `message` or `auth` capability was called before the body was available.
    #[error("capability `{0}` needs body mode `whole` and is only usable at end of message")]
    NoMessage(&'static str),
}

/// Message data the `message` and `auth` capabilities work on.
#[derive(Debug, Default)]
pub struct MessageContext {
    /// Client address from CONNECT.
    pub client_ip: Option<IpAddr>,
    /// HELO name.
    pub helo: String,
    /// MAIL FROM without angle brackets.
    pub mail_from: String,
    /// The assembled message (headers + body), set at end of message in body mode `whole`.
    pub raw: Option<Arc<Vec<u8>>>,
    /// True when the body hit the plugin's cap.
    pub truncated: bool,
    view: Option<MessageView>,
}

/// The store data of one plugin instance.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    /// Memory/instance limits enforced by wasmtime.
    pub limits: StoreLimits,
    /// The plugin this instance runs.
    pub meta: Arc<PluginMeta>,
    services: Services,
    /// `kv` namespace: `<domain or *>/<plugin>`.
    namespace: String,
    /// Message data for `message` and `auth`.
    pub message: MessageContext,
    log_lines: u32,
    /// Log lines dropped because of the per-transaction cap.
    pub log_dropped: u32,
    /// Milter macros (milter plugins only).
    pub macros: Option<SharedMacros>,
}

impl std::fmt::Debug for HostState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostState")
            .field("plugin", &self.meta.name)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl HostState {
    /// State for a new instance of `meta`, for a transaction of `domain` (None = global).
    pub fn new(meta: Arc<PluginMeta>, services: Services, domain: Option<&str>) -> Self {
        let limits = StoreLimitsBuilder::new()
            .memory_size((meta.limits.memory_mib as usize) << 20)
            .instances(16)
            .tables(32)
            .memories(4)
            .table_elements(100_000)
            .trap_on_grow_failure(true)
            .build();
        let wasi = WasiCtx::builder()
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let namespace = format!("{}/{}", domain.unwrap_or("*"), meta.name);
        HostState {
            wasi,
            table: ResourceTable::new(),
            limits,
            meta,
            services,
            namespace,
            message: MessageContext::default(),
            log_lines: 0,
            log_dropped: 0,
            macros: None,
        }
    }

    /// Starts a new request on a reused instance: the per-request log cap counts afresh.
    pub fn begin_request(&mut self) {
        self.log_lines = 0;
        self.log_dropped = 0;
    }

    fn grant(&self, cap: Capability) -> wasmtime::Result<()> {
        if self.meta.grants.contains(&cap) {
            Ok(())
        } else {
            Err(wasmtime::Error::new(Denied::Capability(cap.name())))
        }
    }

    fn view(&mut self, cap: &'static str) -> wasmtime::Result<&MessageView> {
        let ctx = &mut self.message;
        if ctx.view.is_none() {
            let Some(raw) = &ctx.raw else {
                return Err(wasmtime::Error::new(Denied::NoMessage(cap)));
            };
            ctx.view = Some(MessageView::new(raw.to_vec(), ctx.truncated));
        }
        Ok(ctx.view.as_ref().expect("just set"))
    }

    fn kv(&self) -> wasmtime::Result<&Arc<dyn KvStore>> {
        self.grant(Capability::Kv)?;
        self.services
            .kv
            .as_ref()
            .ok_or_else(|| wasmtime::Error::msg("the kv store is not configured"))
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

fn truncate(msg: &str, max: usize) -> Cow<'_, str> {
    if msg.len() <= max {
        return Cow::Borrowed(msg);
    }
    let mut end = max;
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!(
        "{}… [{} bytes truncated]",
        &msg[..end],
        msg.len() - end
    ))
}

impl wit::types::Host for HostState {}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl wit::macros::Host for HostState {
    fn get(&mut self, name: String) -> wasmtime::Result<Option<String>> {
        let Some(m) = &self.macros else {
            return Ok(None);
        };
        let m = m.lock().unwrap_or_else(|e| e.into_inner());
        Ok(m.get(&name).map(lossy))
    }

    fn all(&mut self) -> wasmtime::Result<Vec<(String, String)>> {
        let Some(m) = &self.macros else {
            return Ok(Vec::new());
        };
        let m = m.lock().unwrap_or_else(|e| e.into_inner());
        Ok(m.iter().map(|(n, v)| (lossy(n), lossy(v))).collect())
    }
}

impl wit::log::Host for HostState {
    fn write(&mut self, level: wit::types::Level, message: String) -> wasmtime::Result<()> {
        self.grant(Capability::Log)?;
        if self.log_lines >= self.meta.limits.log_lines {
            self.log_dropped = self.log_dropped.saturating_add(1);
            return Ok(());
        }
        self.log_lines += 1;
        let msg = truncate(&message, self.meta.limits.log_line_bytes);
        let plugin = self.meta.name.as_str();
        let version = self.meta.version.as_str();
        use wit::types::Level;
        match level {
            Level::Trace => trace!(target: "wasmail::plugin", plugin, version, "{msg}"),
            Level::Debug => debug!(target: "wasmail::plugin", plugin, version, "{msg}"),
            Level::Info => info!(target: "wasmail::plugin", plugin, version, "{msg}"),
            Level::Warn => warn!(target: "wasmail::plugin", plugin, version, "{msg}"),
            Level::Error => error!(target: "wasmail::plugin", plugin, version, "{msg}"),
        }
        Ok(())
    }
}

impl wit::config::Host for HostState {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        self.grant(Capability::Config)?;
        Ok(self
            .meta
            .settings
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.clone()))
    }

    fn keys(&mut self) -> wasmtime::Result<Vec<String>> {
        self.grant(Capability::Config)?;
        Ok(self.meta.settings.iter().map(|(k, _)| k.clone()).collect())
    }
}

impl wit::message::Host for HostState {
    fn headers(&mut self) -> wasmtime::Result<Vec<wit::types::Header>> {
        self.grant(Capability::Message)?;
        Ok(self
            .view("message")?
            .headers()
            .into_iter()
            .map(|(name, value)| wit::types::Header { name, value })
            .collect())
    }

    fn subject(&mut self) -> wasmtime::Result<Option<String>> {
        self.grant(Capability::Message)?;
        Ok(self.view("message")?.subject())
    }

    fn from_addresses(&mut self) -> wasmtime::Result<Vec<String>> {
        self.grant(Capability::Message)?;
        Ok(self.view("message")?.from_addresses())
    }

    fn parts(&mut self) -> wasmtime::Result<Vec<wit::message::Part>> {
        self.grant(Capability::Message)?;
        Ok(self
            .view("message")?
            .parts()
            .into_iter()
            .map(|p| wit::message::Part {
                index: p.index,
                content_type: p.content_type,
                filename: p.filename,
                attachment: p.attachment,
                size: p.size,
            })
            .collect())
    }

    fn part_content(&mut self, index: u32, offset: u64, len: u32) -> wasmtime::Result<Vec<u8>> {
        self.grant(Capability::Message)?;
        // One call returns at most 1 MiB; plugins page through larger parts.
        let len = len.min(1 << 20);
        Ok(self.view("message")?.part_content(index, offset, len))
    }

    fn text_body(&mut self) -> wasmtime::Result<Option<String>> {
        self.grant(Capability::Message)?;
        Ok(self.view("message")?.text_body())
    }

    fn truncated(&mut self) -> wasmtime::Result<bool> {
        self.grant(Capability::Message)?;
        Ok(self.view("message")?.truncated())
    }
}

fn auth_result(r: AuthResult) -> wit::auth::AuthResult {
    use wit::auth::AuthResult as W;
    match r {
        AuthResult::Pass => W::Pass,
        AuthResult::Fail => W::Fail,
        AuthResult::Softfail => W::Softfail,
        AuthResult::Neutral => W::Neutral,
        AuthResult::None => W::None,
        AuthResult::Temperror => W::Temperror,
        AuthResult::Permerror => W::Permerror,
    }
}

fn report(r: AuthReport) -> wit::auth::Report {
    use wit::auth::DmarcPolicy as P;
    wit::auth::Report {
        spf: auth_result(r.spf),
        spf_domain: r.spf_domain,
        dkim: r
            .dkim
            .into_iter()
            .map(|d| wit::auth::DkimSignature {
                outcome: auth_result(d.result),
                domain: d.domain,
                selector: d.selector,
            })
            .collect(),
        dmarc: auth_result(r.dmarc),
        dmarc_domain: r.dmarc_domain,
        dmarc_policy: match r.dmarc_policy {
            DmarcPolicy::None => P::None,
            DmarcPolicy::Quarantine => P::Quarantine,
            DmarcPolicy::Reject => P::Reject,
            DmarcPolicy::Unspecified => P::Unspecified,
        },
        arc: auth_result(r.arc),
        authentication_results: r.authentication_results,
    }
}

impl HostState {
    /// The authenticator and the buffered message, for the `auth` capability.
    fn auth_and_message(&self) -> wasmtime::Result<(Arc<Authenticator>, Arc<Vec<u8>>)> {
        self.grant(Capability::Auth)?;
        let auth = self
            .services
            .auth
            .clone()
            .ok_or_else(|| wasmtime::Error::msg("the auth capability is not configured"))?;
        let raw = self
            .message
            .raw
            .clone()
            .ok_or_else(|| wasmtime::Error::new(Denied::NoMessage("auth")))?;
        Ok((auth, raw))
    }
}

impl wit::auth::Host for HostState {
    fn check(&mut self) -> wasmtime::Result<wit::auth::Report> {
        let (auth, raw) = self.auth_and_message()?;
        let runtime = self
            .services
            .runtime
            .clone()
            .ok_or_else(|| wasmtime::Error::msg("no runtime for the auth capability"))?;
        let ctx = &self.message;
        let input = AuthInput {
            client_ip: ctx.client_ip,
            helo: &ctx.helo,
            mail_from: &ctx.mail_from,
            raw: &raw,
        };
        // Chains with `auth` run on blocking threads (`[milter] plugin_threads = "auto"`),
        // where blocking on the DNS work is allowed. If an operator forced "inline", we are
        // on a runtime thread: on a worker of the multi-threaded runtime, hand the worker's
        // other tasks off first; on an event loop (single-threaded, where that is not
        // possible), wait for the check on a scoped thread.
        use tokio::runtime::{Handle, RuntimeFlavor};
        let out = match Handle::try_current().map(|h| h.runtime_flavor()) {
            Err(_) => runtime.block_on(auth.check(&input)),
            Ok(RuntimeFlavor::MultiThread) => {
                tokio::task::block_in_place(|| runtime.block_on(auth.check(&input)))
            }
            Ok(_) => std::thread::scope(|s| {
                s.spawn(|| runtime.block_on(auth.check(&input)))
                    .join()
                    .map_err(|_| wasmtime::Error::msg("the auth check thread panicked"))
            })?,
        };
        Ok(report(out))
    }

    fn dkim_sign(&mut self, key_id: String) -> wasmtime::Result<Result<String, String>> {
        let (auth, raw) = self.auth_and_message()?;
        Ok(auth.dkim_sign(&key_id, &raw))
    }
}

fn kv_error(e: KvError) -> wit::kv::KvError {
    match e {
        KvError::QuotaExceeded => wit::kv::KvError::QuotaExceeded,
        KvError::TooLarge => wit::kv::KvError::TooLarge,
        KvError::Unavailable(s) => wit::kv::KvError::Unavailable(s),
    }
}

fn ttl(seconds: Option<u32>) -> Option<Duration> {
    seconds.map(|s| Duration::from_secs(u64::from(s)))
}

impl wit::kv::Host for HostState {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        let kv = self.kv()?;
        // A store failure reads as "absent": plugins must treat kv as a cache.
        Ok(kv.get(&self.namespace, &key).unwrap_or_else(|e| {
            warn!(plugin = %self.meta.name, error = %e, "kv get failed");
            None
        }))
    }

    fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_seconds: Option<u32>,
    ) -> wasmtime::Result<Result<(), wit::kv::KvError>> {
        let kv = self.kv()?;
        Ok(kv
            .set(&self.namespace, &key, &value, ttl(ttl_seconds))
            .map_err(kv_error))
    }

    fn increment(
        &mut self,
        key: String,
        delta: i64,
        ttl_seconds: Option<u32>,
    ) -> wasmtime::Result<Result<i64, wit::kv::KvError>> {
        let kv = self.kv()?;
        Ok(kv
            .increment(&self.namespace, &key, delta, ttl(ttl_seconds))
            .map_err(kv_error))
    }

    fn delete(&mut self, key: String) -> wasmtime::Result<bool> {
        let kv = self.kv()?;
        Ok(kv.delete(&self.namespace, &key).unwrap_or(false))
    }
}

impl wit::send::Host for HostState {
    fn queue(&mut self, message: wit::send::Outgoing) -> wasmtime::Result<Result<(), String>> {
        self.grant(Capability::Send)?;
        let Some(queue) = &self.services.send else {
            return Ok(Err("no [plugins.send] relay is configured".into()));
        };
        Ok(queue.queue(
            &self.meta.name,
            Outgoing {
                sender: message.sender,
                recipients: message.recipients,
                raw: message.raw,
            },
        ))
    }
}

impl super::bindings::milter::wasmail::plugin::milter_types::Host for HostState {}

impl Services {
    /// Starts the services the configured plugins were granted: the kv store when any
    /// plugin has `kv`, the authenticator for `auth`, the relay queue for `send`.
    pub fn start(
        section: &super::config::PluginsSection,
        entries: &std::collections::BTreeMap<String, super::config::PluginEntry>,
        runtime: &tokio::runtime::Handle,
    ) -> anyhow::Result<Services> {
        use anyhow::Context as _;
        let granted = |c: Capability| entries.values().any(|e| e.grants.contains(&c));
        let kv: Option<Arc<dyn KvStore>> = if granted(Capability::Kv) {
            Some(Arc::new(
                super::caps::kv::SqliteKv::open(&section.kv).context("opening the kv store")?,
            ))
        } else {
            None
        };
        let auth = if granted(Capability::Auth) {
            Some(Arc::new(
                Authenticator::new(&section.auth).context("setting up the auth capability")?,
            ))
        } else {
            None
        };
        let send = match &section.send {
            Some(cfg) if granted(Capability::Send) => {
                Some(SendQueue::start(cfg, runtime).context("starting the send queue")?)
            }
            _ => None,
        };
        Ok(Services {
            kv,
            auth,
            send,
            runtime: Some(runtime.clone()),
        })
    }
}
