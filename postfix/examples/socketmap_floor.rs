//! The floor for lookup benchmarks: a minimal socketmap server that answers every request
//! with the same `OK` value, using this crate's codec. It does everything wasmail's lookup
//! responder does except the lookup itself (no table resolution, no key folding, no
//! registry or plugin), so a responder's throughput divided by this one's is the share
//! left after the lookup's own cost.
//!
//! ```text
//! cargo run --release -p wasmail-postfix --example socketmap_floor -- /tmp/floor.sock [VALUE]
//! ```
//!
//! `VALUE` defaults to `example.com/alice/` (the size of a `virtual_mailbox_maps` answer).
//! Runs until killed. Same shape as the responder: with `LOOPS=N` in the environment (to
//! match `[server] event_loops`), wasmail's N event loops (the milter crate's
//! `EventLoops`: all accepting on the socket, a connection kept by the loop that accepted
//! it unless another has fewer); with `LOOPS=0` (the default), a multi-thread tokio runtime
//! with 2 workers (`WORKERS=N` to match `[server] worker_threads`). One task per connection; each pass decodes every complete request
//! already buffered and answers them with one write (pipelining-safe).

use std::path::PathBuf;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;
use wasmail_milter::net::{EventLoops, Listener, Placement, SocketSpec, Stream, spawn_placed};
use wasmail_postfix::socketmap::{self, DEFAULT_MAX_REQUEST, Reply};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let Some(path) = args.next().map(PathBuf::from) else {
        eprintln!("usage: socketmap_floor SOCKET-PATH [VALUE]");
        std::process::exit(2);
    };
    let value = args
        .next()
        .map(|v| v.to_string_lossy().into_owned())
        .unwrap_or_else(|| "example.com/alice/".into());
    let reply = Reply::Ok(Bytes::from(value));
    let workers = std::env::var("WORKERS")
        .ok()
        .and_then(|w| w.parse().ok())
        .filter(|&w: &usize| w > 0)
        .unwrap_or(2);
    let loops = std::env::var("LOOPS")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or(0usize);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?
        .block_on(async {
            let _ = std::fs::remove_file(&path);
            let listener = Listener::bind(&SocketSpec::Unix(path.clone()), None).await?;
            eprintln!("socketmap_floor listening on {}", path.display());
            if loops == 0 {
                return accept_loop(listener, None, reply).await;
            }
            EventLoops::start(loops, "floor-loop")?
                .run_accept_loops(listener, move |listener, placement| {
                    accept_loop(listener, Some(placement), reply.clone())
                })
                .await
        })
}

/// Accepts and serves connections; with event loops, each on the loop wasmail's
/// placement rule picks (the accepting loop unless another has fewer connections).
async fn accept_loop(
    listener: Listener,
    placement: Option<Placement>,
    reply: Reply,
) -> std::io::Result<()> {
    let (Listener::Unix(l, _) | Listener::UnixShared(l, _)) = &listener else {
        unreachable!("bound to a unix socket")
    };
    let mut tasks = JoinSet::new();
    loop {
        let (stream, _) = l.accept().await?;
        let stream = Stream::Unix(stream);
        let reply = reply.clone();
        spawn_placed(
            &mut tasks,
            placement.as_ref(),
            stream,
            move |stream| async move {
                match stream {
                    Ok(stream) => {
                        if let Err(e) = connection(stream, &reply).await {
                            eprintln!("socketmap_floor: connection: {e}");
                        }
                    }
                    Err(e) => eprintln!("socketmap_floor: moving a connection: {e}"),
                }
            },
        );
        while tasks.try_join_next().is_some() {}
    }
}

async fn connection(mut stream: Stream, reply: &Reply) -> std::io::Result<()> {
    let mut buf = BytesMut::with_capacity(4096);
    let mut out = BytesMut::with_capacity(512);
    loop {
        // Answer every complete request already buffered, then write once.
        loop {
            match socketmap::decode_request(&mut buf, DEFAULT_MAX_REQUEST) {
                Ok(Some(_request)) => socketmap::encode_reply(reply, &mut out),
                Ok(None) => break,
                Err(e) => {
                    return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e));
                }
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(8192);
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}
