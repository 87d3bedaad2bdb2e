//! The trait a milter implements: one method per protocol stage, each with a default that
//! continues, so a handler writes only the stages it cares about.
//!
//! The driver calls `negotiate` once per connection to learn what the handler [`Needs`];
//! stages it does not list are not requested from the MTA (or answered `CONTINUE` without
//! calling it). A message ends with `eom`, with a final verdict the handler returned, or
//! with `abort`; the connection ends with `close`, always called exactly once.

use std::future::Future;

use bytes::Bytes;

use crate::command::{Connect, Envelope, OptNeg};
use crate::macros::Macros;
use crate::negotiate::{Agreement, Needs};
use crate::response::{Action, Modification};

/// What a handler can see besides the event itself.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// Macros received so far (`{i}`, `{client_addr}`, …).
    pub macros: &'a Macros,
    /// What was negotiated (granted actions, no-reply stages, leading-space mode).
    pub agreement: &'a Agreement,
    /// The MTA's address as the listener saw it (socket path or `ip:port`).
    pub peer: &'a str,
}

impl Context<'_> {
    /// Whether header values keep their leading space (`SMFIP_HDR_LEADSPC`), in which case
    /// added headers must bring their own.
    pub fn leading_space(&self) -> bool {
        self.agreement
            .protocol
            .contains(crate::flags::Protocol::HEADER_LEADING_SPACE)
    }
}

/// A milter: protocol callbacks with `CONTINUE` defaults.
///
/// Futures must be `Send`: the driver runs connections on a multi-threaded runtime.
pub trait Milter: Send {
    /// What this handler needs for a connection whose MTA offers `offer`.
    #[doc(alias = "SMFIC_OPTNEG")]
    fn negotiate(&mut self, offer: &OptNeg) -> Needs {
        let _ = offer;
        Needs::default()
    }

    /// The SMTP client connected.
    #[doc(alias = "SMFIC_CONNECT")]
    fn connect(
        &mut self,
        cx: &Context<'_>,
        client: &Connect,
    ) -> impl Future<Output = Action> + Send {
        let _ = (cx, client);
        async { Action::Continue }
    }

    /// HELO/EHLO.
    #[doc(alias = "SMFIC_HELO")]
    fn helo(&mut self, cx: &Context<'_>, name: &Bytes) -> impl Future<Output = Action> + Send {
        let _ = (cx, name);
        async { Action::Continue }
    }

    /// MAIL FROM.
    #[doc(alias = "SMFIC_MAIL")]
    fn mail(&mut self, cx: &Context<'_>, from: &Envelope) -> impl Future<Output = Action> + Send {
        let _ = (cx, from);
        async { Action::Continue }
    }

    /// RCPT TO. A reject applies to this recipient only.
    #[doc(alias = "SMFIC_RCPT")]
    fn rcpt(&mut self, cx: &Context<'_>, to: &Envelope) -> impl Future<Output = Action> + Send {
        let _ = (cx, to);
        async { Action::Continue }
    }

    /// DATA.
    #[doc(alias = "SMFIC_DATA")]
    fn data(&mut self, cx: &Context<'_>) -> impl Future<Output = Action> + Send {
        let _ = cx;
        async { Action::Continue }
    }

    /// One header.
    #[doc(alias = "SMFIC_HEADER")]
    fn header(
        &mut self,
        cx: &Context<'_>,
        name: &Bytes,
        value: &Bytes,
    ) -> impl Future<Output = Action> + Send {
        let _ = (cx, name, value);
        async { Action::Continue }
    }

    /// End of headers.
    #[doc(alias = "SMFIC_EOH")]
    fn eoh(&mut self, cx: &Context<'_>) -> impl Future<Output = Action> + Send {
        let _ = cx;
        async { Action::Continue }
    }

    /// A body chunk (CRLF line ends; lines may be split across chunks).
    #[doc(alias = "SMFIC_BODY")]
    fn body(&mut self, cx: &Context<'_>, chunk: &Bytes) -> impl Future<Output = Action> + Send {
        let _ = (cx, chunk);
        async { Action::Continue }
    }

    /// End of message: push edits to `edits`, return the verdict. Edits are sent only with
    /// `CONTINUE` or `ACCEPT`.
    #[doc(alias = "SMFIC_BODYEOB")]
    fn eom(
        &mut self,
        cx: &Context<'_>,
        edits: &mut Vec<Modification>,
    ) -> impl Future<Output = Action> + Send {
        let _ = (cx, edits);
        async { Action::Continue }
    }

    /// An SMTP command the MTA did not recognise.
    #[doc(alias = "SMFIC_UNKNOWN")]
    fn unknown(&mut self, cx: &Context<'_>, line: &Bytes) -> impl Future<Output = Action> + Send {
        let _ = (cx, line);
        async { Action::Continue }
    }

    /// The current message was aborted (RSET, a lost client, or a handler that timed out).
    #[doc(alias = "SMFIC_ABORT")]
    fn abort(&mut self, cx: &Context<'_>) -> impl Future<Output = ()> + Send {
        let _ = cx;
        async {}
    }

    /// The connection is over (QUIT, QUIT_NC, EOF or an error). Called exactly once per SMTP
    /// connection.
    #[doc(alias = "SMFIC_QUIT")]
    fn close(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}
