//! Single-threaded event loops that accepted connections are spread over.
//!
//! A multi-threaded tokio runtime moves work between its workers: when one worker's I/O
//! driver sees a socket become readable, it may wake a parked sibling to run the task, and
//! with request/response protocols of small messages (milter, socketmap, policy) the
//! siblings park and unpark each other many times per message. [`EventLoops`] are N
//! threads, each with its own current-thread runtime, I/O driver and timer, and each
//! accepting on the same listening socket: the kernel gives a new connection to one of the
//! loops waiting in `accept`, and that connection's events are all handled on that one
//! thread, with nothing to hand over. The price is that every loop waiting in `accept`
//! wakes for each new connection (tokio cannot register a listener with
//! `EPOLLEXCLUSIVE`): with short connections (one milter session per SMTP connection) two
//! loops measured no better than two workers, one loop clearly better
//! (`benches/RESULTS.md`, sessions 12 and 13).
//!
//! Which loop wins an `accept` is up to the scheduler, so a burst of connections (Postfix
//! opening its lookup connections at start) could land on one loop and leave the others
//! idle for the connections' whole life. So a loop keeps a connection only while no other
//! loop has fewer; otherwise the connection moves once, at accept, to the least busy loop
//! ([`Placement::place`]).

use std::future::Future;
use std::io;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use super::server::{Listener, Stream};

/// A set of event-loop threads; cheap to clone. The threads stop when the last clone is
/// dropped (tasks still running on them are cancelled then, so keep a clone until the
/// services using them have drained).
#[derive(Clone)]
pub struct EventLoops {
    inner: Arc<Inner>,
}

struct Inner {
    loops: Vec<Loop>,
}

struct Loop {
    handle: Handle,
    /// Connections running on this loop (all services).
    active: Arc<AtomicUsize>,
    /// Dropping it ends the thread's `block_on`.
    _stop: oneshot::Sender<()>,
}

impl std::fmt::Debug for EventLoops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoops")
            .field("connections", &self.connections())
            .finish()
    }
}

impl EventLoops {
    /// Starts `n` (at least 1) event-loop threads named `name-0`, `name-1`, ...
    pub fn start(n: usize, name: &str) -> io::Result<EventLoops> {
        let mut loops = Vec::with_capacity(n.max(1));
        for i in 0..n.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .thread_name(format!("{name}-{i}-blocking"))
                .build()?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    runtime.block_on(async {
                        let _ = stopped.await;
                    });
                    // Blocking-pool threads of this loop are not waited for.
                    runtime.shutdown_background();
                })?;
            loops.push(Loop {
                handle,
                active: Arc::new(AtomicUsize::new(0)),
                _stop: stop,
            });
        }
        Ok(EventLoops {
            inner: Arc::new(Inner { loops }),
        })
    }

    /// How many loops there are.
    pub fn len(&self) -> usize {
        self.inner.loops.len()
    }

    /// Always false: there is at least one loop.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Connections now running on each loop.
    pub fn connections(&self) -> Vec<usize> {
        self.inner
            .loops
            .iter()
            .map(|l| l.active.load(Ordering::Relaxed))
            .collect()
    }
}

/// An accept loop's seat: which loop it runs on, to place the connections it accepts.
#[derive(Debug, Clone)]
pub struct Placement {
    loops: EventLoops,
    here: usize,
}

/// Where an accepted connection runs, with a guard counting it there while it lives.
#[derive(Debug)]
pub enum Place {
    /// On the loop that accepted it.
    Here(LoopLoad),
    /// On a loop with fewer connections: [`Stream::detach`] here, [`Detached::attach`]
    /// in a task spawned on this handle.
    There(Handle, LoopLoad),
}

impl Placement {
    /// This loop while no other has fewer connections, else the one with the fewest.
    pub fn place(&self) -> Place {
        let loops = &self.loops.inner.loops;
        let mut best = self.here;
        let mut least = loops[self.here].active.load(Ordering::Relaxed);
        for (i, l) in loops.iter().enumerate() {
            let n = l.active.load(Ordering::Relaxed);
            if n < least {
                least = n;
                best = i;
            }
        }
        let chosen = &loops[best];
        chosen.active.fetch_add(1, Ordering::Relaxed);
        let load = LoopLoad(chosen.active.clone());
        if best == self.here {
            Place::Here(load)
        } else {
            Place::There(chosen.handle.clone(), load)
        }
    }
}

/// Spawns the task serving an accepted connection into `tasks`: on this runtime when there
/// is no `placement` or it keeps the connection here, else on the loop it picks (the
/// stream is detached here and attached there). `run` gets the stream on the runtime it
/// runs on, or the error that kept it from moving (the connection is then closed).
pub fn spawn_placed<R, Fut>(
    tasks: &mut JoinSet<()>,
    placement: Option<&Placement>,
    stream: Stream,
    run: R,
) where
    R: FnOnce(io::Result<Stream>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    match placement.map(Placement::place) {
        None => {
            tasks.spawn(run(Ok(stream)));
        }
        Some(Place::Here(load)) => {
            tasks.spawn(async move {
                let _load = load;
                run(Ok(stream)).await
            });
        }
        Some(Place::There(on, load)) => match stream.detach() {
            Ok(detached) => {
                tasks.spawn_on(
                    async move {
                        let _load = load;
                        run(detached.attach()).await
                    },
                    &on,
                );
            }
            Err(e) => {
                drop(load);
                tasks.spawn(run(Err(e)));
            }
        },
    }
}

/// Counts one connection on a loop while it lives.
#[derive(Debug)]
pub struct LoopLoad(Arc<AtomicUsize>);

impl Drop for LoopLoad {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A stream taken off the reactor of the runtime that accepted it, to be registered with
/// another runtime's ([`Detached::attach`], called on that runtime).
#[derive(Debug)]
pub enum Detached {
    /// TCP, with whether `TCP_QUICKACK` is re-armed before reads.
    Tcp(std::net::TcpStream, bool),
    /// A unix socket.
    Unix(std::os::unix::net::UnixStream),
}

impl Stream {
    /// Deregisters the stream from its runtime (the socket stays non-blocking).
    pub fn detach(self) -> io::Result<Detached> {
        Ok(match self {
            Stream::Tcp(s, quickack) => Detached::Tcp(s.into_std()?, quickack),
            Stream::Unix(s) => Detached::Unix(s.into_std()?),
        })
    }
}

impl Detached {
    /// Registers the stream with the current runtime. Panics outside a runtime.
    pub fn attach(self) -> io::Result<Stream> {
        Ok(match self {
            Detached::Tcp(s, quickack) => Stream::Tcp(TcpStream::from_std(s)?, quickack),
            Detached::Unix(s) => Stream::Unix(UnixStream::from_std(s)?),
        })
    }
}

/// A listening socket shared by several runtimes: [`SharedListener::attach`] makes a
/// [`Listener`] for the calling runtime (a duplicate of the socket, registered with that
/// runtime's reactor). A unix socket's file is removed when this is dropped.
#[derive(Debug)]
pub struct SharedListener {
    socket: StdListener,
    path: Option<PathBuf>,
}

#[derive(Debug)]
enum StdListener {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

impl Listener {
    /// Takes the listener off its runtime's reactor, to be attached on others.
    pub fn share(self) -> io::Result<SharedListener> {
        let (socket, path) = match &self {
            Listener::Tcp(l) => (
                StdListener::Tcp(std::net::TcpListener::from(l.as_fd().try_clone_to_owned()?)),
                None,
            ),
            Listener::Unix(l, p) | Listener::UnixShared(l, p) => (
                StdListener::Unix(std::os::unix::net::UnixListener::from(
                    l.as_fd().try_clone_to_owned()?,
                )),
                matches!(self, Listener::Unix(..)).then(|| p.clone()),
            ),
        };
        // The file now belongs to the shared listener: drop this one (its registration
        // with this runtime's reactor) without removing it.
        let mut this = self;
        if let Listener::Unix(_, p) = &mut this {
            *p = PathBuf::new();
        }
        drop(this);
        Ok(SharedListener { socket, path })
    }
}

impl SharedListener {
    /// A listener on the same socket for the current runtime. Panics outside a runtime.
    pub fn attach(&self) -> io::Result<Listener> {
        Ok(match &self.socket {
            StdListener::Tcp(l) => Listener::Tcp(TcpListener::from_std(l.try_clone()?)?),
            StdListener::Unix(l) => Listener::UnixShared(
                UnixListener::from_std(l.try_clone()?)?,
                self.path.clone().unwrap_or_default(),
            ),
        })
    }
}

impl Drop for SharedListener {
    fn drop(&mut self) {
        if let Some(p) = &self.path {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl EventLoops {
    /// Runs `accept_loop` on every loop, each with its own [`Listener`] on `listener`'s
    /// socket (the kernel hands each new connection to one of the loops waiting in
    /// `accept`) and its [`Placement`], and resolves when all have returned: with the
    /// first error, if any.
    pub async fn run_accept_loops<F, Fut>(
        &self,
        listener: Listener,
        accept_loop: F,
    ) -> io::Result<()>
    where
        F: Fn(Listener, Placement) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = io::Result<()>> + Send + 'static,
    {
        let shared = Arc::new(listener.share()?);
        let accept_loop = Arc::new(accept_loop);
        let mut loops = JoinSet::new();
        for (here, l) in self.inner.loops.iter().enumerate() {
            let shared = shared.clone();
            let accept_loop = accept_loop.clone();
            let placement = Placement {
                loops: self.clone(),
                here,
            };
            loops.spawn_on(
                async move {
                    let listener = shared.attach()?;
                    accept_loop(listener, placement).await
                },
                &l.handle,
            );
        }
        let mut result = Ok(());
        while let Some(r) = loops.join_next().await {
            let r = r.unwrap_or_else(|e| Err(io::Error::other(format!("accept loop: {e}"))));
            if result.is_ok() {
                result = r;
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Mutex;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[test]
    fn a_loop_keeps_a_connection_unless_another_has_fewer() {
        let loops = EventLoops::start(3, "test-loop").unwrap();
        let at = |here| Placement {
            loops: loops.clone(),
            here,
        };
        let target = |p: &Place| match p {
            Place::Here(_) => None,
            Place::There(h, _) => Some(h.id()),
        };
        let ids: Vec<_> = loops.inner.loops.iter().map(|l| l.handle.id()).collect();
        // All idle: loop 0 keeps its first connection.
        let a = at(0).place();
        assert!(target(&a).is_none());
        assert_eq!(loops.connections(), vec![1, 0, 0]);
        // Loop 0 is now busier than the others: its next one goes to loop 1.
        let b = at(0).place();
        assert_eq!(target(&b), Some(ids[1]));
        let c = at(0).place();
        assert_eq!(target(&c), Some(ids[2]));
        assert_eq!(loops.connections(), vec![1, 1, 1]);
        // Even again: each loop keeps what it accepts.
        let d = at(2).place();
        assert!(target(&d).is_none());
        assert_eq!(loops.connections(), vec![1, 1, 2]);
        // The guards count until the connections end.
        drop((a, b, c, d));
        assert_eq!(loops.connections(), vec![0, 0, 0]);
    }

    #[tokio::test]
    async fn every_loop_accepts_on_the_shared_socket_and_serves_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let loops = EventLoops::start(2, "test-loop").unwrap();
        assert_eq!(loops.len(), 2);
        let listener = Listener::bind(&super::super::SocketSpec::Unix(path.clone()), None)
            .await
            .unwrap();
        let threads = Arc::new(Mutex::new(HashSet::new()));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let seen = threads.clone();
        let serving = tokio::spawn({
            let loops = loops.clone();
            async move {
                loops
                    .run_accept_loops(listener, move |l, _placement| {
                        let seen = seen.clone();
                        let mut stop = stop_rx.clone();
                        async move {
                            let Listener::UnixShared(l, _) = &l else {
                                panic!("not a shared unix listener");
                            };
                            loop {
                                let (mut s, _) = tokio::select! {
                                    r = l.accept() => r?,
                                    _ = stop.changed() => return Ok(()),
                                };
                                let name = std::thread::current().name().unwrap().to_owned();
                                seen.lock().unwrap().insert(name.clone());
                                tokio::spawn(async move {
                                    let mut got = [0u8; 4];
                                    s.read_exact(&mut got).await.unwrap();
                                    s.write_all(name.as_bytes()).await.unwrap();
                                    s.shutdown().await.unwrap();
                                });
                            }
                        }
                    })
                    .await
            }
        });
        // Connections while both loops wait in accept: each is served on a loop thread.
        for _ in 0..40 {
            let mut c = loop {
                match tokio::net::UnixStream::connect(&path).await {
                    Ok(c) => break c,
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
                }
            };
            c.write_all(b"ping").await.unwrap();
            let mut name = String::new();
            c.read_to_string(&mut name).await.unwrap();
            assert!(name.starts_with("test-loop-"), "{name}");
        }
        assert!(!threads.lock().unwrap().is_empty());
        stop_tx.send(true).unwrap();
        serving.await.unwrap().unwrap();
        assert!(
            !path.exists(),
            "the socket file is removed with the shared listener"
        );
    }
}
