//! The LMTP client side: one connection to one worker's `lmtp` socket for one mail
//! transaction (greeting, `LHLO`, `MAIL FROM`, a `RCPT TO` per recipient, then `DATA`
//! and one reply per accepted recipient).
//!
//! The connection is a [`WorkerStream`]: the worker's unix socket on this host, or a relay
//! to the domain's owner host (the LMTP dialogue is the same either way).
//!
//! Every wait is bounded by the timeout given to [`WorkerConn::open`]; any I/O error,
//! timeout or unparsable reply is a [`WorkerError`] and the connection is unusable after
//! it (the caller defers the recipients that have no answer yet).

use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::protocol::{Body, Reply};
use crate::cluster::WorkerStream;

/// Longest reply line accepted from a worker.
const MAX_REPLY_LINE: usize = 4096;

/// A failure talking to a worker.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Connecting, reading or writing failed.
    #[error("{op} {worker}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The worker (domain and socket, and the host when relayed).
        worker: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// No answer in time.
    #[error("{op} {worker}: no answer within {timeout:?}")]
    Timeout {
        /// What was being waited for.
        op: &'static str,
        /// The worker.
        worker: String,
        /// The limit.
        timeout: Duration,
    },
    /// The worker said something that is not an LMTP reply, or refused a step of the
    /// session setup.
    #[error("{worker}: {what}")]
    Protocol {
        /// The worker.
        worker: String,
        /// What went wrong, with the worker's words.
        what: String,
    },
}

/// An open LMTP session with a worker, inside one mail transaction.
#[derive(Debug)]
pub struct WorkerConn {
    stream: WorkerStream,
    worker: String,
    buf: BytesMut,
    timeout: Duration,
}

impl WorkerConn {
    /// Over `stream` (connected to the worker's LMTP socket; `worker` names it in errors):
    /// reads the greeting, sends `LHLO hostname` and `MAIL FROM:<sender>` (with `BODY=`
    /// when not 7-bit and the worker offers it).
    pub async fn open(
        stream: WorkerStream,
        worker: &str,
        hostname: &str,
        timeout: Duration,
        sender: &str,
        body: Body,
    ) -> Result<WorkerConn, WorkerError> {
        let mut c = WorkerConn {
            stream,
            worker: worker.to_string(),
            buf: BytesMut::with_capacity(1024),
            timeout,
        };
        let (greeting, _) = c.reply("greeting from").await?;
        c.expect_positive(&greeting, "greeting")?;
        c.write(format!("LHLO {hostname}\r\n").as_bytes()).await?;
        let (lhlo, lines) = c.reply("LHLO reply from").await?;
        c.expect_positive(&lhlo, "LHLO")?;
        let offers = |k: &str| {
            lines
                .iter()
                .any(|l| l.get(4..).is_some_and(|x| x.eq_ignore_ascii_case(k)))
        };
        let mut mail = format!("MAIL FROM:<{sender}>");
        if let Some(p) = body.param()
            && offers(p)
        {
            mail.push_str(&format!(" BODY={p}"));
        }
        mail.push_str("\r\n");
        c.write(mail.as_bytes()).await?;
        let (r, _) = c.reply("MAIL reply from").await?;
        c.expect_positive(&r, "MAIL FROM")?;
        Ok(c)
    }

    /// `RCPT TO:<address>`: the worker's reply (2xx accepted, 4xx/5xx refused).
    pub async fn rcpt(&mut self, address: &str) -> Result<Reply, WorkerError> {
        self.write(format!("RCPT TO:<{address}>\r\n").as_bytes())
            .await?;
        Ok(self.reply("RCPT reply from").await?.0)
    }

    /// Sends `message` with `DATA` (dot-stuffed) and reads one reply per accepted
    /// recipient (`accepted` of them). On an error, the replies read so far come back
    /// with it.
    pub async fn send(
        &mut self,
        message: &[u8],
        accepted: usize,
    ) -> Result<Vec<Reply>, (Vec<Reply>, WorkerError)> {
        let no_replies = |e| (Vec::new(), e);
        self.write(b"DATA\r\n").await.map_err(no_replies)?;
        let (r, _) = self.reply("DATA reply from").await.map_err(no_replies)?;
        if r.code != 354 {
            // Refused as a whole: the same answer for every recipient.
            return Ok(vec![r; accepted]);
        }
        let stuffed = dot_stuff(message);
        self.write(&stuffed).await.map_err(no_replies)?;
        let mut replies = Vec::with_capacity(accepted);
        for _ in 0..accepted {
            match self.reply("reply after the message from").await {
                Ok((r, _)) => replies.push(r),
                Err(e) => return Err((replies, e)),
            }
        }
        Ok(replies)
    }

    /// Ends the session politely (errors ignored: the transaction is over anyway).
    pub async fn quit(mut self) {
        if self.write(b"QUIT\r\n").await.is_ok() {
            let _ = self.reply("QUIT reply from").await;
        }
    }

    fn expect_positive(&self, r: &Reply, step: &str) -> Result<(), WorkerError> {
        if r.is_positive() {
            return Ok(());
        }
        Err(WorkerError::Protocol {
            worker: self.worker.clone(),
            what: format!("{step} refused: {r}"),
        })
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), WorkerError> {
        match tokio::time::timeout(self.timeout, self.stream.write_all(bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(WorkerError::Io {
                op: "write to",
                worker: self.worker.clone(),
                source,
            }),
            Err(_) => Err(WorkerError::Timeout {
                op: "write to",
                worker: self.worker.clone(),
                timeout: self.timeout,
            }),
        }
    }

    /// One reply, possibly multi-line: the final line parsed, and every line's text.
    async fn reply(&mut self, op: &'static str) -> Result<(Reply, Vec<String>), WorkerError> {
        let mut lines = Vec::new();
        loop {
            let line = self.line(op).await?;
            let last = line.as_bytes().get(3) != Some(&b'-');
            if last {
                let r = Reply::parse(&line).ok_or_else(|| WorkerError::Protocol {
                    worker: self.worker.clone(),
                    what: format!("not an LMTP reply: {line:?}"),
                })?;
                lines.push(line);
                return Ok((r, lines));
            }
            lines.push(line);
        }
    }

    async fn line(&mut self, op: &'static str) -> Result<String, WorkerError> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let raw = self.buf.split_to(i + 1);
                let text = String::from_utf8_lossy(&raw);
                return Ok(text.trim_end_matches(['\r', '\n']).to_string());
            }
            if self.buf.len() > MAX_REPLY_LINE {
                return Err(WorkerError::Protocol {
                    worker: self.worker.clone(),
                    what: "reply line too long".into(),
                });
            }
            self.buf.reserve(1024);
            let read = tokio::time::timeout(self.timeout, self.stream.read_buf(&mut self.buf));
            match read.await {
                Ok(Ok(0)) => {
                    return Err(WorkerError::Io {
                        op,
                        worker: self.worker.clone(),
                        source: std::io::ErrorKind::UnexpectedEof.into(),
                    });
                }
                Ok(Ok(_)) => {}
                Ok(Err(source)) => {
                    return Err(WorkerError::Io {
                        op,
                        worker: self.worker.clone(),
                        source,
                    });
                }
                Err(_) => {
                    return Err(WorkerError::Timeout {
                        op,
                        worker: self.worker.clone(),
                        timeout: self.timeout,
                    });
                }
            }
        }
    }
}

/// `message` as `DATA` content: a dot doubled at each line start, a final CRLF added
/// when missing, and the terminating `.` line.
pub fn dot_stuff(message: &[u8]) -> BytesMut {
    let mut out = BytesMut::with_capacity(message.len() + message.len() / 64 + 5);
    let mut rest = message;
    while !rest.is_empty() {
        if rest[0] == b'.' {
            out.extend_from_slice(b".");
        }
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .map_or(rest.len(), |i| i + 1);
        out.extend_from_slice(&rest[..n]);
        rest.advance(n);
    }
    if !out.is_empty() && !out.ends_with(b"\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_stuffing_doubles_leading_dots_and_terminates() {
        assert_eq!(
            &dot_stuff(b"a\r\n.b\r\n..\r\n")[..],
            b"a\r\n..b\r\n...\r\n.\r\n"
        );
        assert_eq!(&dot_stuff(b".")[..], b"..\r\n.\r\n");
        assert_eq!(&dot_stuff(b"no newline")[..], b"no newline\r\n.\r\n");
        assert_eq!(&dot_stuff(b"")[..], b".\r\n");
    }

    #[test]
    fn stuffing_round_trips_through_the_server_session() {
        use super::super::protocol::{Limits, Session, Step};
        for msg in [&b"x\r\n.\r\n..y\r\n"[..], b".\r\n", b"a\nb\n.c\n"] {
            let mut s = Session::new("h", Limits::default());
            let mut buf =
                BytesMut::from(&b"LHLO a\r\nMAIL FROM:<>\r\nRCPT TO:<a@b.c>\r\nDATA\r\n"[..]);
            buf.extend_from_slice(&dot_stuff(msg));
            let mut got = None;
            while let Some(step) = s.advance(&mut buf) {
                match step {
                    Step::Recipient(a) => s.recipient(&a, None),
                    Step::Deliver => {
                        got = Some(s.transaction().unwrap().message.to_vec());
                        s.delivered(Vec::new());
                    }
                    Step::Close => break,
                }
            }
            assert_eq!(got.as_deref(), Some(msg));
        }
    }
}
