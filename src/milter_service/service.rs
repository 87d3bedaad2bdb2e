//! The milter service: binds `[milter] listen`, runs one [`ChainMilter`] per Postfix
//! connection on the `wasmail_milter` driver, and logs what the driver reports.
//!
//! [`ChainMilter`] adapts the protocol handler to the sans-IO [`ChainRunner`]: headers are
//! collected (negotiated as no-reply) and handed to the chain at end of headers, verdicts
//! map to milter actions (custom replies become `SMFIR_REPLYCODE`), edits to
//! modifications.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use tokio::sync::watch;
use tracing::{debug, info, warn};
use wasmail_milter::net::{
    EventLoops, Listener, MilterFactory, Peer, Report, ServerConfig, SessionError, SessionStats,
    SocketSpec, serve,
};
use wasmail_milter::{
    Action, Actions, Connect, Context, Envelope, MacroStage, Milter, Modification, Needs, OptNeg,
    ReplyCode, Stage as MStage, StageSet,
};

use super::chain::{ChainRunner, Edit, Event, Header, NoDomainChains, Outcome, Reply, Verdict};
use super::config::{MilterSection, PluginThreads};
use crate::host::milter::{HostDomainChains, WasmFilter};
use crate::host::plugin::BodyMode;
use crate::host::set::PluginHost;
use crate::host::state::SharedMacros;
use crate::registry::Live;

/// Builds the chain for each new connection; the plugins read the connection's macros
/// from the handle.
pub type ChainFactory = Arc<dyn Fn(SharedMacros) -> ChainRunner + Send + Sync>;

/// The milter stages the plugins currently loaded need (asked at every negotiation, so a
/// reloaded plugin that wants more stages gets them from the next connection on).
pub type StageNeeds = Arc<dyn Fn() -> StageSet + Send + Sync>;

/// Creates one [`ChainMilter`] per connection and logs session outcomes.
pub struct ServiceFactory {
    chains: ChainFactory,
    stages: StageNeeds,
    /// Whether a loaded plugin imports `wasmail:plugin/macros` (asked per connection, so a
    /// reloaded plugin that starts using macros gets them from the next connection on).
    wants_macros: Arc<dyn Fn() -> bool + Send + Sync>,
    /// Whether plugin calls run on tokio's blocking threads instead of inline.
    offload: bool,
    /// `[milter] defer_content_verdicts`.
    defer_content: bool,
}

impl std::fmt::Debug for ServiceFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceFactory").finish_non_exhaustive()
    }
}

impl MilterFactory for ServiceFactory {
    type Milter = ChainMilter;

    fn new_milter(&self, peer: &Peer) -> ChainMilter {
        debug!(peer = %peer.addr, conn = peer.id, "milter connection");
        let macros = SharedMacros::default();
        ChainMilter {
            runner: Some((self.chains)(macros.clone())),
            macros,
            headers: Vec::new(),
            stages: self.stages.clone(),
            plugins: (self.wants_macros)(),
            offload: self.offload,
            defer_content: self.defer_content,
        }
    }

    fn report(&self, peer: &Peer, report: Report<'_>) {
        match report {
            Report::HandlerTimeout { stage, after } => warn!(
                peer = %peer.addr, conn = peer.id, %stage, after_secs = after.as_secs_f64(),
                "plugin chain over its deadline; answered tempfail"
            ),
            Report::Refused { stage, error } => warn!(
                peer = %peer.addr, conn = peer.id, %stage, %error,
                "chain answer refused; answered tempfail"
            ),
            Report::Deferred { stage, action } => debug!(
                peer = %peer.addr, conn = peer.id, %stage, action = action.name(),
                "verdict at a no-reply stage deferred to the next answered stage"
            ),
            Report::AtCapacity { limit } => warn!(
                limit,
                "milter connection limit reached; new connections wait in the backlog"
            ),
            Report::AcceptFailed(e) => warn!(error = %e, "milter accept failed; retrying"),
        }
    }

    fn session_ended(&self, peer: &Peer, result: &Result<SessionStats, SessionError>) {
        match result {
            Ok(s) => debug!(
                peer = %peer.addr, conn = peer.id, commands = s.commands, messages = s.messages,
                "milter connection closed"
            ),
            Err(e) => {
                warn!(peer = %peer.addr, conn = peer.id, error = %e, "milter connection closed on error")
            }
        }
    }
}

/// One Postfix connection's handler: the plugin chain.
pub struct ChainMilter {
    /// `None` only while a stage runs on a blocking thread, or after that thread panicked.
    runner: Option<ChainRunner>,
    macros: SharedMacros,
    headers: Vec<Header>,
    stages: StageNeeds,
    /// Whether plugins read macros (then they are requested and copied before each stage).
    plugins: bool,
    offload: bool,
    /// End-of-headers and body verdicts are negotiated as no-reply: the protocol session
    /// holds a final one back, sends it at end of message and passes nothing more of that
    /// message to the chain.
    defer_content: bool,
}

impl std::fmt::Debug for ChainMilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainMilter")
            .field("runner", &self.runner)
            .finish_non_exhaustive()
    }
}

impl ChainMilter {
    /// Runs one event through the chain. Plugin calls are synchronous wasm calls bounded by
    /// their deadlines: inline on the connection's task by default, or, when the chain
    /// uses a capability that blocks on I/O (`auth`: DNS) or `[milter] plugin_threads =
    /// "blocking"`, on a blocking thread (the runner moves there and back).
    async fn run(&mut self, event: Event) -> Outcome {
        let Some(mut runner) = self.runner.take() else {
            return lost_runner();
        };
        if !self.offload {
            let out = runner.run(event);
            self.runner = Some(runner);
            return out;
        }
        match tokio::task::spawn_blocking(move || {
            let out = runner.run(event);
            (runner, out)
        })
        .await
        {
            Ok((runner, out)) => {
                self.runner = Some(runner);
                out
            }
            Err(e) => {
                tracing::error!(error = %e, "plugin chain thread panicked; tempfailing this connection");
                lost_runner()
            }
        }
    }

    /// Ends the transaction (plugins run `on-abort` and drop their instances).
    async fn end_transaction(&mut self) {
        let Some(mut runner) = self.runner.take() else {
            return;
        };
        if !self.offload {
            runner.end_transaction();
            self.runner = Some(runner);
            return;
        }
        match tokio::task::spawn_blocking(move || {
            runner.end_transaction();
            runner
        })
        .await
        {
            Ok(runner) => self.runner = Some(runner),
            Err(e) => {
                tracing::error!(error = %e, "plugin chain thread panicked at end of transaction")
            }
        }
    }
}

/// The macros plugins can read (the `macros` interface), refreshed before each stage.
fn refresh_macros(shared: &SharedMacros, cx: &Context<'_>) {
    shared
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone_from(cx.macros);
}

/// Macros wasmail asks Postfix for (SETSYMLIST), per stage; they replace Postfix's
/// `milter_*_macros` for wasmail's connection.
pub fn requested_macros() -> Vec<(MacroStage, String)> {
    vec![
        (
            MacroStage::Connect,
            "j _ {daemon_name} {daemon_addr} {client_addr} {client_name} {client_port} {client_ptr} {client_resolve} {client_connections}".into(),
        ),
        (
            MacroStage::Helo,
            "{tls_version} {cipher} {cipher_bits} {cert_subject} {cert_issuer}".into(),
        ),
        (
            MacroStage::EnvFrom,
            "i {auth_type} {auth_authen} {auth_author} {mail_addr} {mail_host} {mail_mailer}".into(),
        ),
        (MacroStage::EnvRcpt, "{rcpt_addr} {rcpt_host} {rcpt_mailer}".into()),
        (MacroStage::Data, "i".into()),
        (MacroStage::Eoh, "i".into()),
        (MacroStage::Eom, "i".into()),
    ]
}

fn lost_runner() -> Outcome {
    Outcome {
        verdict: Verdict::Tempfail(Reply {
            code: Some(451),
            enhanced: Some("4.3.0".into()),
            text: Some("Mail policy temporarily unavailable".into()),
        }),
        decided_by: None,
        edits: Vec::new(),
        quarantine: None,
    }
}

/// Maps a plugin stage to the milter stage that carries it.
pub fn milter_stage(stage: super::chain::Stage) -> MStage {
    use super::chain::Stage as S;
    match stage {
        S::Connect => MStage::Connect,
        S::Helo => MStage::Helo,
        S::MailFrom => MStage::Mail,
        S::Rcpt => MStage::Rcpt,
        // Headers are handed over at end of headers.
        S::Headers => MStage::Header,
        S::EndOfHeaders => MStage::Eoh,
        S::Body => MStage::Body,
        S::EndOfMessage => MStage::Eom,
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn reply_action(reply: &Reply, temporary: bool) -> Action {
    if reply.code.is_none() && reply.text.is_none() && reply.enhanced.is_none() {
        return if temporary {
            Action::Tempfail
        } else {
            Action::Reject
        };
    }
    let code = reply.code.unwrap_or(if temporary { 451 } else { 550 });
    let text = reply.text.as_deref().unwrap_or(if temporary {
        "Try again later"
    } else {
        "Rejected"
    });
    match ReplyCode::new(code, reply.enhanced.as_deref(), text) {
        Ok(r) => Action::ReplyCode(r),
        Err(e) => {
            warn!(error = %e, code, "plugin reply is not a valid SMTP reply; using the plain verdict");
            if temporary {
                Action::Tempfail
            } else {
                Action::Reject
            }
        }
    }
}

fn action(outcome: &Outcome) -> Action {
    match &outcome.verdict {
        Verdict::Continue | Verdict::Quarantine(_) => Action::Continue,
        Verdict::Accept => Action::Accept,
        Verdict::Reject(r) => reply_action(r, false),
        Verdict::Tempfail(r) => reply_action(r, true),
        Verdict::Discard => Action::Discard,
    }
}

fn args(s: &str) -> Vec<Bytes> {
    s.split_whitespace()
        .map(|a| Bytes::from(a.to_owned()))
        .collect()
}

fn modification(edit: Edit) -> Modification {
    let b = |s: String| Bytes::from(s);
    match edit {
        Edit::AddHeader { name, value } => Modification::AddHeader {
            name: b(name),
            value: b(value),
        },
        Edit::InsertHeader { index, name, value } => Modification::InsertHeader {
            index,
            name: b(name),
            value: b(value),
        },
        Edit::ChangeHeader { name, index, value } => Modification::ChangeHeader {
            index,
            name: b(name),
            value: b(value),
        },
        Edit::DeleteHeader { name, index } => Modification::ChangeHeader {
            index,
            name: b(name),
            value: Bytes::new(),
        },
        Edit::AddRcpt { address, args: a } if a.trim().is_empty() => {
            Modification::AddRcpt(b(address))
        }
        Edit::AddRcpt { address, args: a } => Modification::AddRcptPar {
            rcpt: b(address),
            args: args(&a),
        },
        Edit::DeleteRcpt { address } => Modification::DeleteRcpt(b(address)),
        Edit::ChangeFrom { address, args: a } => Modification::ChangeFrom {
            from: b(address),
            args: args(&a),
        },
        Edit::ReplaceBody(body) => Modification::ReplaceBody(Bytes::from(body)),
    }
}

impl Milter for ChainMilter {
    fn negotiate(&mut self, _offer: &OptNeg) -> Needs {
        Needs {
            actions: Actions::ADD_HEADERS
                | Actions::CHANGE_HEADERS
                | Actions::ADD_RCPT
                | Actions::ADD_RCPT_PAR
                | Actions::DELETE_RCPT
                | Actions::CHANGE_FROM
                | Actions::CHANGE_BODY
                | Actions::QUARANTINE,
            stages: (self.stages)(),
            replies: if self.defer_content {
                StageSet::ALL
                    .without(MStage::Header)
                    .without(MStage::Eoh)
                    .without(MStage::Body)
            } else {
                StageSet::ALL.without(MStage::Header)
            },
            macros: if self.plugins {
                requested_macros()
            } else {
                Vec::new()
            },
            ..Needs::default()
        }
    }

    async fn connect(&mut self, cx: &Context<'_>, client: &Connect) -> Action {
        if self.plugins {
            refresh_macros(&self.macros, cx);
        }
        action(
            &self
                .run(Event::Connect {
                    hostname: text(&client.hostname),
                    address: text(&client.address),
                    port: client.port,
                })
                .await,
        )
    }

    async fn helo(&mut self, cx: &Context<'_>, name: &Bytes) -> Action {
        if self.plugins {
            refresh_macros(&self.macros, cx);
        }
        action(&self.run(Event::Helo(text(name))).await)
    }

    async fn mail(&mut self, cx: &Context<'_>, from: &Envelope) -> Action {
        if self.plugins {
            refresh_macros(&self.macros, cx);
        }
        self.headers.clear();
        action(
            &self
                .run(Event::MailFrom {
                    address: text(&from.address),
                    args: from.args.iter().map(|a| text(a)).collect(),
                })
                .await,
        )
    }

    async fn rcpt(&mut self, cx: &Context<'_>, to: &Envelope) -> Action {
        if self.plugins {
            refresh_macros(&self.macros, cx);
        }
        action(
            &self
                .run(Event::Rcpt {
                    address: text(&to.address),
                    args: to.args.iter().map(|a| text(a)).collect(),
                })
                .await,
        )
    }

    async fn header(&mut self, _cx: &Context<'_>, name: &Bytes, value: &Bytes) -> Action {
        self.headers.push(Header {
            name: text(name),
            value: text(value),
        });
        Action::Continue
    }

    async fn eoh(&mut self, cx: &Context<'_>) -> Action {
        if self.plugins {
            refresh_macros(&self.macros, cx);
        }
        let headers = std::mem::take(&mut self.headers);
        let outcome = self.run(Event::Headers(headers)).await;
        if outcome.verdict.is_final() {
            return action(&outcome);
        }
        action(&self.run(Event::EndOfHeaders).await)
    }

    async fn body(&mut self, cx: &Context<'_>, chunk: &Bytes) -> Action {
        if self.plugins {
            refresh_macros(&self.macros, cx);
        }
        action(&self.run(Event::Body(chunk.to_vec())).await)
    }

    async fn eom(&mut self, cx: &Context<'_>, edits: &mut Vec<Modification>) -> Action {
        if self.plugins {
            refresh_macros(&self.macros, cx);
        }
        let outcome = self.run(Event::EndOfMessage).await;
        let verdict = action(&outcome);
        edits.extend(outcome.edits.into_iter().map(modification));
        if let Some(reason) = outcome.quarantine {
            edits.push(Modification::Quarantine(Bytes::from(reason)));
        }
        self.end_transaction().await;
        verdict
    }

    async fn abort(&mut self, _cx: &Context<'_>) {
        self.headers.clear();
        self.end_transaction().await;
    }
}

/// Per-domain milter chains: `[milter.domains]` from the config, then each registry
/// domain's `milter` chain (`wasmail domain set DOMAIN --chain milter=a,b`), merged per
/// registry generation so a CLI change reaches the next SMTP connection.
#[derive(Debug)]
struct DomainSource {
    configured: Arc<Chains>,
    registry: Option<Arc<Live>>,
    /// The merged chains and the registry generation they were built from.
    merged: std::sync::Mutex<(u64, Arc<Chains>)>,
}

/// Domain → plugin names.
type Chains = BTreeMap<String, Vec<String>>;

impl DomainSource {
    fn new(configured: BTreeMap<String, Vec<String>>, registry: Option<Arc<Live>>) -> Self {
        let configured = Arc::new(configured);
        DomainSource {
            merged: std::sync::Mutex::new((u64::MAX, configured.clone())),
            configured,
            registry,
        }
    }

    /// The chains now: domain → plugin names (config first, then registry; no repeats).
    fn current(&self, host: &PluginHost) -> Arc<Chains> {
        let Some(live) = &self.registry else {
            return self.configured.clone();
        };
        let snap = live.snapshot();
        let mut merged = self.merged.lock().unwrap_or_else(|e| e.into_inner());
        if merged.0 == snap.generation {
            return merged.1.clone();
        }
        let mut map = (*self.configured).clone();
        for (name, domain) in &snap.domains {
            let Some(chain) = domain.chains.get("milter") else {
                continue;
            };
            let entry = map.entry(name.clone()).or_default();
            for plugin in chain {
                match host.get(plugin) {
                    Some(p) if p.milter_description().is_some() => {
                        if !entry.contains(plugin) {
                            entry.push(plugin.clone());
                        }
                    }
                    Some(p) => warn!(
                        domain = %name,
                        plugin = %plugin,
                        world = %p.world,
                        "registry milter chain names a plugin that is not a milter-filter plugin; skipped"
                    ),
                    None => warn!(
                        domain = %name,
                        plugin = %plugin,
                        "registry milter chain names a plugin that is not loaded; skipped"
                    ),
                }
            }
        }
        let map = Arc::new(map);
        *merged = (snap.generation, map.clone());
        map
    }
}

/// The stages a chain of plugins needs from Postfix: what the plugins subscribed to, plus
/// MAIL (transaction boundaries), RCPT when per-domain chains exist (they join at RCPT),
/// the header and body stages for whole-message plugins, and end of message (always: edits
/// and quarantine are sent there).
pub fn needed_stages(
    host: &PluginHost,
    chain: &[String],
    domains: &BTreeMap<String, Vec<String>>,
) -> StageSet {
    let mut set = StageSet::EMPTY.with(MStage::Mail).with(MStage::Eom);
    if !domains.is_empty() {
        set = set.with(MStage::Rcpt);
    }
    let names = chain.iter().chain(domains.values().flatten());
    for name in names {
        let Some(plugin) = host.get(name) else {
            continue;
        };
        let Some((stages, body)) = plugin.milter_description() else {
            continue;
        };
        for s in stages {
            set = set.with(milter_stage(*s));
            if *s == super::chain::Stage::Headers {
                set = set.with(MStage::Eoh);
            }
        }
        if matches!(body, BodyMode::Whole(_)) {
            set = set
                .with(MStage::Header)
                .with(MStage::Eoh)
                .with(MStage::Body);
        }
    }
    set
}

/// Binds `[milter] listen` now (so a bad address fails start-up, and the socket exists
/// once `serve` says it is serving) and returns the future that serves until `shutdown`
/// turns true. `host` must have loaded every plugin the chains name (start-up checks it).
pub async fn start(
    section: MilterSection,
    host: Option<Arc<PluginHost>>,
    registry: Option<Arc<Live>>,
    loops: Option<EventLoops>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<crate::serve::ServiceFuture> {
    let configured: BTreeMap<String, Vec<String>> = section
        .domains
        .iter()
        .map(|(d, c)| {
            (
                d.trim_end_matches('.').to_ascii_lowercase(),
                c.chain.clone(),
            )
        })
        .collect();
    let names: Vec<String> = section
        .chain
        .iter()
        .chain(configured.values().flatten())
        .cloned()
        .collect();
    let domains = Arc::new(DomainSource::new(configured, registry.clone()));
    let names: Vec<&String> = names.iter().collect();
    type WantsMacros = Arc<dyn Fn() -> bool + Send + Sync>;
    let (chains, stages, wants_macros, offload): (ChainFactory, StageNeeds, WantsMacros, bool) =
        match &host {
            Some(host) if !names.is_empty() || registry.is_some() => {
                for name in &names {
                    let plugin = host.get(name).with_context(|| {
                        format!("[milter] uses plugin `{name}`, which is not loaded")
                    })?;
                    if plugin.milter_description().is_none() {
                        anyhow::bail!(
                            "[milter] uses plugin `{name}` ({}), which is a `{}` plugin, not milter-filter",
                            plugin.file.display(),
                            plugin.world
                        );
                    }
                }
                let chain = Arc::new(section.chain.clone());
                let (h, c, src) = (host.clone(), chain.clone(), domains.clone());
                let chains: ChainFactory = Arc::new(move |macros: SharedMacros| {
                    let d = src.current(&h);
                    let global: Vec<Box<dyn super::chain::StagePlugin>> = c
                        .iter()
                        .filter_map(|n| WasmFilter::new(h.clone(), n, None))
                        .map(|p| {
                            Box::new(p.with_macros(macros.clone()))
                                as Box<dyn super::chain::StagePlugin>
                        })
                        .collect();
                    ChainRunner::new(
                        global,
                        Box::new(HostDomainChains::new(h.clone(), d).with_macros(macros)),
                    )
                });
                let (h, c, src) = (host.clone(), chain, domains.clone());
                let stages: StageNeeds = Arc::new(move || needed_stages(&h, &c, &src.current(&h)));
                let uses_auth = names.iter().any(|n| {
                    host.get(n).is_some_and(|p| {
                        p.meta
                            .grants
                            .contains(&crate::host::config::Capability::Auth)
                    })
                });
                // A call that may outlast progress_interval must not hold the connection's
                // task, or SMFIR_PROGRESS could not be sent meanwhile.
                let long_calls = names.iter().any(|n| {
                    host.get(n)
                        .is_some_and(|p| p.meta.limits.call_deadline >= section.progress_interval)
                });
                let offload = match section.plugin_threads {
                    PluginThreads::Inline => false,
                    PluginThreads::Blocking => true,
                    PluginThreads::Auto => uses_auth || long_calls,
                };
                let (h, all, src): (Arc<PluginHost>, Vec<String>, _) =
                    (host.clone(), section.chain.clone(), domains.clone());
                let wants_macros: WantsMacros = Arc::new(move || {
                    let d = src.current(&h);
                    all.iter().chain(d.values().flatten()).any(|n| {
                        h.get(n).is_some_and(|p| {
                            p.imports
                                .iter()
                                .any(|i| i.starts_with("wasmail:plugin/macros"))
                        })
                    })
                });
                (chains, stages, wants_macros, offload)
            }
            _ => {
                if !names.is_empty() {
                    anyhow::bail!("[milter] names plugins but no plugin host was started");
                }
                let chains: ChainFactory =
                    Arc::new(|_| ChainRunner::new(Vec::new(), Box::new(NoDomainChains)));
                let stages: StageNeeds =
                    Arc::new(|| StageSet::EMPTY.with(MStage::Mail).with(MStage::Eom));
                (chains, stages, Arc::new(|| false) as WantsMacros, false)
            }
        };
    let spec: SocketSpec = section
        .listen
        .parse()
        .with_context(|| "[milter] listen".to_string())?;
    let mode = u32::from_str_radix(&section.socket_mode, 8).ok();
    if let SocketSpec::Unix(path) = &spec
        && let Some(parent) = path.parent()
    {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let listener = Listener::bind(&spec, mode)
        .await
        .with_context(|| format!("binding milter listener {spec}"))?;
    info!(listen = %listener.local_spec().map(|s| s.to_string()).unwrap_or_default(), plugins = names.len(), plugin_threads = if offload { "blocking" } else { "inline" }, "milter listening");
    let config = ServerConfig {
        max_frame: section.max_packet as usize,
        idle_timeout: section.idle_timeout,
        max_connections: section.max_connections,
        command_timeout: section.command_deadline,
        content_timeout: section.content_deadline,
        progress_interval: section.progress_interval,
        quickack: true,
        event_loops: loops,
    };
    Ok(Box::pin(async move {
        serve(
            listener,
            Arc::new(ServiceFactory {
                chains,
                stages,
                wants_macros,
                offload,
                defer_content: section.defer_content_verdicts,
            }),
            config,
            shutdown,
        )
        .await
        .context("milter accept loop")
    }))
}
