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
//! match `[server] event_loops`), N threads with a single-threaded tokio runtime each, all
//! accepting on the socket and serving the connections they accepted; with `LOOPS=0` (the
//! default), a multi-thread tokio runtime with 2 workers (`WORKERS=N` to match `[server]
//! worker_threads`). One task per connection; each pass decodes every complete request
//! already buffered and answers them with one write (pipelining-safe).

use std::path::PathBuf;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
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
    let _ = std::fs::remove_file(&path);
    let listener = std::os::unix::net::UnixListener::bind(&path)?;
    listener.set_nonblocking(true)?;
    eprintln!("socketmap_floor listening on {}", path.display());
    if loops == 0 {
        return tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_io()
            .build()?
            .block_on(async { serve(UnixListener::from_std(listener)?, reply).await });
    }
    let threads: Vec<_> = (0..loops)
        .map(|_| {
            let listener = listener.try_clone()?;
            let reply = reply.clone();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()?;
            Ok(std::thread::spawn(move || {
                runtime.block_on(async { serve(UnixListener::from_std(listener)?, reply).await })
            }))
        })
        .collect::<std::io::Result<_>>()?;
    for t in threads {
        t.join().expect("a floor loop panicked")?;
    }
    Ok(())
}

async fn serve(listener: UnixListener, reply: Reply) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let reply = reply.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, &reply).await {
                eprintln!("socketmap_floor: connection: {e}");
            }
        });
    }
}

async fn connection(mut stream: UnixStream, reply: &Reply) -> std::io::Result<()> {
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
