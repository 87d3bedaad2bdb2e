//! The milter adapter: a `milter-filter` plugin as a [`StagePlugin`] of the chain runner.
//!
//! Lifetime: one store + instance per SMTP transaction. The instance is created at the
//! first event the plugin wants (CONNECT for the first message of a connection, MAIL FROM
//! for later ones) and dropped at end of message, abort, or after any failure. For the
//! second and later messages of a connection the host replays CONNECT and HELO into the
//! new instance first (their verdicts were already given, so replayed verdicts are
//! ignored). The plugin version is pinned when the instance is created, so a hot reload
//! never changes a message in flight.
//!
//! Reuse (`[plugin.NAME] instance_reuse` above 1): instead of being dropped, an instance
//! that served a whole transaction without any failure goes to the host's [`FilterPool`],
//! and a later transaction of the same plugin version and the same chain (global, or the
//! same domain: never another tenant's) takes it instead of instantiating. Every
//! transaction of such an instance ends with a call of `on-end-of-message` or `on-abort`
//! (the SDK resets its `instance_state!` values there), and a reused instance is fed the
//! same CONNECT/HELO replay as a fresh one, so a plugin written with the SDK cannot tell
//! the difference.
//!
//! Body: mode `chunks` passes every chunk; mode `whole(cap)` buffers up to `cap` bytes and
//! calls `on-body-chunk` once at end of message, and makes the message available to the
//! `message` and `auth` capabilities.
//!
//! Failures (trap, deadline, budget, memory, ungranted capability, oversized answer) apply
//! the plugin's `on_error`: `continue` skips the plugin for the rest of the transaction,
//! `tempfail` answers 451 4.3.0 at this and every later stage of the transaction. Every
//! failure is logged with plugin, version, stage and kind, and counted; the breaker may
//! then skip the version for a while.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::warn;
use wasmtime::Store;

use super::bindings::milter::MilterFilter;
use super::bindings::milter::wasmail::plugin::milter_types as wt;
use super::bindings::milter::wasmail::plugin::types as wtypes;
use super::breaker::FailureKind;
use super::caps::message::assemble;
use super::config::OnError;
use super::plugin::{BodyMode, LoadedPlugin, Pre, new_store, refuel};
use super::pool::{InstancePool, Pooled};
use super::set::PluginHost;
use super::state::{HostState, SharedMacros};
use crate::milter_service::chain::{
    DomainChains, Edit, Event, Reply, Stage, StagePlugin, StageResult, Verdict,
};

struct Live {
    store: Store<HostState>,
    bindings: MilterFilter,
    /// Wall-clock time spent in calls of this transaction.
    spent: Duration,
    /// Whether `on-end-of-message` was called in this transaction.
    eom_called: bool,
    /// Transactions this instance started, this one included.
    uses: u32,
}

/// Idle milter-filter instances of plugins with `instance_reuse` above 1, shared by every
/// connection, kept per plugin version and per chain (the global chain or one domain's).
pub type FilterPool = InstancePool<MilterFilter>;

/// One milter plugin inside one connection's chain.
pub struct WasmFilter {
    host: Arc<PluginHost>,
    name: String,
    /// The chain's domain (None = the global chain). With `name`, where a reusable
    /// instance waits between transactions.
    domain: Option<String>,
    /// The version of the current transaction (or the newest, between transactions).
    plugin: Arc<LoadedPlugin>,
    live: Option<Live>,
    /// Failed in this transaction: the failure policy answers the remaining stages.
    failed: bool,
    connect: Option<wt::Client>,
    helo: Option<String>,
    client_ip: Option<IpAddr>,
    mail_from: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    truncated: bool,
    macros: Option<SharedMacros>,
}

impl std::fmt::Debug for WasmFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmFilter")
            .field("name", &self.name)
            .field("version", &self.plugin.meta.version)
            .finish_non_exhaustive()
    }
}

fn tempfail_reply(plugin: &str) -> Verdict {
    Verdict::Tempfail(Reply {
        code: Some(451),
        enhanced: Some("4.3.0".into()),
        text: Some(format!(
            "Temporary failure in mail policy plugin {plugin}; try again later"
        )),
    })
}

fn stage_name(s: Stage) -> &'static str {
    match s {
        Stage::Connect => "connect",
        Stage::Helo => "helo",
        Stage::MailFrom => "mail-from",
        Stage::Rcpt => "rcpt",
        Stage::Headers => "headers",
        Stage::EndOfHeaders => "end-of-headers",
        Stage::Body => "body",
        Stage::EndOfMessage => "end-of-message",
    }
}

fn strip_brackets(s: &str) -> String {
    s.trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_string()
}

fn reply(r: wt::Reply) -> Reply {
    Reply {
        code: r.code,
        enhanced: r.enhanced,
        text: r.text,
    }
}

fn verdict(v: wt::Verdict) -> Verdict {
    match v {
        wt::Verdict::Continue => Verdict::Continue,
        wt::Verdict::Accept => Verdict::Accept,
        wt::Verdict::Reject(r) => Verdict::Reject(reply(r)),
        wt::Verdict::Tempfail(r) => Verdict::Tempfail(reply(r)),
        wt::Verdict::Discard => Verdict::Discard,
        wt::Verdict::Quarantine(reason) => Verdict::Quarantine(reason),
    }
}

fn valid_header_name(n: &str) -> bool {
    !n.is_empty() && n.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

/// Converts and checks a plugin's edits against its limits.
fn edits(list: Vec<wt::Edit>, plugin: &LoadedPlugin) -> Result<Vec<Edit>, String> {
    let l = &plugin.meta.limits;
    if list.len() > l.max_edits {
        return Err(format!("{} edits, limit {}", list.len(), l.max_edits));
    }
    let hdr = |name: &str, value: &str| -> Result<(), String> {
        if !valid_header_name(name) {
            return Err(format!("invalid header name {name:?}"));
        }
        if value.len() > l.max_header_bytes {
            return Err(format!(
                "header {name} value of {} bytes, limit {}",
                value.len(),
                l.max_header_bytes
            ));
        }
        if value.contains('\0') {
            return Err(format!("header {name} value contains NUL"));
        }
        Ok(())
    };
    let arg = |what: &str, s: &str| -> Result<(), String> {
        if s.len() > l.max_header_bytes || s.contains(['\0', '\r', '\n']) {
            return Err(format!("{what} is too long or contains NUL/CR/LF"));
        }
        Ok(())
    };
    list.into_iter()
        .map(|e| {
            Ok(match e {
                wt::Edit::AddHeader(h) => {
                    hdr(&h.name, &h.value)?;
                    Edit::AddHeader {
                        name: h.name,
                        value: h.value,
                    }
                }
                wt::Edit::InsertHeader((index, h)) => {
                    hdr(&h.name, &h.value)?;
                    Edit::InsertHeader {
                        index,
                        name: h.name,
                        value: h.value,
                    }
                }
                wt::Edit::ChangeHeader((index, h)) => {
                    hdr(&h.name, &h.value)?;
                    Edit::ChangeHeader {
                        name: h.name,
                        index,
                        value: h.value,
                    }
                }
                wt::Edit::DeleteHeader((index, name)) => {
                    hdr(&name, "")?;
                    Edit::DeleteHeader { name, index }
                }
                wt::Edit::AddRecipient((address, args)) => {
                    arg("recipient", &address)?;
                    arg("ESMTP arguments", &args)?;
                    Edit::AddRcpt { address, args }
                }
                wt::Edit::DeleteRecipient(address) => {
                    arg("recipient", &address)?;
                    Edit::DeleteRcpt { address }
                }
                wt::Edit::ChangeSender((address, args)) => {
                    arg("sender", &address)?;
                    arg("ESMTP arguments", &args)?;
                    Edit::ChangeFrom { address, args }
                }
                wt::Edit::ReplaceBody(body) => {
                    if body.len() > l.max_body_bytes {
                        return Err(format!(
                            "replacement body of {} bytes, limit {}",
                            body.len(),
                            l.max_body_bytes
                        ));
                    }
                    Edit::ReplaceBody(body)
                }
            })
        })
        .collect()
}

/// What a call produced.
enum Answer {
    Verdict(wt::Verdict),
    Outcome(wt::Outcome),
}

impl WasmFilter {
    /// The adapter for plugin `name` (which must be loaded and a milter-filter plugin),
    /// for the global chain (`domain` None) or a domain's chain.
    pub fn new(host: Arc<PluginHost>, name: &str, domain: Option<&str>) -> Option<WasmFilter> {
        let plugin = host.get(name)?;
        plugin.milter_description()?;
        Some(WasmFilter {
            host,
            name: name.to_string(),
            domain: domain.map(str::to_string),
            plugin,
            live: None,
            failed: false,
            connect: None,
            helo: None,
            client_ip: None,
            mail_from: String::new(),
            headers: Vec::new(),
            body: Vec::new(),
            truncated: false,
            macros: None,
        })
    }

    /// Gives the plugin's instances read access to the connection's milter macros.
    pub fn with_macros(mut self, macros: SharedMacros) -> WasmFilter {
        self.macros = Some(macros);
        self
    }

    fn body_mode(&self) -> BodyMode {
        self.plugin
            .milter_description()
            .map_or(BodyMode::None, |(_, b)| b)
    }

    fn subscribed(&self, stage: Stage) -> bool {
        self.plugin
            .milter_description()
            .is_some_and(|(s, _)| s.contains(&stage))
    }

    fn on_failure(&mut self, stage: Stage, kind: FailureKind) -> StageResult {
        self.plugin.record_failure(stage_name(stage), &kind);
        self.live = None;
        self.failed = true;
        self.policy_result()
    }

    fn policy_result(&self) -> StageResult {
        match self.plugin.on_error {
            OnError::Continue => StageResult::cont(),
            OnError::Tempfail => tempfail_reply(&self.name).into(),
        }
    }

    /// Creates the instance for a new transaction, pinning the newest version and
    /// replaying the connection-level events.
    fn ensure_live(&mut self, stage: Stage) -> Result<(), StageResult> {
        if self.live.is_some() {
            return Ok(());
        }
        if let Some(newest) = self.host.get(&self.name)
            && newest.milter_description().is_some()
        {
            self.plugin = newest;
        }
        if !self.plugin.breaker.allows_now() {
            return Err(self.on_failure(stage, FailureKind::BreakerOpen));
        }
        let Pre::Milter(pre) = &self.plugin.pre else {
            return Err(self.on_failure(
                stage,
                FailureKind::Instantiate("not a milter plugin".into()),
            ));
        };
        let reused = if self.plugin.instance_reuse > 1 {
            self.host
                .filter_pool()
                .take(&self.plugin, &self.name, self.domain.as_deref())
        } else {
            None
        };
        if let Some(idle) = reused {
            let mut store = idle.store;
            let state = store.data_mut();
            state.begin_request();
            state.message = Default::default();
            state.macros = self.macros.clone();
            refuel(self.host.engine(), &mut store, &self.plugin.meta);
            self.plugin
                .counters
                .reused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return self.go_live(stage, store, idle.bindings, Duration::ZERO, idle.uses + 1);
        }
        let mut store = new_store(
            self.host.engine(),
            &self.plugin.meta,
            self.host.services().clone(),
            self.domain.as_deref(),
        );
        store.data_mut().macros = self.macros.clone();
        let started = Instant::now();
        let bindings = match pre.instantiate(&mut store) {
            Ok(b) => b,
            Err(e) => {
                let kind = match FailureKind::classify(&e) {
                    k @ (FailureKind::Timeout | FailureKind::Memory | FailureKind::OutOfFuel) => k,
                    _ => FailureKind::Instantiate(format!("{e:#}")),
                };
                return Err(self.on_failure(stage, kind));
            }
        };
        self.plugin
            .counters
            .instances
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.go_live(stage, store, bindings, started.elapsed(), 1)
    }

    /// Makes `store` the transaction's instance (its `uses`-th transaction, `spent` already
    /// used of its budget) and replays the connection-level events into it.
    fn go_live(
        &mut self,
        stage: Stage,
        store: Store<HostState>,
        bindings: MilterFilter,
        spent: Duration,
        uses: u32,
    ) -> Result<(), StageResult> {
        self.live = Some(Live {
            store,
            bindings,
            spent,
            eom_called: false,
            uses,
        });
        self.replay(stage)
    }

    /// Replays the connection-level events into a new (or reused) instance, unless the
    /// transaction starts at CONNECT itself.
    fn replay(&mut self, stage: Stage) -> Result<(), StageResult> {
        if stage != Stage::Connect {
            if self.subscribed(Stage::Connect)
                && let Some(c) = self.connect.clone()
            {
                self.invoke(Stage::Connect, |b, s| {
                    b.wasmail_plugin_filter()
                        .call_on_connect(s, &c)
                        .map(Answer::Verdict)
                })?;
            }
            if stage != Stage::Helo
                && self.subscribed(Stage::Helo)
                && let Some(h) = self.helo.clone()
            {
                self.invoke(Stage::Helo, |b, s| {
                    b.wasmail_plugin_filter()
                        .call_on_helo(s, &h)
                        .map(Answer::Verdict)
                })?;
            }
        }
        Ok(())
    }

    /// Runs one call with the per-call deadline and the remaining transaction budget.
    fn invoke(
        &mut self,
        stage: Stage,
        f: impl FnOnce(&MilterFilter, &mut Store<HostState>) -> wasmtime::Result<Answer>,
    ) -> Result<Answer, StageResult> {
        let limits = &self.plugin.meta.limits;
        let (call_deadline, budget) = (limits.call_deadline, limits.transaction_budget);
        let live = self.live.as_mut().expect("instance is live");
        let remaining = budget.saturating_sub(live.spent);
        if remaining.is_zero() {
            return Err(self.on_failure(stage, FailureKind::Timeout));
        }
        live.store
            .set_epoch_deadline(self.host.engine().ticks(call_deadline.min(remaining)));
        let started = Instant::now();
        let result = f(&live.bindings, &mut live.store);
        live.spent += started.elapsed();
        match result {
            Ok(a) => {
                self.plugin
                    .counters
                    .calls
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let dropped = live.store.data().log_dropped;
                if dropped > 0 && stage == Stage::EndOfMessage {
                    warn!(plugin = %self.name, dropped, "plugin log lines dropped (log_lines limit)");
                }
                Ok(a)
            }
            Err(e) => Err(self.on_failure(stage, FailureKind::classify(&e))),
        }
    }

    fn call_verdict(
        &mut self,
        stage: Stage,
        f: impl FnOnce(&MilterFilter, &mut Store<HostState>) -> wasmtime::Result<Answer>,
    ) -> StageResult {
        if let Err(r) = self.ensure_live(stage) {
            return r;
        }
        match self.invoke(stage, f) {
            Ok(Answer::Verdict(v)) => {
                self.plugin.breaker.record_success();
                verdict(v).into()
            }
            Ok(_) => StageResult::cont(),
            Err(r) => r,
        }
    }

    fn end_of_message(&mut self) -> StageResult {
        if let Err(r) = self.ensure_live(Stage::EndOfMessage) {
            return r;
        }
        if let BodyMode::Whole(_) = self.body_mode() {
            let raw = Arc::new(assemble(&self.headers, &self.body));
            let truncated = self.truncated;
            if let Some(live) = self.live.as_mut() {
                let ctx = &mut live.store.data_mut().message;
                ctx.raw = Some(raw);
                ctx.truncated = truncated;
                ctx.client_ip = self.client_ip;
                ctx.helo = self.helo.clone().unwrap_or_default();
                ctx.mail_from = self.mail_from.clone();
            }
            if self.subscribed(Stage::Body) {
                let body = std::mem::take(&mut self.body);
                match self.invoke(Stage::Body, |b, s| {
                    b.wasmail_plugin_filter()
                        .call_on_body_chunk(s, &body, truncated)
                        .map(Answer::Verdict)
                }) {
                    Err(r) => return r,
                    // A refusal (or accept/discard/quarantine) given on the whole body is
                    // the plugin's answer for the message; end of message is not called
                    // (on-abort is, when the transaction ends).
                    Ok(Answer::Verdict(v)) if !matches!(v, wt::Verdict::Continue) => {
                        return verdict(v).into();
                    }
                    Ok(_) => {}
                }
            }
        }
        if !self.subscribed(Stage::EndOfMessage) {
            return StageResult::cont();
        }
        let answer = self.invoke(Stage::EndOfMessage, |b, s| {
            b.wasmail_plugin_filter()
                .call_on_end_of_message(s)
                .map(Answer::Outcome)
        });
        if let Some(live) = self.live.as_mut() {
            live.eom_called = true;
        }
        match answer {
            Ok(Answer::Outcome(o)) => match edits(o.edits, &self.plugin) {
                Ok(list) => {
                    self.plugin.breaker.record_success();
                    StageResult {
                        verdict: verdict(o.verdict),
                        edits: list,
                    }
                }
                Err(why) => self.on_failure(Stage::EndOfMessage, FailureKind::Limit(why)),
            },
            Ok(_) => StageResult::cont(),
            Err(r) => r,
        }
    }
}

impl StagePlugin for WasmFilter {
    fn name(&self) -> &str {
        &self.name
    }

    fn wants(&self, stage: Stage) -> bool {
        // The connection and sender data are always recorded (cheaply, without calling the
        // plugin): later instances replay them and the `auth` capability needs them.
        if matches!(stage, Stage::Connect | Stage::Helo | Stage::MailFrom) {
            return true;
        }
        match self.body_mode() {
            // Whole-message plugins need the headers and body collected even when they
            // did not subscribe to those stages, and are answered at end of message.
            BodyMode::Whole(_)
                if matches!(stage, Stage::Headers | Stage::Body | Stage::EndOfMessage) =>
            {
                true
            }
            _ => self.subscribed(stage),
        }
    }

    fn call(&mut self, event: &Event) -> StageResult {
        let stage = event.stage();
        // Remember what later instances need, whether or not the plugin runs now.
        match event {
            Event::Connect {
                hostname,
                address,
                port,
            } => {
                self.connect = Some(wt::Client {
                    hostname: hostname.clone(),
                    address: address.clone(),
                    port: *port,
                });
                self.client_ip = address.trim_start_matches("IPv6:").parse().ok();
            }
            Event::Helo(h) => self.helo = Some(h.clone()),
            Event::MailFrom { address, .. } => {
                self.mail_from = strip_brackets(address);
                self.headers.clear();
                self.body.clear();
                self.truncated = false;
            }
            // Only whole-message plugins need the headers kept for the message view.
            Event::Headers(list) if matches!(self.body_mode(), BodyMode::Whole(_)) => {
                self.headers = list
                    .iter()
                    .map(|h| (h.name.clone(), h.value.clone()))
                    .collect();
            }
            _ => {}
        }
        if self.failed {
            return self.policy_result();
        }
        if matches!(stage, Stage::Connect | Stage::Helo | Stage::MailFrom)
            && !self.subscribed(stage)
        {
            return StageResult::cont();
        }
        let result = match event {
            Event::Connect { .. } => {
                let c = self.connect.clone().expect("set above");
                self.call_verdict(stage, |b, s| {
                    b.wasmail_plugin_filter()
                        .call_on_connect(s, &c)
                        .map(Answer::Verdict)
                })
            }
            Event::Helo(h) => {
                let h: &str = h;
                self.call_verdict(stage, |b, s| {
                    b.wasmail_plugin_filter()
                        .call_on_helo(s, h)
                        .map(Answer::Verdict)
                })
            }
            Event::MailFrom { address, args } => {
                let env = wt::Envelope {
                    address: address.clone(),
                    args: args.clone(),
                };
                self.call_verdict(stage, |b, s| {
                    b.wasmail_plugin_filter()
                        .call_on_mail_from(s, &env)
                        .map(Answer::Verdict)
                })
            }
            Event::Rcpt { address, args } => {
                let env = wt::Envelope {
                    address: address.clone(),
                    args: args.clone(),
                };
                self.call_verdict(stage, |b, s| {
                    b.wasmail_plugin_filter()
                        .call_on_rcpt(s, &env)
                        .map(Answer::Verdict)
                })
            }
            Event::Headers(list) => {
                if !self.subscribed(Stage::Headers) {
                    return StageResult::cont();
                }
                let hs: Vec<wtypes::Header> = list
                    .iter()
                    .map(|h| wtypes::Header {
                        name: h.name.clone(),
                        value: h.value.clone(),
                    })
                    .collect();
                self.call_verdict(stage, |b, s| {
                    b.wasmail_plugin_filter()
                        .call_on_headers(s, &hs)
                        .map(Answer::Verdict)
                })
            }
            Event::EndOfHeaders => self.call_verdict(stage, |b, s| {
                b.wasmail_plugin_filter()
                    .call_on_end_of_headers(s)
                    .map(Answer::Verdict)
            }),
            Event::Body(chunk) => match self.body_mode() {
                BodyMode::Whole(cap) => {
                    let room = (cap as usize).saturating_sub(self.body.len());
                    if chunk.len() > room {
                        self.truncated = true;
                    }
                    self.body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    StageResult::cont()
                }
                BodyMode::Chunks => {
                    let chunk: &[u8] = chunk;
                    self.call_verdict(stage, |b, s| {
                        b.wasmail_plugin_filter()
                            .call_on_body_chunk(s, chunk, false)
                            .map(Answer::Verdict)
                    })
                }
                BodyMode::None => StageResult::cont(),
            },
            Event::EndOfMessage => self.end_of_message(),
        };
        // Events outside a transaction (CONNECT, HELO) leave the instance for MAIL FROM.
        result
    }

    fn abort(&mut self) {
        if let Some(mut live) = self.live.take() {
            let reuse = live.uses < self.plugin.instance_reuse;
            // Every transaction ends with on-end-of-message or on-abort, so a plugin can
            // reset its state there (the SDK does) before the instance is reused.
            let mut ok = true;
            if !live.eom_called {
                // Best effort: a failing on-abort only gets logged (and ends the instance).
                live.store
                    .set_epoch_deadline(self.host.engine().ticks(Duration::from_millis(100)));
                if let Err(e) = live
                    .bindings
                    .wasmail_plugin_filter()
                    .call_on_abort(&mut live.store)
                {
                    ok = false;
                    let kind = FailureKind::classify(&e);
                    self.plugin.counters.count(&kind);
                    warn!(plugin = %self.name, version = %self.plugin.meta.version, kind = kind.label(), detail = %kind, "plugin failed in on-abort");
                }
            }
            // Only the newest version goes back: an older one would be dropped at checkout.
            if reuse
                && ok
                && self
                    .host
                    .get(&self.name)
                    .is_some_and(|newest| Arc::ptr_eq(&newest, &self.plugin))
            {
                let mut store = live.store;
                // The connection's macros stay with the connection, not with an idle
                // instance (the next one gets its own at checkout).
                store.data_mut().macros = None;
                self.host.filter_pool().give_back(
                    &self.name,
                    self.domain.as_deref(),
                    Pooled {
                        plugin: self.plugin.clone(),
                        store,
                        bindings: live.bindings,
                        uses: live.uses,
                    },
                    self.plugin.instance_reuse,
                );
            }
        }
        self.failed = false;
        self.headers.clear();
        self.body.clear();
        self.truncated = false;
    }
}

/// Per-domain chains from `[milter.domains]`, instantiated from the plugin host.
#[derive(Debug)]
pub struct HostDomainChains {
    host: Arc<PluginHost>,
    chains: Arc<std::collections::BTreeMap<String, Vec<String>>>,
    macros: Option<SharedMacros>,
}

impl HostDomainChains {
    /// `chains`: lower-case domain → plugin names.
    pub fn new(
        host: Arc<PluginHost>,
        chains: Arc<std::collections::BTreeMap<String, Vec<String>>>,
    ) -> Self {
        HostDomainChains {
            host,
            chains,
            macros: None,
        }
    }

    /// Gives the domain plugins access to the connection's milter macros.
    pub fn with_macros(mut self, macros: SharedMacros) -> Self {
        self.macros = Some(macros);
        self
    }
}

impl DomainChains for HostDomainChains {
    fn plugins_for(&mut self, domain: &str) -> Vec<Box<dyn StagePlugin>> {
        self.chains
            .get(domain)
            .map(|names| {
                names
                    .iter()
                    .filter_map(|n| WasmFilter::new(self.host.clone(), n, Some(domain)))
                    .map(|p| match &self.macros {
                        Some(m) => p.with_macros(m.clone()),
                        None => p,
                    })
                    .map(|p| Box::new(p) as Box<dyn StagePlugin>)
                    .collect()
            })
            .unwrap_or_default()
    }
}
