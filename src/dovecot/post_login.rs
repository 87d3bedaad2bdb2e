//! The post-login socket driver: accepts Dovecot's script-login connections on a unix
//! socket, receives the request together with the client connection's fd
//! (SCM_RIGHTS, `recvmsg`), closes every received fd as soon as the request is read,
//! and answers with [`Endpoints::post_login`]: the reply line, or a close (deny).
//!
//! Each exchange is bounded by `post_login_timeout` and `max_post_login`; a client that
//! disconnects early or sends garbage is logged and dropped.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::UnixStream;
use tokio::sync::{Semaphore, watch};
use tracing::{debug, info, warn};
use wasmail_milter::net::Stream;

use super::config::DovecotSection;
use super::{Endpoints, script_login};
use crate::listen;
use crate::serve::ServiceFuture;

/// Most fds accepted in one message (Dovecot sends one); extra ones are closed.
const MAX_FDS: usize = 8;

/// Binds the post-login socket and returns the service future.
pub async fn start(
    section: &DovecotSection,
    path: &Path,
    endpoints: Arc<Endpoints>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<ServiceFuture> {
    let spec = format!("unix:{}", path.display());
    let mode = listen::parse_mode(&section.post_login_mode);
    let listener = listen::bind(&spec, mode, "[dovecot] post_login").await?;
    info!(socket = %path.display(), "dovecot post-login socket listening");
    let limits = Limits {
        max: section.max_post_login,
        timeout: section.post_login_timeout,
    };
    Ok(Box::pin(listen::serve(
        "dovecot-post-login",
        listener,
        Arc::new(Semaphore::new(section.max_connections)),
        shutdown,
        move |stream, _peer, shutdown| connection(stream, endpoints.clone(), limits, shutdown),
    )))
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    max: usize,
    timeout: Duration,
}

async fn connection(
    stream: Stream,
    endpoints: Arc<Endpoints>,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) {
    let Stream::Unix(mut stream) = stream else {
        warn!("dovecot post-login: not a unix socket connection");
        return;
    };
    let exchange = async {
        let Some(req) = read_request(&stream, &endpoints, limits.max).await else {
            return;
        };
        let user = req.user.clone();
        match endpoints.post_login(req).await {
            Some(reply) => {
                if let Err(e) = stream.write_all(&reply).await {
                    warn!(user = %user, error = %e, "dovecot post-login: writing the reply failed");
                }
            }
            None => debug!(user = %user, "dovecot post-login: closing without a reply"),
        }
    };
    tokio::select! {
        r = tokio::time::timeout(limits.timeout, exchange) => {
            if r.is_err() {
                warn!(timeout_secs = limits.timeout.as_secs_f64(), "dovecot post-login: exchange timed out; closing (Dovecot denies)");
                endpoints.metrics.count("post_login", "timeout");
            }
        }
        () = listen::flipped(&mut shutdown) => {
            debug!("dovecot post-login: shutdown; closing");
        }
    }
}

/// Reads until a whole request is decoded; every received fd is closed before this
/// returns. None (logged) on EOF, garbage, oversize or a read error.
async fn read_request(
    stream: &UnixStream,
    endpoints: &Endpoints,
    max: usize,
) -> Option<script_login::PostLogin> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 4096];
    let mut fds: Vec<OwnedFd> = Vec::new();
    let req = loop {
        match script_login::decode(&buf) {
            Ok(Some(req)) => break req,
            Ok(None) => {}
            Err(e) => {
                warn!(error = %e, "dovecot post-login: bad request; closing");
                endpoints.metrics.count("post_login", "bad_request");
                return None;
            }
        }
        if buf.len() > max {
            warn!(max, "dovecot post-login: request too large; closing");
            endpoints.metrics.count("post_login", "too_large");
            return None;
        }
        if let Err(e) = stream.readable().await {
            debug!(error = %e, "dovecot post-login: socket error");
            return None;
        }
        let got = stream.try_io(Interest::READABLE, || {
            recv_with_fds(stream.as_raw_fd(), &mut chunk)
        });
        match got {
            Ok((0, _)) => {
                warn!(
                    pending = buf.len(),
                    "dovecot post-login: client disconnected before a complete request"
                );
                endpoints.metrics.count("post_login", "disconnected");
                return None;
            }
            Ok((n, received)) => {
                buf.extend_from_slice(&chunk[..n]);
                fds.extend(received);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                debug!(error = %e, "dovecot post-login: read failed");
                return None;
            }
        }
    };
    for fd in &fds {
        debug!(fd = fd.as_raw_fd(), client = %describe_fd(fd), "dovecot post-login: client fd received (closed unused)");
    }
    drop(fds);
    Some(req)
}

/// One `recvmsg`: the byte count and the fds passed with it (owned: closed on drop).
fn recv_with_fds(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut iov = [io::IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let msg = recvmsg::<()>(
        fd,
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    )
    .map_err(io::Error::from)?;
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(raw) = cmsg {
            for r in raw {
                // SAFETY: the kernel installed `r` in this process for this message; we
                // are its only owner.
                fds.push(unsafe { OwnedFd::from_raw_fd(r) });
            }
        }
    }
    if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
        warn!("dovecot post-login: more fds than expected; the kernel dropped the rest");
    }
    Ok((msg.bytes, fds))
}

/// The peer address of a received socket fd, for the debug log.
fn describe_fd(fd: &OwnedFd) -> String {
    match socket2::SockRef::from(fd).peer_addr() {
        Ok(a) => match a.as_socket() {
            Some(ip) => ip.to_string(),
            None => "(not an IP socket)".into(),
        },
        Err(e) => format!("({e})"),
    }
}
