//! The admin API's HTTP/1.1 driver (hyper): binds `[admin] listen`, serves each
//! connection with [`Admin::handle`], and on shutdown lets requests in flight finish
//! while idle keep-alive connections close.

use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use tokio::sync::{Semaphore, watch};
use tracing::{Instrument, debug, info, warn};
use wasmail_milter::net::{SocketSpec, Stream};

use super::api::{Admin, Reply};
use crate::listen;
use crate::serve::{ServiceFuture, Shared};

/// Largest request body accepted (the only body is a small JSON object).
pub const MAX_BODY: usize = 64 * 1024;
/// Most concurrent admin connections.
pub const MAX_CONNECTIONS: usize = 64;
/// A client must send a request's headers within this time.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the admin listener from `shared.config.admin` and returns the service future.
pub async fn start(
    shared: &Shared,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<ServiceFuture> {
    let section = shared.config.admin.clone().context("no [admin] section")?;
    let spec = section
        .endpoint()
        .map_err(anyhow::Error::msg)
        .context("[admin] listen")?;
    let token = section.read_token().map_err(anyhow::Error::msg)?;
    if let Some(path) = &section.token_file
        && let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        warn!(
            token_file = %path.display(),
            mode = format_args!("{:o}", meta.permissions().mode() & 0o777),
            "admin token file is readable by other users; chmod 600 it"
        );
    }
    let mode = match spec {
        SocketSpec::Unix(_) => listen::parse_mode(&section.socket_mode),
        SocketSpec::Tcp { .. } => None,
    };
    let listener = listen::bind(&spec.to_string(), mode, "[admin] listen").await?;
    info!(
        listen = %listen::local(&listener),
        token = token.is_some(),
        "admin API listening"
    );
    let admin = Arc::new(Admin::new(shared.clone(), token));
    Ok(Box::pin(listen::serve(
        "admin",
        listener,
        Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        shutdown,
        move |stream, _peer, shutdown| connection(stream, admin.clone(), shutdown),
    )))
}

/// Serves one connection until the client closes it or shutdown; a request in flight at
/// shutdown is answered first.
async fn connection(stream: Stream, admin: Arc<Admin>, shutdown: watch::Receiver<bool>) {
    let service = service_fn(move |req| {
        let admin = admin.clone();
        async move { Ok::<_, Infallible>(respond(&admin, req).await) }
    });
    listen::serve_http1(stream, service, HEADER_TIMEOUT, shutdown, "admin").await;
}

async fn respond(admin: &Admin, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let span =
        tracing::info_span!("admin.request", method = %parts.method, path = parts.uri.path());
    async {
        let body = match Limited::new(body, MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                let status = if e.is::<http_body_util::LengthLimitError>() {
                    StatusCode::PAYLOAD_TOO_LARGE
                } else {
                    StatusCode::BAD_REQUEST
                };
                return into_response(Reply::error(status, format!("reading the body: {e}")));
            }
        };
        let auth = parts.headers.get(AUTHORIZATION).map(HeaderValue::as_bytes);
        let reply = admin
            .handle(&parts.method, parts.uri.path(), auth, &body)
            .await;
        debug!(status = reply.status.as_u16(), "admin request");
        into_response(reply)
    }
    .instrument(span)
    .await
}

fn into_response(reply: Reply) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(reply.body));
    *resp.status_mut() = reply.status;
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(reply.content_type));
    for (name, value) in reply.headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
    resp
}
