//! A no-op milter on the driver (continues everything), the protocol-layer peer of
//! `benches/peers/noop_libmilter.c` for side-by-side runs with the `loadgen` example, and
//! the floor row of `benches/postfix_e2e.sh`: what any milter on this driver costs Postfix
//! before a plugin runs.
//!
//! ```text
//! cargo run --release -p wasmail-milter --features tokio --example noop_server -- \
//!     unix:/tmp/noop.sock [all|all-nr] [hdr]
//! ```
//!
//! - `all` (default): every stage, every command answered.
//! - `all-nr`: what wasmail negotiates: every stage but DATA and unknown commands, no reply
//!   to headers, end of headers and body chunks (the same packets on the wire).
//! - `hdr`: end of message adds one header, like the benchmark plugins and the libmilter
//!   peer's `hdr`.
//!
//! Runtime shape as wasmail's default: the sessions run on the multi-thread runtime's
//! workers; `LOOPS=N` in the environment runs them on N event loops instead, like
//! `[server] event_loops = N`.

use std::sync::Arc;

use bytes::Bytes;
use wasmail_milter::net::{
    EventLoops, Listener, MilterFactory, Peer, ServerConfig, SocketSpec, serve,
};
use wasmail_milter::{
    Action, Actions, Context, Milter, Modification, Needs, OptNeg, Stage, StageSet,
};

#[derive(Clone, Copy)]
struct Noop {
    same_wire: bool,
    add_header: bool,
}

impl Milter for Noop {
    fn negotiate(&mut self, _offer: &OptNeg) -> Needs {
        let mut needs = Needs::default();
        if self.same_wire {
            needs.stages = StageSet::ALL.without(Stage::Data).without(Stage::Unknown);
            needs.replies = StageSet::ALL
                .without(Stage::Header)
                .without(Stage::Eoh)
                .without(Stage::Body);
        }
        if self.add_header {
            needs.actions = Actions::ADD_HEADERS;
        }
        needs
    }

    async fn eom(&mut self, _cx: &Context<'_>, edits: &mut Vec<Modification>) -> Action {
        if self.add_header {
            edits.push(Modification::AddHeader {
                name: Bytes::from_static(b"X-Bench"),
                value: Bytes::from_static(b"noop_server"),
            });
        }
        Action::Continue
    }
}

struct Factory(Noop);
impl MilterFactory for Factory {
    type Milter = Noop;
    fn new_milter(&self, _peer: &Peer) -> Noop {
        self.0
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let spec: SocketSpec = args
        .next()
        .unwrap_or_else(|| "unix:/tmp/wasmail-noop.sock".into())
        .parse()
        .map_err(std::io::Error::other)?;
    let mut noop = Noop {
        same_wire: false,
        add_header: false,
    };
    for arg in args {
        match arg.as_str() {
            "all" => noop.same_wire = false,
            "all-nr" => noop.same_wire = true,
            "hdr" => noop.add_header = true,
            other => {
                return Err(std::io::Error::other(format!(
                    "unknown argument {other:?}; usage: noop_server SOCKET [all|all-nr] [hdr]"
                )));
            }
        }
    }
    let loops = match std::env::var("LOOPS").ok().and_then(|n| n.parse().ok()) {
        None | Some(0) => None,
        Some(n) => Some(n),
    };
    let config = ServerConfig {
        event_loops: loops
            .map(|n| EventLoops::start(n, "noop-loop"))
            .transpose()?,
        ..ServerConfig::default()
    };
    let listener = Listener::bind(&spec, Some(0o666)).await?;
    let (_stop, rx) = tokio::sync::watch::channel(false);
    serve(listener, Arc::new(Factory(noop)), config, rx).await
}
