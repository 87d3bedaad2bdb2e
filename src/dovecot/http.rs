//! The HTTP/1.1 driver (hyper) of the Dovecot endpoints: binds `[dovecot] http`, checks
//! the API key before reading a body, caps bodies at `max_body` (413), and hands the
//! request to [`Endpoints::handle`]. Dovecot keeps connections alive; on shutdown a
//! request in flight is answered and idle connections close.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use tokio::sync::{Semaphore, watch};
use tracing::{Instrument, debug, info, warn};
use wasmail_milter::net::{SocketSpec, Stream};

use super::config::DovecotSection;
use super::{Endpoints, Presented, Reply};
use crate::listen;
use crate::serve::ServiceFuture;

/// A client must send a request's headers within this time; it also bounds how long an
/// idle keep-alive connection stays open. Above the idle times of Dovecot's HTTP
/// clients (10 s for the auth policy), so Dovecot closes first and never sends a
/// request on a connection wasmail is closing.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(65);

/// Binds the HTTP listener and returns the service future.
pub async fn start(
    section: &DovecotSection,
    spec: SocketSpec,
    endpoints: Arc<Endpoints>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<ServiceFuture> {
    let mode = match spec {
        SocketSpec::Unix(_) => listen::parse_mode(&section.http_socket_mode),
        SocketSpec::Tcp { .. } => None,
    };
    let listener = listen::bind(&spec.to_string(), mode, "[dovecot] http").await?;
    info!(
        listen = %listen::local(&listener),
        api_key = endpoints.key.is_some(),
        "dovecot endpoints listening"
    );
    let max_body = section.max_body;
    Ok(Box::pin(listen::serve(
        "dovecot-http",
        listener,
        Arc::new(Semaphore::new(section.max_connections)),
        shutdown,
        move |stream, peer, shutdown| {
            connection(stream, peer, endpoints.clone(), max_body, shutdown)
        },
    )))
}

async fn connection(
    stream: Stream,
    peer: String,
    endpoints: Arc<Endpoints>,
    max_body: usize,
    shutdown: watch::Receiver<bool>,
) {
    let peer: Arc<str> = peer.into();
    let service = service_fn(move |req| {
        let endpoints = endpoints.clone();
        let peer = peer.clone();
        async move { Ok::<_, Infallible>(respond(&endpoints, &peer, max_body, req).await) }
    });
    listen::serve_http1(stream, service, HEADER_TIMEOUT, shutdown, "dovecot").await;
}

async fn respond(
    endpoints: &Endpoints,
    peer: &str,
    max_body: usize,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let span = tracing::info_span!("dovecot.request", method = %parts.method, path = %path);
    async {
        let presented = Presented {
            header: parts
                .headers
                .get(endpoints.key_header())
                .map(HeaderValue::as_bytes),
            query: parts.uri.query(),
        };
        if let Some(refused) = endpoints.check_key(presented, peer, &path) {
            return into_response(refused);
        }
        let read = tokio::time::timeout(
            endpoints.request_timeout,
            Limited::new(body, max_body).collect(),
        );
        let Ok(read) = read.await else {
            warn!(peer, "dovecot: request body not received in time (408)");
            endpoints.metrics.count("http", "body_timeout");
            return into_response(Reply::text(408, "request body timed out\n"));
        };
        let body = match read {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                let too_large = e.is::<http_body_util::LengthLimitError>();
                warn!(peer, error = %e, max_body, "dovecot: request body refused");
                endpoints.metrics.count(
                    "http",
                    if too_large {
                        "body_too_large"
                    } else {
                        "body_error"
                    },
                );
                let status = if too_large { 413 } else { 400 };
                return into_response(Reply::text(status, format!("reading the body: {e}\n")));
            }
        };
        let reply = endpoints
            .handle(parts.method.as_str(), &path, parts.uri.query(), &body)
            .await;
        debug!(status = reply.status, "dovecot request");
        into_response(reply)
    }
    .instrument(span)
    .await
}

fn into_response(reply: Reply) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(reply.body)));
    *resp.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(reply.content_type));
    resp
}
