//! The Dovecot delegation endpoints, for operators who keep Dovecot in front (or inside
//! the workers) and let wasmail decide:
//!
//! - `POST /auth-policy?command=allow|report` ([`policy`]): Dovecot's auth policy server
//!   (`auth_policy_server_url`). `allow` runs the `auth` event through the hook chain
//!   (deny → status −1 with the plugin's message, delay → tarpit seconds, allow → 0) and
//!   prewarms the user's domain worker; `report` is logged and counted.
//! - `POST /passdb` ([`passdb`]): password verification against the registry for the
//!   Lua passdb script shipped in `docs/dovecot-passdb.lua`.
//! - `POST /events` ([`events`]): the event exporter's sink: logged and counted.
//! - `GET /metrics`: the counters ([`metrics`]).
//! - The post-login socket ([`post_login`], protocol in [`script_login`]): runs the
//!   `post-login` event; deny closes the socket (Dovecot drops the session), rewrites
//!   become userdb fields; the client fd Dovecot passes is always closed.
//!
//! [`Endpoints`] holds the logic (requests in, replies out); [`http`] and [`post_login`]
//! are the thin socket drivers. Configuration: [`config::DovecotSection`].

pub mod config;
pub mod events;
pub mod http;
pub mod metrics;
pub mod passdb;
pub mod policy;
pub mod post_login;
pub mod script_login;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use subtle::ConstantTimeEq as _;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::fastcontainer::manager::Manager;
use crate::host::calls::{HookEvent, HookSession};
use crate::mailhook::{HookChain, Outcome};
use crate::registry::Live;
use crate::registry::password::{Secret, verify_password};
use crate::serve::{ServiceFuture, Shared};
use config::DovecotSection;
use metrics::Metrics;
use script_login::PostLogin;

/// A request that cannot be served as sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Malformed or incomplete input.
    #[error("{0}")]
    Invalid(String),
}

/// An HTTP reply, before it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// The body.
    pub body: String,
}

impl Reply {
    fn json(status: u16, body: String) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            body,
        }
    }
    fn text(status: u16, body: impl Into<String>) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

/// The endpoints' shared state and logic.
#[derive(Debug)]
pub struct Endpoints {
    chain: HookChain,
    registry: Option<Arc<Live>>,
    fastcontainer: Option<Manager>,
    prewarm: bool,
    key: Option<Secret>,
    /// Lower-case name of the header carrying the API key.
    key_header: String,
    request_timeout: Duration,
    /// Request counters.
    pub metrics: Metrics,
}

/// Where the API key was found in a request.
#[derive(Debug, Clone, Copy)]
pub struct Presented<'a> {
    /// The value of the configured header.
    pub header: Option<&'a [u8]>,
    /// The query string (`api_key=` is looked up there).
    pub query: Option<&'a str>,
}

impl Endpoints {
    /// Endpoints over the given chain, registry and worker manager.
    pub fn new(
        section: &DovecotSection,
        chain: HookChain,
        registry: Option<Arc<Live>>,
        fastcontainer: Option<Manager>,
        key: Option<Secret>,
    ) -> Endpoints {
        Endpoints {
            chain,
            registry,
            fastcontainer,
            prewarm: section.prewarm,
            key,
            key_header: section.api_key_header.to_ascii_lowercase(),
            request_timeout: section.request_timeout,
            metrics: Metrics::default(),
        }
    }

    /// The header the key is read from (lower case).
    pub fn key_header(&self) -> &str {
        &self.key_header
    }

    /// Checks the API key: None when it is fine (or none is configured), else the 401
    /// (missing) or 403 (wrong) reply, logged with `peer` and `path`.
    pub fn check_key(&self, presented: Presented<'_>, peer: &str, path: &str) -> Option<Reply> {
        let key = self.key.as_ref()?;
        let from_query = presented.query.and_then(|q| {
            q.split('&')
                .find_map(|p| p.strip_prefix("api_key="))
                .and_then(|v| passdb::percent_decode(v).ok())
        });
        let given = presented
            .header
            .map(<[u8]>::to_vec)
            .or(from_query.map(String::into_bytes));
        match given {
            None => {
                warn!(peer, path, header = %self.key_header, "dovecot: request without the API key refused (401)");
                self.metrics.count("auth", "missing_key");
                Some(Reply::text(401, "API key required\n"))
            }
            Some(g) if bool::from(g.as_slice().ct_eq(key.expose().as_bytes())) => None,
            Some(_) => {
                warn!(
                    peer,
                    path, "dovecot: request with a wrong API key refused (403)"
                );
                self.metrics.count("auth", "wrong_key");
                Some(Reply::text(403, "wrong API key\n"))
            }
        }
    }

    /// Serves one HTTP request whose key was checked and whose body was read.
    pub async fn handle(
        &self,
        method: &str,
        path: &str,
        query: Option<&str>,
        body: &[u8],
    ) -> Reply {
        let post = method == "POST";
        let work = async {
            match path {
                "/auth-policy" if post => self.auth_policy(query, body).await,
                "/passdb" if post => self.passdb(body).await,
                "/events" if post => self.events(body),
                "/metrics" if method == "GET" => Reply {
                    status: 200,
                    content_type: "text/plain; version=0.0.4",
                    body: self.metrics.render_prometheus(),
                },
                "/auth-policy" | "/passdb" | "/events" | "/metrics" => {
                    Reply::text(405, "method not allowed\n")
                }
                _ => Reply::text(404, "not found\n"),
            }
        };
        match tokio::time::timeout(self.request_timeout, work).await {
            Ok(reply) => reply,
            Err(_) => {
                warn!(
                    path,
                    timeout_ms = self.request_timeout.as_millis() as u64,
                    "dovecot: request deadline passed; answering 503"
                );
                self.metrics.count(endpoint_name(path), "timeout");
                Reply::text(503, "deadline passed\n")
            }
        }
    }

    async fn auth_policy(&self, query: Option<&str>, body: &[u8]) -> Reply {
        let parsed = policy::command(query).and_then(|c| Ok((c, policy::parse(body)?)));
        let (command, req) = match parsed {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "dovecot auth policy: bad request (400)");
                self.metrics.count("auth_policy", "bad_request");
                return Reply::text(400, format!("{e}\n"));
            }
        };
        if command == policy::Command::Report {
            info!(
                login = %req.login,
                remote = %req.remote,
                success = ?req.success,
                policy_reject = ?req.policy_reject,
                "dovecot auth report"
            );
            self.metrics.count(
                "auth_policy",
                if req.success == Some(true) {
                    "report_success"
                } else {
                    "report_failure"
                },
            );
            return Reply::json(200, policy::encode(0, ""));
        }
        self.prewarm(req.domain.as_deref());
        let session = HookSession {
            protocol: if req.protocol.is_empty() {
                "dovecot".into()
            } else {
                req.protocol.clone()
            },
            client_address: req.remote.clone(),
            local_address: req.local.clone(),
            secured: req.tls,
        };
        let event = HookEvent::Auth((session, req.login.clone(), req.mechanism.clone()));
        let outcome = self.chain.run(req.domain.as_deref(), event).await;
        match policy::answer(&outcome) {
            policy::Answer::Status { status, msg } => {
                let result = match status {
                    0 => "allow",
                    -1 => "deny",
                    _ => "tarpit",
                };
                if status == 0 {
                    debug!(login = %req.login, remote = %req.remote, "dovecot auth policy: allow");
                } else {
                    let by = match &outcome {
                        Outcome::Deny { by, .. } => by.as_str(),
                        _ => "",
                    };
                    info!(login = %req.login, remote = %req.remote, status, msg = %msg, plugin = by, "dovecot auth policy: {result}");
                }
                self.metrics.count("auth_policy", result);
                Reply::json(200, policy::encode(status, &msg))
            }
            policy::Answer::Unavailable => {
                warn!(login = %req.login, outcome = ?outcome, "dovecot auth policy: hook chain failed; answering 503 (auth_policy_reject_on_fail decides)");
                self.metrics.count("auth_policy", "tempfail");
                Reply::text(503, "hook chain failed\n")
            }
        }
    }

    /// Starts the domain's worker in the background (FastContainer), for a domain the
    /// registry knows (any domain when there is no registry).
    fn prewarm(&self, domain: Option<&str>) {
        let (true, Some(manager), Some(domain)) = (self.prewarm, &self.fastcontainer, domain)
        else {
            return;
        };
        if let Some(live) = &self.registry
            && live.snapshot().domain(domain).is_none()
        {
            debug!(
                domain,
                "dovecot auth policy: no prewarm for a domain the registry does not host"
            );
            return;
        }
        debug!(
            domain,
            "dovecot auth policy: prewarming the domain's worker"
        );
        manager.prewarm(domain);
    }

    async fn passdb(&self, body: &[u8]) -> Reply {
        let req = match passdb::parse(body) {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "dovecot passdb: bad request (400)");
                self.metrics.count("passdb", "bad_request");
                return Reply::text(400, format!("{e}\n"));
            }
        };
        let verdict = self.verify(&req).await;
        let result = match &verdict {
            passdb::Verdict::Ok(_) => "ok",
            passdb::Verdict::Mismatch => "mismatch",
            passdb::Verdict::Unknown => "unknown",
            passdb::Verdict::Unavailable(_) => "tempfail",
        };
        info!(user = %req.user, service = %req.service, remote = %req.remote_ip, result, "dovecot passdb");
        self.metrics.count("passdb", result);
        let (status, body) = passdb::encode(&verdict);
        Reply::text(status, body)
    }

    async fn verify(&self, req: &passdb::VerifyRequest) -> passdb::Verdict {
        let Some(live) = &self.registry else {
            return passdb::Verdict::Unavailable("no registry".into());
        };
        let address = req.user.to_lowercase();
        let snapshot = live.snapshot();
        let Some(mailbox) = snapshot.mailbox(&address) else {
            return passdb::Verdict::Unknown;
        };
        let Some(hash) = mailbox.password_hash.clone() else {
            return passdb::Verdict::Mismatch;
        };
        let plain = Secret::new(req.password.expose().to_string());
        match tokio::task::spawn_blocking(move || verify_password(&hash, plain.expose())).await {
            Ok(true) => passdb::Verdict::Ok(vec![("user".into(), mailbox.address.clone())]),
            Ok(false) => passdb::Verdict::Mismatch,
            Err(e) => passdb::Verdict::Unavailable(format!("verification failed: {e}")),
        }
    }

    fn events(&self, body: &[u8]) -> Reply {
        match events::parse(body) {
            Ok(e) => {
                info!(
                    event = %e.name,
                    user = e.user.as_deref().unwrap_or(""),
                    command = e.command.as_deref().unwrap_or(""),
                    result = e.result.as_deref().unwrap_or(""),
                    "dovecot event"
                );
                self.metrics.event(&e.name);
                self.metrics.count("events", "ok");
                Reply::text(200, "")
            }
            Err(e) => {
                warn!(error = %e, "dovecot events: bad event (400)");
                self.metrics.count("events", "bad_request");
                Reply::text(400, format!("{e}\n"))
            }
        }
    }

    /// Decides on a post-login request: Some(reply line) to let the session go on with
    /// the (possibly rewritten) user and fields, None to deny (close the socket).
    pub async fn post_login(&self, mut req: PostLogin) -> Option<Vec<u8>> {
        let domain = req
            .user
            .rsplit_once('@')
            .map(|(_, d)| d.to_ascii_lowercase());
        let session = HookSession {
            protocol: "dovecot".into(),
            client_address: req.remote_ip.clone(),
            local_address: req.local_ip.clone(),
            secured: false,
        };
        let event = HookEvent::PostLogin((session, req.user.clone()));
        match self.chain.run(domain.as_deref(), event).await {
            Outcome::Allow { rewrites, .. } => {
                if rewrites.is_empty() {
                    debug!(user = %req.user, "dovecot post-login: allow");
                    self.metrics.count("post_login", "allow");
                } else {
                    info!(user = %req.user, fields = ?rewrites.iter().map(|(k, _)| k).collect::<Vec<_>>(), "dovecot post-login: rewrite");
                    self.metrics.count("post_login", "rewrite");
                }
                script_login::apply(&mut req, &rewrites);
                Some(script_login::encode_reply(&req.user, &req.fields))
            }
            Outcome::Deny { message, by } => {
                info!(user = %req.user, remote = %req.remote_ip, plugin = %by, message = %message, "dovecot post-login: deny (closing; Dovecot drops the session)");
                self.metrics.count("post_login", "deny");
                None
            }
            Outcome::Tempfail { by } => {
                warn!(user = %req.user, plugin = %by, "dovecot post-login: hook chain failed; denying the session");
                self.metrics.count("post_login", "tempfail");
                None
            }
        }
    }
}

fn endpoint_name(path: &str) -> &'static str {
    match path {
        "/auth-policy" => "auth_policy",
        "/passdb" => "passdb",
        "/events" => "events",
        _ => "other",
    }
}

/// Starts the `[dovecot]` service: the HTTP endpoints and the post-login socket.
pub async fn start(
    shared: &Shared,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<ServiceFuture> {
    let section = shared
        .config
        .dovecot
        .clone()
        .context("no [dovecot] section")?;
    let key = section.read_api_key().map_err(anyhow::Error::msg)?;
    let chain = HookChain::new(
        shared.plugins.clone(),
        shared.registry.clone(),
        section.hooks.clone(),
    );
    let endpoints = Arc::new(Endpoints::new(
        &section,
        chain,
        shared.registry.clone(),
        shared.fastcontainer.clone(),
        key,
    ));
    let http = match section.http_endpoint().map_err(anyhow::Error::msg)? {
        Some(spec) => Some(http::start(&section, spec, endpoints.clone(), shutdown.clone()).await?),
        None => None,
    };
    let post = match section.post_login_path().map_err(anyhow::Error::msg)? {
        Some(path) => Some(post_login::start(&section, &path, endpoints, shutdown).await?),
        None => None,
    };
    Ok(Box::pin(async move {
        let http = async move {
            match http {
                Some(f) => f.await,
                None => Ok(()),
            }
        };
        let post = async move {
            match post {
                Some(f) => f.await,
                None => Ok(()),
            }
        };
        tokio::try_join!(http, post).map(|_| ())
    }))
}
