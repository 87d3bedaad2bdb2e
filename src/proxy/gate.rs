//! The login decision both fronts share. For one attempt, in order:
//!
//! 1. the `auth` hook chain (global `[proxy] hooks`, then the login domain's registry
//!    `hook` chain): deny, tempfail, delay, or rewrite the user name (the rewritten name is
//!    checked, routed and logged in at the worker);
//! 2. the user name is split into `local@domain`; the domain must be in the registry;
//! 3. with `credentials = "registry"` the password is checked against the mailbox's hash
//!    (argon2 on the blocking pool; an unknown user is checked against a dummy hash so
//!    both take the same time);
//! 4. the `post-login` hook chain, which may still deny or rewrite the user;
//! 5. the domain's worker is acquired (started if cold) and the user logged in there
//!    ([`backend::login`]).
//!
//! Steps 3 and 5 overlap when the mailbox exists and no `post-login` hook is subscribed:
//! the worker is acquired and logged in to while the password hash is checked, and that
//! speculative session is dropped at once if the check fails. A login then costs one
//! password check, not two in a row (the worker's Dovecot checks it again), and a cold
//! worker starts while we hash. The price: a wrong password for an existing mailbox may
//! start its domain's worker (reaped when idle), never an unknown user's or domain's.
//!
//! Every credential failure is reported as [`Refusal::BadCredentials`] after
//! `auth_failure_delay`, whatever the reason (logged, never shown).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tracing::{debug, info, warn};

use super::backend::{self, Backend, BackendError};
use super::config::Credentials;
use super::{Protocol, Refusal};
use crate::cluster::{Hold, Router};
use crate::host::calls::{HookEvent, HookSession};
use crate::mailhook::{HookChain, Outcome};
use crate::registry::Live;
use crate::registry::password::{Secret, hash_password, verify_password};

/// A login that passed: the final user name, its domain, and the worker session.
#[derive(Debug)]
pub struct Admitted {
    /// The user name logged in at the worker (lower-case `local@domain`).
    pub user: String,
    /// Its domain.
    pub domain: String,
    /// The worker's pid (on its host).
    pub worker_pid: u32,
    /// The host running the worker, when it is not this one.
    pub worker_host: Option<String>,
    /// The worker lease (or the remote owner), held until the client session ends.
    pub hold: Hold,
    /// The logged-in connection to the worker.
    pub backend: Backend,
}

/// Names of the worker's sockets and the time a worker login may take.
#[derive(Debug, Clone)]
pub struct WorkerSockets {
    /// IMAP socket file name in the worker's run directory.
    pub imap: String,
    /// POP3 socket file name.
    pub pop3: String,
    /// Longest worker login (connect, greeting, answer).
    pub timeout: Duration,
}

/// The shared login logic of the fronts.
#[derive(Debug, Clone)]
pub struct Gate {
    hooks: HookChain,
    registry: Option<Arc<Live>>,
    router: Router,
    credentials: Credentials,
    failure_delay: Duration,
    sockets: WorkerSockets,
}

impl Gate {
    /// A gate over the hook chain, registry and worker router.
    pub fn new(
        hooks: HookChain,
        registry: Option<Arc<Live>>,
        router: Router,
        credentials: Credentials,
        failure_delay: Duration,
        sockets: WorkerSockets,
    ) -> Gate {
        Gate {
            hooks,
            registry,
            router,
            credentials,
            failure_delay,
            sockets,
        }
    }

    /// The hook chain (the fronts run `imap-command` hooks through it after login).
    pub fn hooks(&self) -> &HookChain {
        &self.hooks
    }

    /// Runs the `connect` hooks (global chain only: no domain is known yet).
    pub async fn connect(&self, session: &HookSession) -> Result<(), Refusal> {
        if !self.hooks.wants(None, "connect") {
            return Ok(());
        }
        self.hook(None, HookEvent::Connect(session.clone()))
            .await
            .map(|_| ())
    }

    /// Waits `auth_failure_delay` and returns the standard failure.
    pub async fn fail(&self) -> Refusal {
        tokio::time::sleep(self.failure_delay).await;
        Refusal::BadCredentials
    }

    /// Decides one login attempt (steps 1 to 5 above).
    pub async fn login(
        &self,
        protocol: Protocol,
        session: &HookSession,
        user: &str,
        password: &Secret,
        mechanism: &str,
    ) -> Result<Admitted, Refusal> {
        let mut user = user.trim().to_string();
        let domain = split(&user).map(|(_, d)| d);
        if self.hooks.wants(domain.as_deref(), "auth") {
            let event = HookEvent::Auth((session.clone(), user.clone(), mechanism.to_string()));
            if let Some(new) = self.hook(domain.as_deref(), event).await? {
                debug!(from = %user, to = %new, "auth hook rewrote the user");
                user = new;
            }
        }
        let Some((address, domain)) = split(&user) else {
            info!(user = %user, "login failed: not local@domain");
            return Err(self.fail().await);
        };
        let Some(live) = &self.registry else {
            warn!("login failed: no registry is open");
            return Err(self.fail().await);
        };
        let snapshot = live.snapshot();
        if snapshot.domain(&domain).is_none() {
            info!(user = %address, "login failed: unknown domain");
            self.burn(password).await;
            return Err(self.fail().await);
        }
        let post_login = self.hooks.wants(Some(&domain), "post-login");
        let mut speculative = None;
        if self.credentials == Credentials::Registry {
            let stored = snapshot
                .mailbox(&address)
                .and_then(|m| m.password_hash.clone());
            let known = stored.is_some();
            if known && !post_login {
                let route = self.clone().route(
                    protocol,
                    address.clone(),
                    domain.clone(),
                    Secret::new(password.expose().to_string()),
                );
                speculative = Some(tokio::spawn(route));
            }
            let ok = self.verify(stored, password).await;
            if !ok {
                if let Some(h) = speculative {
                    h.abort();
                }
                let reason = if known {
                    "wrong password"
                } else {
                    "no such mailbox"
                };
                info!(user = %address, reason, "login failed");
                return Err(self.fail().await);
            }
        }
        if let Some(h) = speculative {
            return h.await.unwrap_or(Err(Refusal::Tempfail));
        }
        let mut user = address;
        let mut domain = domain;
        if post_login {
            let event = HookEvent::PostLogin((session.clone(), user.clone()));
            if let Some(new) = self.hook(Some(&domain), event).await? {
                let Some((a, d)) = split(&new) else {
                    warn!(user = %user, rewrite = %new, "post-login hook rewrote the user to a name without a domain");
                    return Err(Refusal::Tempfail);
                };
                debug!(from = %user, to = %a, "post-login hook rewrote the user");
                user = a;
                domain = d;
            }
        }
        let password = Secret::new(password.expose().to_string());
        self.clone().route(protocol, user, domain, password).await
    }

    /// Reaches `domain`'s worker (here or on its owner host) and logs `user` in there.
    async fn route(
        self,
        protocol: Protocol,
        user: String,
        domain: String,
        password: Secret,
    ) -> Result<Admitted, Refusal> {
        let name = match protocol {
            Protocol::Imap => &self.sockets.imap,
            Protocol::Pop3 => &self.sockets.pop3,
        };
        let routed = match self.router.open(&domain, name).await {
            Ok(r) => r,
            Err(e) => {
                warn!(domain = %domain, error = %e, "worker unavailable");
                return Err(Refusal::Tempfail);
            }
        };
        let worker_pid = routed.pid();
        let worker_host = routed.remote_host().map(str::to_string);
        let label = match &worker_host {
            Some(h) => format!("{domain} {name} via {h}"),
            None => format!("{domain} {name}"),
        };
        let crate::cluster::Routed { stream, hold } = routed;
        match backend::login(
            protocol,
            stream,
            &label,
            &user,
            &password,
            self.sockets.timeout,
        )
        .await
        {
            Ok(backend) => Ok(Admitted {
                user,
                domain,
                worker_pid,
                worker_host,
                hold,
                backend,
            }),
            Err(BackendError::Refused(text)) => {
                if self.credentials == Credentials::Registry {
                    warn!(user = %user, worker = %text, "the worker refused a login the registry accepted (password changed since the worker started?)");
                } else {
                    info!(user = %user, worker = %text, "login failed at the worker");
                }
                drop(hold);
                Err(self.fail().await)
            }
            Err(e) => {
                warn!(user = %user, error = %e, "worker login failed");
                Err(Refusal::Tempfail)
            }
        }
    }

    /// Runs a hook chain: the rewritten `user`, if any, on allow (after its delay).
    async fn hook(
        &self,
        domain: Option<&str>,
        event: HookEvent,
    ) -> Result<Option<String>, Refusal> {
        match self.hooks.run(domain, event).await {
            Outcome::Allow { delay, rewrites } => {
                if !delay.is_zero() {
                    debug!(?delay, "hook asked for a delay");
                    tokio::time::sleep(delay).await;
                }
                Ok(rewrites
                    .into_iter()
                    .rev()
                    .find(|(k, _)| k == "user")
                    .map(|(_, v)| v))
            }
            Outcome::Deny { message, by } => {
                info!(plugin = %by, message = %message, "hook denied");
                Err(Refusal::Denied(message))
            }
            Outcome::Tempfail { by } => {
                warn!(plugin = %by, "hook failed: temporary failure");
                Err(Refusal::Tempfail)
            }
        }
    }

    /// Verifies on the blocking pool; `None` is checked against a dummy hash (same cost).
    async fn verify(&self, stored: Option<String>, password: &Secret) -> bool {
        let plain = Secret::new(password.expose().to_string());
        tokio::task::spawn_blocking(move || match stored {
            Some(s) => verify_password(&s, plain.expose()),
            None => {
                let _ = verify_password(dummy_hash(), plain.expose());
                false
            }
        })
        .await
        .unwrap_or(false)
    }

    /// A dummy verification, so an unknown domain costs what a wrong password does.
    async fn burn(&self, password: &Secret) {
        if self.credentials == Credentials::Registry {
            self.verify(None, password).await;
        }
    }
}

/// A hash nobody's password matches, made once.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash_password("wasmail dummy password").unwrap_or_default())
}

/// `(lower-case address, domain)` of `local@domain`.
pub fn split(user: &str) -> Option<(String, String)> {
    let user = user.trim().to_lowercase();
    let (local, domain) = user.rsplit_once('@')?;
    if local.is_empty() || domain.is_empty() || user.chars().any(|c| c.is_control() || c == ' ') {
        return None;
    }
    let domain = domain.to_string();
    Some((user, domain))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_user_names() {
        assert_eq!(
            split(" Bob@Example.COM "),
            Some(("bob@example.com".into(), "example.com".into()))
        );
        assert_eq!(
            split("a@b@example.com"),
            Some(("a@b@example.com".into(), "example.com".into()))
        );
        for bad in [
            "bob",
            "@example.com",
            "bob@",
            "b ob@example.com",
            "b\tob@x.y",
        ] {
            assert_eq!(split(bad), None, "{bad}");
        }
    }
}
