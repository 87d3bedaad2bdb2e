//! A small admin API client (hyper, one HTTP/1.1 connection per request) for `wasmail
//! ctl`: it connects where `[admin] listen` says and sends the token from `token_file`.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpStream, UnixStream};
use wasmail_milter::net::{SocketSpec, Stream};

use super::api::ErrorBody;
use super::config::AdminSection;
use crate::registry::password::Secret;

/// Longest wait for the connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for an answer: a stop may take `[fastcontainer] stop_grace` (up to 10 min)
/// and a prewarm `start_timeout`.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The configuration does not say how to reach the API.
    #[error("{0}")]
    Config(String),
    /// Connecting failed.
    #[error(
        "cannot connect to the admin API at {addr} (is `wasmail serve` running with this [admin] section?): {source}"
    )]
    Connect {
        /// The address.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("admin API at {addr}: {message}")]
    Http {
        /// The address.
        addr: String,
        /// What failed.
        message: String,
    },
    /// The server answered with an error.
    #[error("admin API: {status}: {message}")]
    Api {
        /// The HTTP status.
        status: StatusCode,
        /// The server's `error` message (or the raw body).
        message: String,
    },
}

/// An answer with a success status.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The status (2xx).
    pub status: StatusCode,
    /// The body.
    pub body: Bytes,
}

/// Where and how to reach the admin API.
#[derive(Debug)]
pub struct Client {
    addr: SocketSpec,
    token: Option<Secret>,
}

impl Client {
    /// A client for `section` (reads the token file now).
    pub fn new(section: &AdminSection) -> Result<Client, ClientError> {
        let addr = section.endpoint().map_err(ClientError::Config)?;
        let token = section.read_token().map_err(ClientError::Config)?;
        Ok(Client { addr, token })
    }

    /// The address in config spelling.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Sends one request; an answer outside 2xx is [`ClientError::Api`] with the server's
    /// message.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Answer, ClientError> {
        let addr = self.addr();
        let http = |message: String| ClientError::Http {
            addr: addr.clone(),
            message,
        };
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, self.connect())
            .await
            .unwrap_or_else(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no connection within {CONNECT_TIMEOUT:?}"),
                ))
            })
            .map_err(|source| ClientError::Connect {
                addr: addr.clone(),
                source,
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| http(format!("handshake: {e}")))?;
        let driver = tokio::spawn(conn);

        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, "wasmail-admin");
        if let Some(token) = &self.token {
            let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
                .map_err(|_| ClientError::Config("the admin token is not a valid header".into()))?;
            value.set_sensitive(true);
            req = req.header(AUTHORIZATION, value);
        }
        let payload = match body {
            Some(v) => {
                req = req.header(CONTENT_TYPE, "application/json");
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(payload))
            .map_err(|e| http(format!("request: {e}")))?;
        let exchange = async {
            let resp = sender.send_request(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        };
        let result = tokio::time::timeout(REQUEST_TIMEOUT, exchange).await;
        driver.abort();
        let (status, body) = match result {
            Err(_) => return Err(http(format!("no answer within {REQUEST_TIMEOUT:?}"))),
            Ok(Err(e)) => return Err(http(e.to_string())),
            Ok(Ok(x)) => x,
        };
        if status.is_success() {
            return Ok(Answer { status, body });
        }
        let message = serde_json::from_slice::<ErrorBody>(&body)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).trim().to_string());
        Err(ClientError::Api { status, message })
    }

    async fn connect(&self) -> std::io::Result<Stream> {
        Ok(match &self.addr {
            SocketSpec::Unix(p) => Stream::Unix(UnixStream::connect(p).await?),
            SocketSpec::Tcp { host, port } => {
                Stream::Tcp(TcpStream::connect((host.as_str(), *port)).await?, false)
            }
        })
    }
}
