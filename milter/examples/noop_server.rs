//! A no-op milter on the driver (continues everything), the protocol-layer peer of
//! `benches/peers/noop_libmilter.c` for side-by-side runs with the `loadgen` example.
//!
//! ```text
//! cargo run --release -p wasmail-milter --features tokio --example noop_server -- unix:/tmp/noop.sock
//! ```

use std::sync::Arc;

use wasmail_milter::Milter;
use wasmail_milter::net::{Listener, MilterFactory, Peer, ServerConfig, SocketSpec, serve};

struct Noop;
impl Milter for Noop {}

struct Factory;
impl MilterFactory for Factory {
    type Milter = Noop;
    fn new_milter(&self, _peer: &Peer) -> Noop {
        Noop
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let spec: SocketSpec = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "unix:/tmp/wasmail-noop.sock".into())
        .parse()
        .map_err(std::io::Error::other)?;
    let listener = Listener::bind(&spec, Some(0o666)).await?;
    let (_stop, rx) = tokio::sync::watch::channel(false);
    serve(listener, Arc::new(Factory), ServerConfig::default(), rx).await
}
