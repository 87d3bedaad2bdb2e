//! The lookup listeners: one socketmap listener serving every table, and one tcp_table
//! listener per configured table. Each connection is a loop: decode one request, resolve
//! it through [`Tables`], encode one reply. Postfix keeps connections open and sends
//! requests one at a time; pipelined requests are answered in order.
//!
//! Bad input (a malformed netstring, an over-long line) is logged with the peer and the
//! connection closed, as Postfix's own servers do; a tcp_table `400` also closes the
//! connection, as Postfix expects.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Semaphore, watch};
use tracing::{debug, info, warn};
use wasmail_milter::net::EventLoops;
use wasmail_postfix::{socketmap, tcp};

use super::config::LookupSection;
use super::tables::{Answer, Tables};
use crate::listen;
use crate::serve::ServiceFuture;

/// Binds the listeners of `section` now (so a bad address fails start-up) and returns the
/// service future.
pub async fn start(
    section: LookupSection,
    tables: Tables,
    loops: Option<EventLoops>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<ServiceFuture> {
    let tables = Arc::new(tables);
    let mode = listen::parse_mode(&section.socket_mode);
    let limit = Arc::new(Semaphore::new(section.max_connections));
    let idle = section.idle_timeout;
    let mut runs: Vec<ServiceFuture> = Vec::new();
    if !section.socketmap.is_empty() {
        let l = listen::bind(&section.socketmap, mode, "[lookup] socketmap").await?;
        info!(listen = %listen::local(&l), tables = ?tables.names(), "socketmap listening");
        let t = tables.clone();
        let max = section.max_request;
        runs.push(Box::pin(listen::serve_on(
            "socketmap",
            l,
            limit.clone(),
            shutdown.clone(),
            loops.clone(),
            move |stream, peer, shutdown| {
                let t = t.clone();
                async move { socketmap_conn(stream, &peer, &t, max, idle, shutdown).await }
            },
        )));
    }
    for (table, spec) in &section.tcp {
        if !tables.serves(table) {
            anyhow::bail!("[lookup] tcp.{table}: no such table");
        }
        let l = listen::bind(spec, mode, &format!("[lookup] tcp.{table}")).await?;
        info!(listen = %listen::local(&l), table, "tcp_table listening");
        let t = tables.clone();
        let table: Arc<str> = table.as_str().into();
        runs.push(Box::pin(listen::serve_on(
            "tcp_table",
            l,
            limit.clone(),
            shutdown.clone(),
            loops.clone(),
            move |stream, peer, shutdown| {
                let t = t.clone();
                let table = table.clone();
                async move { tcp_conn(stream, &peer, &t, &table, idle, shutdown).await }
            },
        )));
    }
    Ok(Box::pin(async move {
        let results = futures_join_all(runs).await;
        for r in results {
            r.context("lookup listener")?;
        }
        Ok(())
    }))
}

async fn futures_join_all(runs: Vec<ServiceFuture>) -> Vec<anyhow::Result<()>> {
    let mut set = tokio::task::JoinSet::new();
    for r in runs {
        set.spawn(r);
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        out.push(r.unwrap_or_else(|e| Err(anyhow::anyhow!("listener task: {e}"))));
    }
    out
}

fn to_socketmap(a: Answer) -> socketmap::Reply {
    match a {
        Answer::Found(v) => socketmap::Reply::Ok(v.into()),
        Answer::NotFound => socketmap::Reply::NotFound,
        Answer::Temp(r) => socketmap::Reply::Temp(r),
        Answer::Perm(r) => socketmap::Reply::Perm(r),
    }
}

async fn socketmap_conn<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    peer: &str,
    tables: &Tables,
    max_request: usize,
    idle: Duration,
    shutdown: watch::Receiver<bool>,
) {
    let mut buf = BytesMut::with_capacity(4096);
    let mut out = BytesMut::with_capacity(512);
    let mut wait = listen::ReadWait::new(idle, &shutdown);
    loop {
        // Answer every complete request already buffered, then write once.
        loop {
            match socketmap::decode_request(&mut buf, max_request) {
                Ok(Some(req)) => {
                    let answer = tables.lookup(&req.table, &req.key);
                    log_answer("socketmap", &req.table, &req.key, &answer);
                    socketmap::encode_reply(&to_socketmap(answer), &mut out);
                }
                Ok(None) => break,
                Err(e) => {
                    warn!(peer, error = %e, "bad socketmap request; closing the connection");
                    let _ = listen::write(&mut stream, &mut out, peer).await;
                    return;
                }
            }
        }
        if !listen::next_round(&mut stream, &mut buf, &mut out, &mut wait, &shutdown, peer).await {
            return;
        }
    }
}

async fn tcp_conn<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    peer: &str,
    tables: &Tables,
    table: &str,
    idle: Duration,
    shutdown: watch::Receiver<bool>,
) {
    let mut buf = BytesMut::with_capacity(4096);
    let mut out = BytesMut::with_capacity(512);
    let mut wait = listen::ReadWait::new(idle, &shutdown);
    loop {
        loop {
            match tcp::decode_request(&mut buf) {
                Ok(Some(tcp::Request::Get(key))) => {
                    let answer = tables.lookup(table, &key);
                    log_answer("tcp_table", table, &key, &answer);
                    let close = matches!(answer, Answer::Temp(_) | Answer::Perm(_));
                    let reply = match answer {
                        Answer::Found(v) => tcp::Reply::Found(v.into_bytes()),
                        Answer::NotFound => tcp::Reply::NotFound("not found".into()),
                        // tcp_table has no permanent error: Postfix retries a 400.
                        Answer::Temp(r) | Answer::Perm(r) => tcp::Reply::Temp(r),
                    };
                    tcp::encode_reply(&reply, &mut out);
                    if close {
                        // Postfix closes after a 400; so do we.
                        let _ = listen::write(&mut stream, &mut out, peer).await;
                        return;
                    }
                }
                Ok(Some(tcp::Request::Unsupported(verb))) => {
                    warn!(
                        peer,
                        verb, "tcp_table request other than `get`; answering 400 and closing"
                    );
                    tcp::encode_reply(
                        &tcp::Reply::Temp(format!("unsupported request {verb}")),
                        &mut out,
                    );
                    let _ = listen::write(&mut stream, &mut out, peer).await;
                    return;
                }
                Ok(None) => break,
                Err(e) => {
                    warn!(peer, error = %e, "bad tcp_table request; answering 400 and closing");
                    tcp::encode_reply(&tcp::Reply::Temp("bad request".into()), &mut out);
                    let _ = listen::write(&mut stream, &mut out, peer).await;
                    return;
                }
            }
        }
        if !listen::next_round(&mut stream, &mut buf, &mut out, &mut wait, &shutdown, peer).await {
            return;
        }
    }
}

fn log_answer(proto: &str, table: &str, key: &[u8], answer: &Answer) {
    match answer {
        Answer::Temp(r) | Answer::Perm(r) => warn!(
            proto,
            table,
            key = %String::from_utf8_lossy(key),
            answer = if matches!(answer, Answer::Temp(_)) { "TEMP" } else { "PERM" },
            reason = %r,
            "lookup failed"
        ),
        _ => debug!(proto, table, key = %String::from_utf8_lossy(key), ?answer, "lookup"),
    }
}
