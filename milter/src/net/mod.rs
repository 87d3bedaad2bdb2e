//! The tokio driver: listeners, the accept loop, the per-connection session driver and an
//! async client (the MTA role, for tests and load generation).

mod addr;
mod client;
mod loops;
mod server;

pub use addr::{AddrError, SocketSpec};
pub use client::{ClientError, MilterClient};
pub use loops::{Detached, EventLoops, LoopLoad, Place, Placement, SharedListener, spawn_placed};
pub use server::{
    Listener, MilterFactory, Peer, Report, ServerConfig, SessionError, SessionStats, Stream,
    Transport, run_session, serve,
};
