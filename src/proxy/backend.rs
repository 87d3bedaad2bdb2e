//! Logging in at the worker: over a connection to its IMAP or POP3 socket (a
//! [`WorkerStream`]: the unix socket here, or a relay to the owner host), read the greeting,
//! authenticate with SASL PLAIN and an initial response (`AUTHENTICATE PLAIN` with
//! SASL-IR for IMAP, `AUTH PLAIN` for POP3: one round trip, and any password a client
//! could send fits), and check the answer. The worker treats unix-socket clients as
//! secured, so plaintext authentication is allowed there.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Protocol;
use super::sasl::encode_plain;
use crate::cluster::WorkerStream;
use crate::registry::password::Secret;

/// Longest line accepted from the worker during login.
const MAX_LINE: usize = 64 * 1024;
/// The tag of the proxy's login command at the worker.
const TAG: &str = "W1";

/// Errors of the worker login.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Connecting, reading or writing failed.
    #[error("worker {worker}: {source}")]
    Io {
        /// The worker (domain and socket, and the host when relayed).
        worker: String,
        /// The error.
        source: std::io::Error,
    },
    /// The worker refused the login (its text).
    #[error("the worker refused the login: {0}")]
    Refused(String),
    /// The worker said something unexpected.
    #[error("unexpected answer from the worker: {0}")]
    Protocol(String),
    /// The worker did not answer in time.
    #[error("the worker did not answer within {0:?}")]
    Timeout(Duration),
}

/// A logged-in worker connection.
#[derive(Debug)]
pub struct Backend {
    /// The connection, ready to splice.
    pub stream: WorkerStream,
    /// IMAP untagged lines the worker sent before its tagged OK (to pass on).
    pub untagged: Vec<u8>,
    /// The text after `OK` / `+OK` (for IMAP usually `[CAPABILITY ...] Logged in`).
    pub text: String,
    /// Bytes the worker sent after its answer (to pass on).
    pub leftover: BytesMut,
}

/// Logs `user` in over `stream` (connected to the worker's socket; `worker` names it in
/// errors).
pub async fn login(
    protocol: Protocol,
    stream: WorkerStream,
    worker: &str,
    user: &str,
    password: &Secret,
    timeout: Duration,
) -> Result<Backend, BackendError> {
    match tokio::time::timeout(
        timeout,
        login_inner(protocol, stream, worker, user, password),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(BackendError::Timeout(timeout)),
    }
}

async fn login_inner(
    protocol: Protocol,
    mut stream: WorkerStream,
    worker: &str,
    user: &str,
    password: &Secret,
) -> Result<Backend, BackendError> {
    let io = |source| BackendError::Io {
        worker: worker.to_string(),
        source,
    };
    let mut buf = BytesMut::with_capacity(4096);
    let greeting = read_line(&mut stream, &mut buf).await.map_err(io)?;
    let ok_greeting = match protocol {
        Protocol::Imap => greeting.starts_with("* OK"),
        Protocol::Pop3 => greeting.starts_with("+OK"),
    };
    if !ok_greeting {
        return Err(BackendError::Protocol(format!("greeting {greeting:?}")));
    }
    let ir = encode_plain(user, password);
    let cmd = match protocol {
        Protocol::Imap => Secret::new(format!("{TAG} AUTHENTICATE PLAIN {}\r\n", ir.expose())),
        Protocol::Pop3 => Secret::new(format!("AUTH PLAIN {}\r\n", ir.expose())),
    };
    stream
        .write_all(cmd.expose().as_bytes())
        .await
        .map_err(io)?;
    let mut untagged = Vec::new();
    loop {
        let line = read_line(&mut stream, &mut buf).await.map_err(io)?;
        match protocol {
            Protocol::Imap => {
                if line.starts_with("* ") {
                    untagged.extend_from_slice(line.as_bytes());
                    untagged.extend_from_slice(b"\r\n");
                    continue;
                }
                let Some(rest) = line.strip_prefix(TAG).and_then(|r| r.strip_prefix(' ')) else {
                    return Err(BackendError::Protocol(line));
                };
                let (status, text) = rest.split_once(' ').unwrap_or((rest, ""));
                return match status {
                    "OK" => Ok(Backend {
                        stream,
                        untagged,
                        text: text.to_string(),
                        leftover: buf,
                    }),
                    "NO" | "BAD" => Err(BackendError::Refused(text.to_string())),
                    _ => Err(BackendError::Protocol(line)),
                };
            }
            Protocol::Pop3 => {
                if let Some(text) = line.strip_prefix("+OK") {
                    return Ok(Backend {
                        stream,
                        untagged,
                        text: text.trim_start().to_string(),
                        leftover: buf,
                    });
                }
                if let Some(text) = line.strip_prefix("-ERR") {
                    return Err(BackendError::Refused(text.trim_start().to_string()));
                }
                return Err(BackendError::Protocol(line));
            }
        }
    }
}

/// Reads one CRLF line (without it) into a string; EOF and overlong lines are errors.
async fn read_line(stream: &mut WorkerStream, buf: &mut BytesMut) -> std::io::Result<String> {
    loop {
        if let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            let raw = buf.split_to(nl + 1);
            let line = raw[..nl].strip_suffix(b"\r").unwrap_or(&raw[..nl]);
            return Ok(String::from_utf8_lossy(line).into_owned());
        }
        if buf.len() > MAX_LINE {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "line too long",
            ));
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the worker closed the connection",
            ));
        }
    }
}
