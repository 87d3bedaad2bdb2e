//! An async milter client (the MTA role), for tests, interop checks and load generation.
//!
//! It behaves like Postfix: macro packets are written together with the command they
//! precede, commands for steps the milter turned off are not sent, and only commands that
//! expect a reply wait for one. Everything the milter sends is checked (see
//! [`crate::client`]).

use std::io;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use super::addr::SocketSpec;
use super::server::{Stream, Transport};
use crate::client::{ClientState, Reply, Violation};
use crate::command::{Command, Connect, Envelope, Family, OptNeg};
use crate::flags::{CHUNK_SIZE, DEFAULT_MAX_FRAME};
use crate::frame::{FrameError, decode_frame};
use crate::negotiate::Agreement;
use crate::response::{Action, Negotiated, Response};
use crate::wire::DecodeError;

/// A client-side failure.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Reading or writing failed.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The milter's framing was unreadable.
    #[error("framing: {0}")]
    Frame(#[from] FrameError),
    /// A response could not be decoded.
    #[error("response: {0}")]
    Decode(#[from] DecodeError),
    /// The milter broke the protocol.
    #[error("protocol: {0}")]
    Violation(#[from] Violation),
    /// The milter closed the connection while a reply was due.
    #[error("milter closed the connection")]
    Closed,
}

/// A connection to a milter.
#[derive(Debug)]
pub struct MilterClient<S: Transport = Stream> {
    stream: S,
    input: BytesMut,
    out: BytesMut,
    state: ClientState,
    max_frame: usize,
}

impl MilterClient<Stream> {
    /// Connects to `spec` with `TCP_NODELAY` (as Postfix does not; see
    /// [`MilterClient::connect_with`]) and Postfix's offer.
    pub async fn connect(spec: &SocketSpec) -> io::Result<MilterClient<Stream>> {
        MilterClient::connect_with(spec, true, OptNeg::POSTFIX).await
    }

    /// Connects to `spec`; `nodelay` false reproduces Postfix's Nagle behaviour on TCP.
    pub async fn connect_with(
        spec: &SocketSpec,
        nodelay: bool,
        offer: OptNeg,
    ) -> io::Result<MilterClient<Stream>> {
        let stream = match spec {
            SocketSpec::Unix(p) => Stream::Unix(UnixStream::connect(p).await?),
            SocketSpec::Tcp { host, port } => {
                let s = TcpStream::connect((host.as_str(), *port)).await?;
                s.set_nodelay(nodelay)?;
                Stream::Tcp(s, false)
            }
        };
        Ok(MilterClient::new(stream, offer))
    }
}

impl<S: Transport> MilterClient<S> {
    /// A client on an established stream that will offer `offer`.
    pub fn new(stream: S, offer: OptNeg) -> MilterClient<S> {
        MilterClient {
            stream,
            input: BytesMut::with_capacity(4096),
            out: BytesMut::with_capacity(1024),
            state: ClientState::new(offer),
            max_frame: DEFAULT_MAX_FRAME.max(CHUNK_SIZE * 4),
        }
    }

    /// The negotiated agreement.
    pub fn agreement(&self) -> Option<&Agreement> {
        self.state.agreement()
    }

    /// The underlying stream.
    pub fn stream_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// Sends OPTNEG and checks the reply.
    pub async fn negotiate(&mut self) -> Result<Negotiated, ClientError> {
        let offer = *self.state.offer();
        Command::OptNeg(offer).encode(&mut self.out);
        self.flush().await?;
        match self.read_response().await? {
            Some(Response::Negotiate(n)) => {
                self.state.negotiated(&n)?;
                Ok(n)
            }
            Some(other) => Err(Violation::Unexpected {
                got: crate::response::response_name(other.code()),
                to: "OPTNEG",
            }
            .into()),
            None => Err(ClientError::Closed),
        }
    }

    /// Queues a macro packet for command `code`; it goes out with the next command.
    pub fn macros(&mut self, code: u8, pairs: &[(&str, &str)]) {
        Command::Macro {
            code,
            pairs: pairs
                .iter()
                .map(|(n, v)| (Bytes::from(n.to_string()), Bytes::from(v.to_string())))
                .collect(),
        }
        .encode(&mut self.out);
    }

    /// Sends a command (unless the milter turned its step off) and, if the milter answers
    /// it, waits for the complete reply.
    pub async fn send(&mut self, cmd: Command) -> Result<Option<Reply>, ClientError> {
        if !self.state.sends(&cmd) {
            return Ok(None);
        }
        cmd.encode(&mut self.out);
        self.flush().await?;
        if !self.state.expects_reply(&cmd) {
            return Ok(None);
        }
        loop {
            let Some(r) = self.read_response().await? else {
                return Err(ClientError::Closed);
            };
            if let Some(reply) = self.state.response(&cmd, r)? {
                return Ok(Some(reply));
            }
        }
    }

    /// Writes raw bytes (for malformed-input tests).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Reads one response frame; `None` at end of stream.
    pub async fn read_response(&mut self) -> Result<Option<Response>, ClientError> {
        loop {
            if let Some(f) = decode_frame(&mut self.input, self.max_frame)? {
                return Ok(Some(Response::decode(f)?));
            }
            if self.stream.read_buf(&mut self.input).await? == 0 {
                return Ok(None);
            }
        }
    }

    /// Whether the milter has closed the connection (reads until EOF; any data is an error).
    pub async fn expect_closed(&mut self) -> Result<(), ClientError> {
        match self.read_response().await? {
            None => Ok(()),
            Some(r) => Err(Violation::Unexpected {
                got: crate::response::response_name(r.code()),
                to: "nothing (connection should close)",
            }
            .into()),
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// CONNECT for an IPv4 client.
    pub async fn connect_inet(
        &mut self,
        hostname: &str,
        address: &str,
        port: u16,
    ) -> Result<Option<Reply>, ClientError> {
        let family = if address.contains(':') {
            Family::Inet6
        } else {
            Family::Inet
        };
        self.send(Command::Connect(Connect {
            hostname: Bytes::from(hostname.to_owned()),
            family,
            port,
            address: Bytes::from(address.to_owned()),
        }))
        .await
    }

    /// HELO.
    pub async fn helo(&mut self, name: &str) -> Result<Option<Reply>, ClientError> {
        self.send(Command::Helo(Bytes::from(name.to_owned()))).await
    }

    /// MAIL FROM with ESMTP arguments.
    pub async fn mail(&mut self, from: &str, args: &[&str]) -> Result<Option<Reply>, ClientError> {
        self.send(Command::Mail(envelope(from, args))).await
    }

    /// RCPT TO with ESMTP arguments.
    pub async fn rcpt(&mut self, to: &str, args: &[&str]) -> Result<Option<Reply>, ClientError> {
        self.send(Command::Rcpt(envelope(to, args))).await
    }

    /// DATA.
    pub async fn data(&mut self) -> Result<Option<Reply>, ClientError> {
        self.send(Command::Data).await
    }

    /// One header.
    pub async fn header(&mut self, name: &str, value: &str) -> Result<Option<Reply>, ClientError> {
        self.send(Command::Header {
            name: Bytes::from(name.to_owned()),
            value: Bytes::from(value.to_owned()),
        })
        .await
    }

    /// End of headers.
    pub async fn eoh(&mut self) -> Result<Option<Reply>, ClientError> {
        self.send(Command::Eoh).await
    }

    /// The body, in chunks of 65535 bytes like Postfix. Stops early on SKIP or a final
    /// verdict and returns that reply; otherwise the last chunk's reply.
    pub async fn body(&mut self, body: &[u8]) -> Result<Option<Reply>, ClientError> {
        let mut last = None;
        for chunk in body.chunks(CHUNK_SIZE) {
            let r = self
                .send(Command::Body(Bytes::copy_from_slice(chunk)))
                .await?;
            if let Some(reply) = &r
                && reply.action != Action::Continue
            {
                return Ok(r);
            }
            last = r;
        }
        Ok(last)
    }

    /// End of message: the edits and the verdict.
    pub async fn eom(&mut self) -> Result<Reply, ClientError> {
        self.send(Command::BodyEob(Bytes::new()))
            .await?
            .ok_or(ClientError::Closed)
    }

    /// ABORT (no reply).
    pub async fn abort(&mut self) -> Result<(), ClientError> {
        self.send(Command::Abort).await.map(|_| ())
    }

    /// QUIT (no reply).
    pub async fn quit(&mut self) -> Result<(), ClientError> {
        self.send(Command::Quit).await.map(|_| ())
    }
}

fn envelope(addr: &str, args: &[&str]) -> Envelope {
    Envelope {
        address: Bytes::from(addr.to_owned()),
        args: args.iter().map(|a| Bytes::from(a.to_string())).collect(),
    }
}
