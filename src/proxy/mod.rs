//! The IMAP4rev1 and POP3 fronts: clients log in here, and their sessions are routed to
//! their domain's FastContainer worker (a rootless Dovecot, `examples/dovecot-worker.conf`).
//!
//! # Layout
//! - [`config`]: the `[proxy]` section.
//! - [`imap`] and [`pop3`]: sans-IO front sessions (framing with limits, the pre-login
//!   commands, replies); they turn client bytes into [`Action`]s and never touch a socket.
//! - [`sasl`]: SASL PLAIN.
//! - [`gate`]: the login decision shared by both protocols: `mail-hook` chains at `auth`
//!   and `post-login`, the credential check against the registry, then
//!   [`Manager::acquire`](crate::fastcontainer::manager::Manager::acquire) for the
//!   domain's worker.
//! - [`backend`]: logging in at the worker over its unix socket.
//! - [`tls`]: the rustls acceptor for STARTTLS/STLS.
//! - [`service`]: the listeners and the per-connection driver: greeting, the pre-login
//!   loop, STARTTLS, the login, then a byte splice (no parsing) until either side closes.
//! - [`commands`] and [`hooked`]: for IMAP sessions whose domain chain subscribes to
//!   `imap-command`, the sans-IO command framing (with `imap-codec`) and the driver that
//!   runs each command through the hooks instead of the plain splice.
//!
//! A session holds its worker [`Lease`](crate::fastcontainer::manager::Lease) from login
//! to close, so a worker is reaped only once its last proxied session ended.

pub mod backend;
pub mod commands;
pub mod config;
pub mod gate;
pub mod hooked;
pub mod imap;
pub mod pop3;
pub mod sasl;
pub mod service;
pub mod tls;

use crate::registry::password::Secret;

/// Which front.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// IMAP4rev1.
    Imap,
    /// POP3.
    Pop3,
}

impl Protocol {
    /// The name used in logs and in the hook session (`imap`, `pop3`).
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Imap => "imap",
            Protocol::Pop3 => "pop3",
        }
    }
}

/// A login the client asked for.
#[derive(Debug)]
pub struct LoginRequest {
    /// The IMAP command tag (empty for POP3).
    pub tag: String,
    /// The user name as the client sent it.
    pub user: String,
    /// The password.
    pub password: Secret,
    /// `LOGIN`, `PLAIN` or `USER` (as the hook's `auth` event reports it).
    pub mechanism: &'static str,
}

/// What a front session asks its driver to do next.
#[derive(Debug)]
pub enum Action {
    /// Send these bytes and go on reading.
    Send(Vec<u8>),
    /// Send these bytes and close the connection.
    Close(Vec<u8>),
    /// Send these bytes, then run the TLS handshake (STARTTLS/STLS); bytes the client sent
    /// after the command are discarded.
    StartTls(Vec<u8>),
    /// Decide a login ([`gate`]), then answer with the session's `logged_in` or `refused`.
    Login(LoginRequest),
}

/// Why a login (or connection) was refused; what the client sees depends on the kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Unknown user or domain, or a wrong password: the standard failure, after a delay;
    /// never says which.
    BadCredentials,
    /// A `mail-hook` plugin denied; the message is for the client.
    Denied(String),
    /// A temporary failure (worker cannot start, hook failed): try again later.
    Tempfail,
}

/// `text` made safe for one protocol line: control characters become spaces, and it is
/// cut to `max` bytes (at a character boundary).
pub(crate) fn one_line(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > max {
        let mut end = max;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
    }
    let out = out.trim().to_string();
    if out.is_empty() { "Denied".into() } else { out }
}

/// A sans-IO front session, driven by [`service`]: bytes in, [`Action`]s out.
pub trait FrontSession: Send {
    /// The protocol.
    const PROTOCOL: Protocol;
    /// The greeting sent when the client connects.
    fn greeting(&self) -> Vec<u8>;
    /// The next action for the input in `buf` (consumed as far as it was used); `None`
    /// when more input is needed.
    fn next(&mut self, buf: &mut bytes::BytesMut) -> Option<Action>;
    /// The TLS handshake after [`Action::StartTls`] succeeded.
    fn tls_started(&mut self);
    /// The answer to a refused [`Action::Login`] (`tag` from the request).
    fn refused(&mut self, tag: &str, why: &Refusal) -> Action;
    /// The answer to a login the worker accepted; `worker` is the worker's reply text
    /// after its tag and `OK` (IMAP) or `+OK` (POP3).
    fn logged_in(&self, tag: &str, worker: &str) -> Vec<u8>;
    /// The greeting replacement when the `connect` hook refused the client.
    fn connect_refused(&self, why: &Refusal) -> Vec<u8>;
    /// Sent before closing a client that was idle too long before login.
    fn timed_out(&self) -> Vec<u8>;
    /// Sent before closing a client at shutdown.
    fn shutting_down(&self) -> Vec<u8>;
}
