//! The policy listener: one task per Postfix connection, one request at a time (Postfix
//! waits for each answer). A request goes through the global chain, then the recipient
//! domain's registry chain ([`super::decide`]); the answer is one `action=` block.
//!
//! A malformed request (no `=`, an over-long line or request, an unknown `request=` type)
//! is logged with the peer and the connection closed without an answer, as
//! SMTPD_POLICY_README asks; Postfix then applies its `default_action` after its retries.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Semaphore, watch};
use tracing::{debug, info, warn};
use wasmail_milter::net::EventLoops;
use wasmail_postfix::policy;

use super::config::PolicySection;
use super::decide::{Decision, Step, combine};
use crate::host::calls;
use crate::host::config::OnError;
use crate::host::set::PluginHost;
use crate::listen;
use crate::registry::Live;
use crate::serve::ServiceFuture;

/// What a connection needs to answer requests.
#[derive(Debug)]
pub struct Policy {
    chain: Vec<String>,
    tempfail_action: String,
    registry: Option<Arc<Live>>,
    plugins: Option<Arc<PluginHost>>,
}

impl Policy {
    /// A policy evaluator for `section`'s chain.
    pub fn new(
        section: &PolicySection,
        registry: Option<Arc<Live>>,
        plugins: Option<Arc<PluginHost>>,
    ) -> Policy {
        Policy {
            chain: section.chain.clone(),
            tempfail_action: section.tempfail_action.clone(),
            registry,
            plugins,
        }
    }

    /// The plugins for one request: the global chain, then the recipient domain's registry
    /// chain (`policy`), each plugin with the domain it runs for (kv namespace).
    fn chain_for(&self, recipient: &str) -> Vec<(String, Option<String>)> {
        let mut out: Vec<(String, Option<String>)> =
            self.chain.iter().map(|n| (n.clone(), None)).collect();
        let domain = crate::lookup::search::fold(recipient)
            .rsplit_once('@')
            .map(|(_, d)| d.to_string())
            .filter(|d| !d.is_empty());
        if let (Some(live), Some(domain)) = (&self.registry, domain) {
            let snap = live.snapshot();
            if let Some(chain) = snap.domain(&domain).and_then(|d| d.chains.get("policy")) {
                out.extend(chain.iter().map(|n| (n.clone(), Some(domain.clone()))));
            }
        }
        out
    }

    /// Decides one request.
    pub fn decide(&self, attrs: &[(String, String)]) -> Decision {
        let get = |name: &str| {
            attrs
                .iter()
                .find(|(k, _)| k == name)
                .map_or("", |(_, v)| v.as_str())
        };
        let chain = self.chain_for(get("recipient"));
        let names: Vec<String> = chain.iter().map(|(n, _)| n.clone()).collect();
        let mut domains = chain.into_iter().map(|(_, d)| d);
        combine(
            &names,
            |name| {
                let domain = domains.next().flatten();
                let Some(host) = &self.plugins else {
                    warn!(plugin = name, "policy plugin is not loaded");
                    return Step::Failed { tempfail: true };
                };
                match calls::policy(host, name, domain.as_deref(), attrs) {
                    Ok(action) => Step::Action(action),
                    Err(e) => Step::Failed {
                        tempfail: e
                            .plugin
                            .as_ref()
                            .is_none_or(|p| p.on_error == OnError::Tempfail),
                    },
                }
            },
            &self.tempfail_action,
        )
    }
}

/// Binds `[policy] listen` now and returns the service future.
pub async fn start(
    section: PolicySection,
    registry: Option<Arc<Live>>,
    plugins: Option<Arc<PluginHost>>,
    loops: Option<EventLoops>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<ServiceFuture> {
    let listener = listen::bind(
        &section.listen,
        listen::parse_mode(&section.socket_mode),
        "[policy] listen",
    )
    .await?;
    info!(listen = %listen::local(&listener), chain = ?section.chain, "policy listening");
    let limit = Arc::new(Semaphore::new(section.max_connections));
    let idle = section.idle_timeout;
    let policy = Arc::new(Policy::new(&section, registry, plugins));
    Ok(Box::pin(listen::serve_on(
        "policy",
        listener,
        limit,
        shutdown,
        loops,
        move |stream, peer, shutdown| {
            let policy = policy.clone();
            async move { connection(stream, &peer, &policy, idle, shutdown).await }
        },
    )))
}

async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    peer: &str,
    policy: &Policy,
    idle: Duration,
    shutdown: watch::Receiver<bool>,
) {
    let limits = policy::Limits::default();
    let mut buf = BytesMut::with_capacity(4096);
    let mut out = BytesMut::with_capacity(256);
    let mut wait = listen::ReadWait::new(idle, &shutdown);
    loop {
        loop {
            match policy::decode_request(&mut buf, &limits) {
                Ok(Some(req)) => {
                    let kind = req.get("request").unwrap_or("");
                    if kind != "smtpd_access_policy" {
                        warn!(
                            peer,
                            request = kind,
                            "policy request is not `request=smtpd_access_policy`; closing without an answer"
                        );
                        return;
                    }
                    let started = Instant::now();
                    let decision = policy.decide(&req.attrs);
                    for note in &decision.notes {
                        warn!(peer, "{note}");
                    }
                    debug!(
                        peer,
                        state = req.get("protocol_state").unwrap_or(""),
                        recipient = req.get("recipient").unwrap_or(""),
                        action = %decision.action,
                        by = decision.by.as_deref().unwrap_or("-"),
                        micros = started.elapsed().as_micros() as u64,
                        "policy decision"
                    );
                    policy::encode_reply(
                        &policy::Reply {
                            action: decision.action,
                        },
                        &mut out,
                    );
                }
                Ok(None) => break,
                Err(e) => {
                    warn!(peer, error = %e, "bad policy request; closing without an answer");
                    return;
                }
            }
        }
        if !listen::next_round(&mut stream, &mut buf, &mut out, &mut wait, &shutdown, peer).await {
            return;
        }
    }
}
