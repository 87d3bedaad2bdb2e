//! The IMAP session after login when the domain's hook chain subscribes to
//! `imap-command`: the client→worker direction goes command by command through the
//! [`Framer`] and the hooks; the worker→client direction is copied unchanged, followed by
//! the [`ResponseScanner`] only to place the proxy's own replies between responses and to
//! see the worker's answer to a synchronizing literal. See [`super::commands`].
//!
//! Two futures on the connection's task: `up` (client → hooks → worker) and `down`
//! (worker → client, plus the replies `up` hands over a small channel).

use std::io;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use super::commands::{self, Framer, Head, Item, LineTooLong, Response, ResponseScanner};
use crate::host::calls::{HookEvent, HookSession};
use crate::listen;
use crate::mailhook::{HookChain, Outcome};

/// Read buffer per direction.
const BUFFER: usize = 64 * 1024;

/// Who the session is, for the hooks.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The chain (global hooks, then the domain's).
    pub hooks: &'a HookChain,
    /// The user's domain.
    pub domain: &'a str,
    /// The logged-in user.
    pub user: &'a str,
    /// The hook session (protocol, addresses, TLS).
    pub session: &'a HookSession,
}

/// Waiting for the worker's answer to a synchronizing literal of the command `tag`.
type Waiter = Mutex<Option<(Vec<u8>, oneshot::Sender<bool>)>>;

/// Runs the session until either side closes, it is idle for `idle`, or shutdown;
/// `pending` holds client bytes sent after the login command. Returns bytes
/// client→worker, worker→client, and why it ended.
pub async fn splice<C: AsyncRead + AsyncWrite + Unpin>(
    client: &mut C,
    worker: &mut crate::cluster::WorkerStream,
    pending: BytesMut,
    ctx: Context<'_>,
    idle: Duration,
    shutdown: &mut watch::Receiver<bool>,
) -> (u64, u64, &'static str) {
    let base = Instant::now();
    let last = AtomicU64::new(0);
    let (to_worker, to_client) = (AtomicU64::new(0), AtomicU64::new(0));
    let waiter: Waiter = Mutex::new(None);
    let (tx, rx) = mpsc::channel::<Vec<u8>>(16);
    let touch = || last.store(base.elapsed().as_millis() as u64, Ordering::Relaxed);
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut wr, mut ww) = tokio::io::split(worker);
    let up = up(
        &mut cr, &mut ww, pending, ctx, tx, &waiter, &touch, &to_worker,
    );
    let down = down(&mut wr, &mut cw, rx, &waiter, &touch, &to_client);
    let both = async { tokio::try_join!(up, down) };
    tokio::pin!(both);
    let end = loop {
        let since = Duration::from_millis(last.load(Ordering::Relaxed));
        let wake = tokio::time::Instant::from_std(base + since + idle);
        tokio::select! {
            r = &mut both => break match r {
                Ok(_) => "closed",
                Err(e) => {
                    debug!(error = %e, "hooked session ended with an error");
                    "error"
                }
            },
            () = tokio::time::sleep_until(wake) => {
                let since = Duration::from_millis(last.load(Ordering::Relaxed));
                if base.elapsed() >= since + idle {
                    break "idle timeout";
                }
            }
            () = listen::flipped(shutdown) => break "shutdown",
        }
    };
    (
        to_worker.load(Ordering::Relaxed),
        to_client.load(Ordering::Relaxed),
        end,
    )
}

/// Client → worker, command by command.
#[allow(clippy::too_many_arguments)]
async fn up<R, W>(
    client: &mut R,
    worker: &mut W,
    mut buf: BytesMut,
    ctx: Context<'_>,
    replies: mpsc::Sender<Vec<u8>>,
    waiter: &Waiter,
    touch: &impl Fn(),
    counted: &AtomicU64,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut framer = Framer::new();
    let mut tag = Vec::new();
    loop {
        loop {
            let item = match framer.next(&mut buf) {
                Ok(Some(item)) => item,
                Ok(None) => break,
                Err(LineTooLong) => {
                    warn!(
                        max = commands::MAX_HEAD,
                        "client sent an overlong command line; closing"
                    );
                    let _ = replies.send(b"* BYE Line too long.\r\n".to_vec()).await;
                    let _ = worker.shutdown().await;
                    return Ok(());
                }
            };
            let (bytes, literal) = match item {
                Item::Drop(_) => continue,
                Item::Forward { bytes, literal } => (bytes, literal),
                Item::Command(head) => {
                    tag = head.tag.clone().into_bytes();
                    if let Some(reply) = decide(ctx, &head).await {
                        framer.decided(false);
                        if replies.send(reply).await.is_err() {
                            return Ok(());
                        }
                        continue;
                    }
                    framer.decided(true);
                    (head.raw, head.literal)
                }
            };
            let answer = match literal {
                Some(l) if l.sync => {
                    let (tx, rx) = oneshot::channel();
                    *waiter.lock().unwrap_or_else(|e| e.into_inner()) = Some((tag.clone(), tx));
                    Some(rx)
                }
                _ => None,
            };
            worker.write_all(&bytes).await?;
            counted.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            if let Some(rx) = answer
                && !rx.await.unwrap_or(false)
            {
                debug!("the worker refused a literal");
                framer.literal_refused();
            }
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(BUFFER);
        }
        if client.read_buf(&mut buf).await? == 0 {
            let _ = worker.shutdown().await;
            return Ok(());
        }
        touch();
    }
}

/// The hooks' verdict on a command head: `None` to forward it, or the reply for the client.
async fn decide(ctx: Context<'_>, head: &Head) -> Option<Vec<u8>> {
    if commands::unfollowable(&head.name) {
        info!(command = %head.name, "command refused: it would hide the session from the hooks");
        return Some(
            format!(
                "{} NO [CANNOT] {} is not available on this connection.\r\n",
                head.tag, head.name
            )
            .into_bytes(),
        );
    }
    if !head.parsed {
        debug!(command = %head.name, "imap-codec does not know this command; hooked by name");
    }
    let event = HookEvent::ImapCommand((
        ctx.session.clone(),
        ctx.user.to_string(),
        head.name.clone(),
        head.args.clone(),
    ));
    match ctx.hooks.run(Some(ctx.domain), event).await {
        Outcome::Allow { delay, .. } => {
            if !delay.is_zero() {
                debug!(?delay, command = %head.name, "hook asked for a delay");
                tokio::time::sleep(delay).await;
            }
            None
        }
        Outcome::Deny { message, by } => {
            info!(plugin = %by, command = %head.name, message = %message, "imap command denied");
            Some(commands::denied(&head.tag, &message))
        }
        Outcome::Tempfail { by } => {
            warn!(plugin = %by, command = %head.name, "imap command hook failed: temporary failure");
            Some(commands::tempfail(&head.tag))
        }
    }
}

/// Worker → client, unchanged; the proxy's replies go in between two responses.
async fn down<R, W>(
    worker: &mut R,
    client: &mut W,
    mut replies: mpsc::Receiver<Vec<u8>>,
    waiter: &Waiter,
    touch: &impl Fn(),
    counted: &AtomicU64,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut scanner = ResponseScanner::new();
    let mut queued: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; BUFFER];
    let mut open = true;
    let mut cuts = Vec::new();
    loop {
        tokio::select! {
            r = worker.read(&mut buf) => {
                let n = r?;
                if n == 0 {
                    // `up` may wait for an answer to a literal that will never come.
                    drop(waiter.lock().unwrap_or_else(|e| e.into_inner()).take());
                    if !queued.is_empty() {
                        let _ = client.write_all(&queued).await;
                    }
                    let _ = client.shutdown().await;
                    return Ok(());
                }
                touch();
                let chunk = &buf[..n];
                cuts.clear();
                scanner.scan(chunk, |at, r| cuts.push((at, r)));
                for (_, r) in &cuts {
                    answer_waiter(waiter, r);
                }
                match cuts.first() {
                    Some(&(at, _)) if !queued.is_empty() => {
                        client.write_all(&chunk[..at]).await?;
                        client.write_all(&queued).await?;
                        queued.clear();
                        client.write_all(&chunk[at..]).await?;
                    }
                    _ => client.write_all(chunk).await?,
                }
                client.flush().await?;
                counted.fetch_add(n as u64, Ordering::Relaxed);
            }
            m = replies.recv(), if open => match m {
                Some(reply) if scanner.at_boundary() && queued.is_empty() => {
                    client.write_all(&reply).await?;
                    client.flush().await?;
                }
                Some(reply) => queued.extend_from_slice(&reply),
                None => open = false,
            },
        }
    }
}

/// Tells `up` how the worker answered its synchronizing literal, if this response says.
fn answer_waiter(waiter: &Waiter, response: &Response) {
    let mut w = waiter.lock().unwrap_or_else(|e| e.into_inner());
    let verdict = match (w.as_ref(), response) {
        (Some(_), Response::Continue) => true,
        (Some((tag, _)), Response::Tagged(t)) if t == tag => false,
        _ => return,
    };
    if let Some((_, tx)) = w.take() {
        let _ = tx.send(verdict);
    }
}
