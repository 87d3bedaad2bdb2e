//! The chain runner: runs one SMTP connection's plugins stage by stage, in order, and turns
//! their answers into one outcome per stage. Sans-IO and wasm-free: plugins are anything
//! that implements [`StagePlugin`] (the wasm host adapter in production, plain Rust doubles
//! in tests).
//!
//! Rules (also in `docs/postfix.md`):
//! - Plugins run in chain order: the global `[milter] chain` first, then per-domain chains.
//! - A stage stops at the first *final* verdict (accept, reject, tempfail, discard); the
//!   plugins after it do not see that stage. `continue` passes to the next plugin.
//!   `quarantine(reason)` is not final: it is remembered and sent at end of message (the
//!   message goes to Postfix's hold queue), and the chain goes on.
//! - `accept` means "accept this message without further checks": the remaining stages of
//!   the message are not shown to any plugin.
//! - At RCPT a reject or tempfail refuses that recipient only; the transaction continues.
//! - Edits are collected at end of message from every plugin that ran, in chain order. If a
//!   later plugin rejects, tempfails or discards, no edit is sent.
//! - Per-domain chains: a domain's plugins join the transaction at the first recipient in that
//!   domain. They first get the transaction's earlier events (connect, HELO, MAIL) replayed,
//!   then that RCPT. A message with recipients in several domains runs every involved
//!   domain's chain (each plugin once, in order of the first recipient of each domain); a
//!   final verdict from any of them applies to the whole message at DATA and later stages,
//!   because milter has no per-recipient verdicts after RCPT.
//! - A plugin failure never reaches this module as an error: the adapter applies the
//!   plugin's `on_error` policy and returns `continue` or `tempfail`.

use std::fmt;

/// The milter stages a plugin may subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    /// SMTP client connected.
    Connect,
    /// HELO/EHLO.
    Helo,
    /// MAIL FROM.
    MailFrom,
    /// RCPT TO (once per recipient).
    Rcpt,
    /// All headers, delivered as one batch at end of headers.
    Headers,
    /// End of headers (after [`Stage::Headers`]).
    EndOfHeaders,
    /// One body chunk (Postfix sends up to 65535 bytes per chunk).
    Body,
    /// End of message: the only stage whose answer may carry edits.
    EndOfMessage,
}

/// One header as Postfix sent it (value without the leading space unless HDR_LEADSPC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Header name.
    pub name: String,
    /// Header value; folded lines keep their `\n\t` continuation.
    pub value: String,
}

/// What a plugin is shown at a stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Client connection: hostname Postfix resolved (or `[addr]`), address and port.
    Connect {
        /// Client hostname as Postfix reports it.
        hostname: String,
        /// Client address text (empty for unix-socket clients).
        address: String,
        /// Client port (0 when unknown).
        port: u16,
    },
    /// HELO/EHLO argument.
    Helo(String),
    /// MAIL FROM address (with `<>`) and ESMTP arguments.
    MailFrom {
        /// Sender, e.g. `<alice@example.com>`.
        address: String,
        /// ESMTP arguments such as `SIZE=1234`.
        args: Vec<String>,
    },
    /// RCPT TO address (with `<>`) and ESMTP arguments.
    Rcpt {
        /// Recipient, e.g. `<bob@example.net>`.
        address: String,
        /// ESMTP arguments such as `NOTIFY=NEVER`.
        args: Vec<String>,
    },
    /// All headers of the message.
    Headers(Vec<Header>),
    /// End of headers.
    EndOfHeaders,
    /// One body chunk, CRLF line ends as received.
    Body(Vec<u8>),
    /// End of message.
    EndOfMessage,
}

impl Event {
    /// The stage this event belongs to.
    pub fn stage(&self) -> Stage {
        match self {
            Event::Connect { .. } => Stage::Connect,
            Event::Helo(_) => Stage::Helo,
            Event::MailFrom { .. } => Stage::MailFrom,
            Event::Rcpt { .. } => Stage::Rcpt,
            Event::Headers(_) => Stage::Headers,
            Event::EndOfHeaders => Stage::EndOfHeaders,
            Event::Body(_) => Stage::Body,
            Event::EndOfMessage => Stage::EndOfMessage,
        }
    }
}

/// An SMTP reply chosen by a plugin. Missing parts take Postfix's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reply {
    /// Three-digit code: 4xx for tempfail, 5xx for reject.
    pub code: Option<u16>,
    /// Enhanced status such as `5.7.1`.
    pub enhanced: Option<String>,
    /// Text shown to the SMTP client.
    pub text: Option<String>,
}

/// A plugin's answer at one stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No objection; the next plugin decides.
    Continue,
    /// Accept the message (or, at CONNECT/HELO, the connection) without further checks.
    Accept,
    /// Permanent refusal (5xx).
    Reject(Reply),
    /// Temporary refusal (4xx); the client retries.
    Tempfail(Reply),
    /// Accept and silently drop the message.
    Discard,
    /// Keep going, but put the message on hold with this reason.
    Quarantine(String),
}

impl Verdict {
    /// True for verdicts that end the stage for the rest of the chain.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Verdict::Accept | Verdict::Reject(_) | Verdict::Tempfail(_) | Verdict::Discard
        )
    }
}

/// A change to the message, applied by Postfix at end of message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// Append a header.
    AddHeader {
        /// Name.
        name: String,
        /// Value.
        value: String,
    },
    /// Insert a header at `index` (0 = very top).
    InsertHeader {
        /// Position among the headers.
        index: u32,
        /// Name.
        name: String,
        /// Value.
        value: String,
    },
    /// Change the `index`-th (1-based) header called `name`.
    ChangeHeader {
        /// Name.
        name: String,
        /// 1-based occurrence.
        index: u32,
        /// New value.
        value: String,
    },
    /// Delete the `index`-th (1-based) header called `name`.
    DeleteHeader {
        /// Name.
        name: String,
        /// 1-based occurrence.
        index: u32,
    },
    /// Add a recipient, with optional ESMTP arguments.
    AddRcpt {
        /// Recipient address.
        address: String,
        /// ESMTP arguments (e.g. `NOTIFY=NEVER`), empty for none.
        args: String,
    },
    /// Remove a recipient (the address as given at RCPT).
    DeleteRcpt {
        /// Recipient address.
        address: String,
    },
    /// Change the envelope sender, with optional ESMTP arguments.
    ChangeFrom {
        /// New sender.
        address: String,
        /// ESMTP arguments, empty for none.
        args: String,
    },
    /// Replace the whole body (CRLF line ends).
    ReplaceBody(Vec<u8>),
}

/// A plugin's result at one stage: its verdict and, at end of message, its edits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageResult {
    /// The verdict.
    pub verdict: Verdict,
    /// Edits (honoured only at end of message).
    pub edits: Vec<Edit>,
}

impl StageResult {
    /// `continue` with no edits.
    pub fn cont() -> Self {
        StageResult {
            verdict: Verdict::Continue,
            edits: Vec::new(),
        }
    }
}

impl From<Verdict> for StageResult {
    fn from(verdict: Verdict) -> Self {
        StageResult {
            verdict,
            edits: Vec::new(),
        }
    }
}

/// One plugin's view of one transaction. Implemented by the wasm adapter; the adapter
/// owns the store/instance and applies the plugin's failure policy, so `call` never fails.
pub trait StagePlugin: Send {
    /// The plugin's configured name (for logs).
    fn name(&self) -> &str;
    /// Whether the plugin subscribed to `stage`.
    fn wants(&self, stage: Stage) -> bool;
    /// Runs the plugin for one event.
    fn call(&mut self, event: &Event) -> StageResult;
    /// The SMTP transaction was aborted (RSET, client gone, or after end of message): the
    /// plugin's per-transaction state (its instance) is dropped.
    fn abort(&mut self);
}

/// The chain's combined answer for one stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The final verdict for the stage (`Continue` when every plugin continued).
    pub verdict: Verdict,
    /// Which plugin gave the final verdict (for logs).
    pub decided_by: Option<String>,
    /// At end of message: edits from all plugins, in chain order.
    pub edits: Vec<Edit>,
    /// At end of message: the quarantine reason, if any plugin asked for one.
    pub quarantine: Option<String>,
}

impl Outcome {
    fn cont() -> Self {
        Outcome {
            verdict: Verdict::Continue,
            decided_by: None,
            edits: Vec::new(),
            quarantine: None,
        }
    }
}

/// Creates the per-domain plugins for a transaction.
pub trait DomainChains: Send {
    /// Plugins for `domain` (lower-case), freshly instantiated for this transaction, or an
    /// empty list when the domain has no chain of its own.
    fn plugins_for(&mut self, domain: &str) -> Vec<Box<dyn StagePlugin>>;
}

/// No per-domain chains.
#[derive(Debug, Default)]
pub struct NoDomainChains;

impl DomainChains for NoDomainChains {
    fn plugins_for(&mut self, _domain: &str) -> Vec<Box<dyn StagePlugin>> {
        Vec::new()
    }
}

/// Runs the plugins of one milter connection (one SMTP session, possibly several messages).
pub struct ChainRunner {
    global: Vec<Box<dyn StagePlugin>>,
    domains: Box<dyn DomainChains>,
    /// Per-domain plugins joined in this transaction, with the domain they came for.
    joined: Vec<(String, Box<dyn StagePlugin>)>,
    /// Connection-level events, replayed to late joiners.
    connect: Option<Event>,
    helo: Option<Event>,
    /// Transaction-level events, replayed to late joiners.
    mail: Option<Event>,
    /// Set once a plugin accepted the message: later stages run nothing.
    accepted: bool,
    quarantine: Option<String>,
}

impl fmt::Debug for ChainRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChainRunner")
            .field(
                "global",
                &self.global.iter().map(|p| p.name()).collect::<Vec<_>>(),
            )
            .field(
                "joined",
                &self
                    .joined
                    .iter()
                    .map(|(d, p)| format!("{d}:{}", p.name()))
                    .collect::<Vec<_>>(),
            )
            .field("accepted", &self.accepted)
            .finish()
    }
}

impl ChainRunner {
    /// A runner over the global chain plus per-domain chains.
    pub fn new(global: Vec<Box<dyn StagePlugin>>, domains: Box<dyn DomainChains>) -> Self {
        ChainRunner {
            global,
            domains,
            joined: Vec::new(),
            connect: None,
            helo: None,
            mail: None,
            accepted: false,
            quarantine: None,
        }
    }

    /// Runs `event` through the chain and returns the stage's outcome.
    pub fn run(&mut self, event: Event) -> Outcome {
        match &event {
            Event::Connect { .. } => self.connect = Some(event.clone()),
            Event::Helo(_) => self.helo = Some(event.clone()),
            Event::MailFrom { .. } => {
                // A new transaction on this connection.
                self.end_transaction();
                self.mail = Some(event.clone());
            }
            Event::Rcpt { address, .. } => {
                if let Some(domain) = domain_of(address) {
                    self.join_domain(&domain);
                }
            }
            _ => {}
        }
        if self.accepted {
            return Outcome::cont();
        }
        let stage = event.stage();
        let eom = stage == Stage::EndOfMessage;
        let mut outcome = Outcome::cont();
        let plugins = self
            .global
            .iter_mut()
            .chain(self.joined.iter_mut().map(|(_, p)| p));
        for plugin in plugins {
            if !plugin.wants(stage) {
                continue;
            }
            let result = plugin.call(&event);
            if eom {
                outcome.edits.extend(result.edits);
            }
            match result.verdict {
                Verdict::Continue => {}
                Verdict::Quarantine(reason) => {
                    if self.quarantine.is_none() {
                        self.quarantine = Some(reason);
                    }
                }
                verdict => {
                    outcome.decided_by = Some(plugin.name().to_string());
                    outcome.verdict = verdict;
                    break;
                }
            }
        }
        match outcome.verdict {
            Verdict::Accept if !matches!(stage, Stage::Connect | Stage::Helo) => {
                self.accepted = true;
            }
            Verdict::Reject(_) | Verdict::Tempfail(_) | Verdict::Discard => {
                outcome.edits.clear();
            }
            _ => {}
        }
        if eom {
            outcome.quarantine = self.quarantine.take();
        }
        outcome
    }

    /// Ends the current transaction (after end of message, on ABORT, or before a new MAIL):
    /// every plugin drops its per-transaction state; per-domain plugins leave the chain.
    pub fn end_transaction(&mut self) {
        if self.mail.is_none() && self.joined.is_empty() && !self.accepted {
            return;
        }
        for p in &mut self.global {
            p.abort();
        }
        for (_, p) in &mut self.joined {
            p.abort();
        }
        self.joined.clear();
        self.mail = None;
        self.accepted = false;
        self.quarantine = None;
    }

    fn join_domain(&mut self, domain: &str) {
        if self.joined.iter().any(|(d, _)| d == domain) {
            return;
        }
        let plugins = self.domains.plugins_for(domain);
        let replay: Vec<Event> = [&self.connect, &self.helo, &self.mail]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        for mut plugin in plugins {
            if self
                .global
                .iter()
                .chain(self.joined.iter().map(|(_, p)| p))
                .any(|p| p.name() == plugin.name())
            {
                continue;
            }
            for event in &replay {
                if plugin.wants(event.stage()) {
                    // Replayed verdicts are dropped: those stages have already been
                    // answered. A plugin that wants to refuse based on connect/helo/mail
                    // data answers at RCPT (or later), where its verdict counts.
                    let _ = plugin.call(event);
                }
            }
            self.joined.push((domain.to_string(), plugin));
        }
    }
}

/// The lower-cased domain of `<user@domain>` (or a bare address), if any.
pub fn domain_of(address: &str) -> Option<String> {
    let a = address.trim().trim_start_matches('<').trim_end_matches('>');
    let (_, domain) = a.rsplit_once('@')?;
    let domain = domain.trim_end_matches('.');
    (!domain.is_empty()).then(|| domain.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use super::*;

    type Log = Arc<Mutex<Vec<String>>>;

    /// A scripted plugin: answers per stage from a table and logs what it saw.
    struct Scripted {
        name: String,
        stages: Vec<Stage>,
        answers: HashMap<Stage, StageResult>,
        log: Log,
    }

    impl Scripted {
        fn new(name: &str, stages: &[Stage], log: &Log) -> Self {
            Scripted {
                name: name.into(),
                stages: stages.to_vec(),
                answers: HashMap::new(),
                log: log.clone(),
            }
        }
        fn answer(mut self, stage: Stage, r: impl Into<StageResult>) -> Self {
            self.answers.insert(stage, r.into());
            self
        }
        fn boxed(self) -> Box<dyn StagePlugin> {
            Box::new(self)
        }
    }

    impl StagePlugin for Scripted {
        fn name(&self) -> &str {
            &self.name
        }
        fn wants(&self, stage: Stage) -> bool {
            self.stages.contains(&stage)
        }
        fn call(&mut self, event: &Event) -> StageResult {
            self.log
                .lock()
                .unwrap()
                .push(format!("{}:{:?}", self.name, event.stage()));
            self.answers
                .get(&event.stage())
                .cloned()
                .unwrap_or_else(StageResult::cont)
        }
        fn abort(&mut self) {
            self.log
                .lock()
                .unwrap()
                .push(format!("{}:abort", self.name));
        }
    }

    const ALL: &[Stage] = &[
        Stage::Connect,
        Stage::Helo,
        Stage::MailFrom,
        Stage::Rcpt,
        Stage::Headers,
        Stage::EndOfHeaders,
        Stage::Body,
        Stage::EndOfMessage,
    ];

    fn mail() -> Event {
        Event::MailFrom {
            address: "<a@example.com>".into(),
            args: vec![],
        }
    }
    fn rcpt(a: &str) -> Event {
        Event::Rcpt {
            address: format!("<{a}>"),
            args: vec![],
        }
    }
    fn add(name: &str) -> Edit {
        Edit::AddHeader {
            name: name.into(),
            value: "v".into(),
        }
    }
    fn entries(log: &Log) -> Vec<String> {
        std::mem::take(&mut *log.lock().unwrap())
    }

    #[test]
    fn stage_stops_at_first_final_verdict() {
        let log = Log::default();
        let reject = Verdict::Reject(Reply {
            code: Some(550),
            enhanced: Some("5.7.1".into()),
            text: Some("no".into()),
        });
        let mut r = ChainRunner::new(
            vec![
                Scripted::new("a", ALL, &log).boxed(),
                Scripted::new("b", ALL, &log)
                    .answer(Stage::MailFrom, reject.clone())
                    .boxed(),
                Scripted::new("c", ALL, &log).boxed(),
            ],
            Box::new(NoDomainChains),
        );
        let o = r.run(mail());
        assert_eq!(o.verdict, reject);
        assert_eq!(o.decided_by.as_deref(), Some("b"));
        assert_eq!(entries(&log), ["a:MailFrom", "b:MailFrom"]);
    }

    #[test]
    fn edits_collected_in_chain_order_and_dropped_on_reject() {
        let log = Log::default();
        let eom = |e: &str| StageResult {
            verdict: Verdict::Continue,
            edits: vec![add(e)],
        };
        let mut r = ChainRunner::new(
            vec![
                Scripted::new("a", ALL, &log)
                    .answer(Stage::EndOfMessage, eom("X-A"))
                    .boxed(),
                Scripted::new("b", ALL, &log)
                    .answer(Stage::EndOfMessage, eom("X-B"))
                    .boxed(),
            ],
            Box::new(NoDomainChains),
        );
        r.run(mail());
        let o = r.run(Event::EndOfMessage);
        assert_eq!(o.verdict, Verdict::Continue);
        assert_eq!(o.edits, vec![add("X-A"), add("X-B")]);

        let mut r = ChainRunner::new(
            vec![
                Scripted::new("a", ALL, &log)
                    .answer(Stage::EndOfMessage, eom("X-A"))
                    .boxed(),
                Scripted::new("b", ALL, &log)
                    .answer(Stage::EndOfMessage, Verdict::Tempfail(Reply::default()))
                    .boxed(),
            ],
            Box::new(NoDomainChains),
        );
        r.run(mail());
        let o = r.run(Event::EndOfMessage);
        assert!(matches!(o.verdict, Verdict::Tempfail(_)));
        assert!(o.edits.is_empty());
    }

    #[test]
    fn quarantine_is_not_final_and_is_reported_at_eom() {
        let log = Log::default();
        let mut r = ChainRunner::new(
            vec![
                Scripted::new("q", ALL, &log)
                    .answer(Stage::Headers, Verdict::Quarantine("suspicious".into()))
                    .boxed(),
                Scripted::new("after", ALL, &log).boxed(),
            ],
            Box::new(NoDomainChains),
        );
        r.run(mail());
        let o = r.run(Event::Headers(vec![]));
        assert_eq!(o.verdict, Verdict::Continue);
        assert!(entries(&log).contains(&"after:Headers".to_string()));
        let o = r.run(Event::EndOfMessage);
        assert_eq!(o.quarantine.as_deref(), Some("suspicious"));
        // Not carried into the next message.
        r.end_transaction();
        r.run(mail());
        assert_eq!(r.run(Event::EndOfMessage).quarantine, None);
    }

    #[test]
    fn accept_skips_the_rest_of_the_message_only() {
        let log = Log::default();
        let mut r = ChainRunner::new(
            vec![
                Scripted::new("a", ALL, &log)
                    .answer(Stage::Rcpt, Verdict::Accept)
                    .boxed(),
                Scripted::new("b", ALL, &log).boxed(),
            ],
            Box::new(NoDomainChains),
        );
        r.run(mail());
        assert_eq!(r.run(rcpt("x@example.net")).verdict, Verdict::Accept);
        entries(&log);
        assert_eq!(r.run(Event::EndOfMessage), Outcome::cont());
        assert!(entries(&log).is_empty(), "nobody runs after accept");
        r.end_transaction();
        r.run(mail());
        assert!(entries(&log).contains(&"b:MailFrom".to_string()));
    }

    #[test]
    fn plugins_only_see_stages_they_want() {
        let log = Log::default();
        let mut r = ChainRunner::new(
            vec![Scripted::new("eom", &[Stage::EndOfMessage], &log).boxed()],
            Box::new(NoDomainChains),
        );
        r.run(Event::Helo("x".into()));
        r.run(mail());
        r.run(Event::Body(b"hi".to_vec()));
        r.run(Event::EndOfMessage);
        let seen: Vec<_> = entries(&log)
            .into_iter()
            .filter(|e| !e.ends_with("abort"))
            .collect();
        assert_eq!(seen, ["eom:EndOfMessage"]);
    }

    struct Domains(Log);
    impl DomainChains for Domains {
        fn plugins_for(&mut self, domain: &str) -> Vec<Box<dyn StagePlugin>> {
            match domain {
                "one.test" => vec![Scripted::new("one", ALL, &self.0).boxed()],
                "two.test" => vec![
                    Scripted::new("two", ALL, &self.0)
                        .answer(Stage::EndOfMessage, Verdict::Reject(Reply::default()))
                        .boxed(),
                ],
                _ => vec![],
            }
        }
    }

    #[test]
    fn domain_chain_joins_at_first_rcpt_with_replay() {
        let log = Log::default();
        let mut r = ChainRunner::new(
            vec![Scripted::new("g", ALL, &log).boxed()],
            Box::new(Domains(log.clone())),
        );
        r.run(Event::Connect {
            hostname: "h".into(),
            address: "127.0.0.1".into(),
            port: 1,
        });
        r.run(Event::Helo("h".into()));
        r.run(mail());
        entries(&log);
        r.run(rcpt("a@ONE.test"));
        assert_eq!(
            entries(&log),
            [
                "one:Connect",
                "one:Helo",
                "one:MailFrom",
                "g:Rcpt",
                "one:Rcpt"
            ]
        );
        // Second recipient in the same domain: no second join.
        r.run(rcpt("b@one.test"));
        assert_eq!(entries(&log), ["g:Rcpt", "one:Rcpt"]);
        // A recipient in another domain brings its chain; its reject applies to the message.
        r.run(rcpt("c@two.test"));
        entries(&log);
        let o = r.run(Event::EndOfMessage);
        assert!(matches!(o.verdict, Verdict::Reject(_)));
        assert_eq!(o.decided_by.as_deref(), Some("two"));
        entries(&log);
        // Next transaction: domain plugins are gone until a recipient brings them back.
        r.end_transaction();
        r.run(mail());
        r.run(Event::EndOfMessage);
        let seen = entries(&log);
        assert!(seen.iter().all(|e| !e.starts_with("two:E")), "{seen:?}");
    }

    #[test]
    fn domain_of_handles_brackets_case_and_trailing_dot() {
        assert_eq!(domain_of("<A@Example.COM>").as_deref(), Some("example.com"));
        assert_eq!(domain_of("a@b.test.").as_deref(), Some("b.test"));
        assert_eq!(domain_of("<>"), None);
        assert_eq!(domain_of("postmaster"), None);
    }
}
