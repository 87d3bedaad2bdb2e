//! The milter service: binds `[milter] listen`, runs one [`ChainMilter`] per Postfix
//! connection on the `wasmail_milter` driver, and logs what the driver reports.
//!
//! [`ChainMilter`] adapts the protocol handler to the sans-IO [`ChainRunner`]: headers are
//! collected (negotiated as no-reply) and handed to the chain at end of headers, verdicts
//! map to milter actions (custom replies become `SMFIR_REPLYCODE`), edits to
//! modifications.

use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use tokio::sync::watch;
use tracing::{debug, info, warn};
use wasmail_milter::net::{
    Listener, MilterFactory, Peer, Report, ServerConfig, SessionError, SessionStats, SocketSpec,
    serve,
};
use wasmail_milter::{
    Action, Actions, Connect, Context, Envelope, Milter, Modification, Needs, OptNeg, ReplyCode,
    Stage as MStage, StageSet,
};

use super::chain::{ChainRunner, Edit, Event, Header, NoDomainChains, Outcome, Reply, Verdict};
use super::config::MilterSection;

/// Builds the chain for each new connection.
pub type ChainFactory = Arc<dyn Fn() -> ChainRunner + Send + Sync>;

/// Creates one [`ChainMilter`] per connection and logs session outcomes.
pub struct ServiceFactory {
    chains: ChainFactory,
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
        ChainMilter {
            runner: (self.chains)(),
            headers: Vec::new(),
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
#[derive(Debug)]
pub struct ChainMilter {
    runner: ChainRunner,
    headers: Vec<Header>,
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
            stages: StageSet::ALL.without(MStage::Data).without(MStage::Unknown),
            replies: StageSet::ALL.without(MStage::Header),
            ..Needs::default()
        }
    }

    async fn connect(&mut self, _cx: &Context<'_>, client: &Connect) -> Action {
        action(&self.runner.run(Event::Connect {
            hostname: text(&client.hostname),
            address: text(&client.address),
            port: client.port,
        }))
    }

    async fn helo(&mut self, _cx: &Context<'_>, name: &Bytes) -> Action {
        action(&self.runner.run(Event::Helo(text(name))))
    }

    async fn mail(&mut self, _cx: &Context<'_>, from: &Envelope) -> Action {
        self.headers.clear();
        action(&self.runner.run(Event::MailFrom {
            address: text(&from.address),
            args: from.args.iter().map(|a| text(a)).collect(),
        }))
    }

    async fn rcpt(&mut self, _cx: &Context<'_>, to: &Envelope) -> Action {
        action(&self.runner.run(Event::Rcpt {
            address: text(&to.address),
            args: to.args.iter().map(|a| text(a)).collect(),
        }))
    }

    async fn header(&mut self, _cx: &Context<'_>, name: &Bytes, value: &Bytes) -> Action {
        self.headers.push(Header {
            name: text(name),
            value: text(value),
        });
        Action::Continue
    }

    async fn eoh(&mut self, _cx: &Context<'_>) -> Action {
        let headers = std::mem::take(&mut self.headers);
        let outcome = self.runner.run(Event::Headers(headers));
        if outcome.verdict.is_final() {
            return action(&outcome);
        }
        action(&self.runner.run(Event::EndOfHeaders))
    }

    async fn body(&mut self, _cx: &Context<'_>, chunk: &Bytes) -> Action {
        action(&self.runner.run(Event::Body(chunk.to_vec())))
    }

    async fn eom(&mut self, _cx: &Context<'_>, edits: &mut Vec<Modification>) -> Action {
        let outcome = self.runner.run(Event::EndOfMessage);
        let verdict = action(&outcome);
        edits.extend(outcome.edits.into_iter().map(modification));
        if let Some(reason) = outcome.quarantine {
            edits.push(Modification::Quarantine(Bytes::from(reason)));
        }
        self.runner.end_transaction();
        verdict
    }

    async fn abort(&mut self, _cx: &Context<'_>) {
        self.headers.clear();
        self.runner.end_transaction();
    }
}

/// Binds `[milter] listen` now (so a bad address fails start-up, and the socket exists
/// once `serve` says it is serving) and returns the future that serves until `shutdown`
/// turns true.
pub async fn start(
    section: MilterSection,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<crate::serve::ServiceFuture> {
    if !section.chain.is_empty() || !section.domains.is_empty() {
        anyhow::bail!(
            "[milter] chain/domains name plugins, but this build cannot load plugins yet \
             (the plugin host is not implemented); remove them to run the milter without plugins"
        );
    }
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
    info!(listen = %listener.local_spec().map(|s| s.to_string()).unwrap_or_default(), "milter listening");
    let config = ServerConfig {
        max_frame: section.max_packet as usize,
        idle_timeout: section.idle_timeout,
        max_connections: section.max_connections,
        command_timeout: section.command_deadline,
        content_timeout: section.content_deadline,
        progress_interval: section.progress_interval,
        quickack: true,
    };
    let chains: ChainFactory = Arc::new(|| ChainRunner::new(Vec::new(), Box::new(NoDomainChains)));
    Ok(Box::pin(async move {
        serve(
            listener,
            Arc::new(ServiceFactory { chains }),
            config,
            shutdown,
        )
        .await
        .context("milter accept loop")
    }))
}
