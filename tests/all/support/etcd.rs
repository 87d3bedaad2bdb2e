//! A private etcd (Debian `etcd-server`) on loopback for the cluster tests: its own data dir
//! under a temp dir, free client and peer ports, killed (and the data dir removed) on drop.

use std::io::Read;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::postfix::free_port;

/// A running single-member etcd cluster.
pub struct Etcd {
    /// Temp dir holding the data dir and the log.
    pub dir: tempfile::TempDir,
    /// The client URL, e.g. `http://127.0.0.1:23456`.
    pub endpoint: String,
    /// The client port.
    pub port: u16,
    /// The peer port.
    peer: u16,
    binary: PathBuf,
    child: Child,
}

impl Etcd {
    /// Finds `etcd` (scripts/setup.sh installs `etcd-server`); `None` with a loud skip line
    /// naming `test` when it is missing.
    pub fn binary(test: &str) -> Option<PathBuf> {
        if !super::require_program(test, "etcd") {
            return None;
        }
        super::which("etcd")
    }

    /// Starts etcd and waits (up to 20 s) until it answers `/health` with `"health":"true"`.
    pub fn start(binary: &std::path::Path) -> Etcd {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let peer = free_port();
        let endpoint = format!("http://127.0.0.1:{port}");
        let child = Self::spawn(binary, &dir, &endpoint, peer, false);
        let mut etcd = Etcd {
            dir,
            endpoint,
            port,
            peer,
            binary: binary.to_path_buf(),
            child,
        };
        etcd.wait_healthy(Duration::from_secs(20));
        etcd
    }

    /// Starts etcd again after [`Etcd::kill`], on the same ports and data dir (so with the
    /// same data), and waits until it is healthy.
    pub fn restart(&mut self) {
        self.kill();
        self.child = Self::spawn(&self.binary, &self.dir, &self.endpoint, self.peer, true);
        self.wait_healthy(Duration::from_secs(20));
    }

    fn spawn(
        binary: &std::path::Path,
        dir: &tempfile::TempDir,
        endpoint: &str,
        peer: u16,
        append: bool,
    ) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(append)
            .write(true)
            .truncate(!append)
            .open(dir.path().join("etcd.log"))
            .expect("etcd log");
        Command::new(binary)
            .arg("--name=wasmail-test")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={endpoint}"))
            .arg(format!("--advertise-client-urls={endpoint}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
            ))
            .arg(format!(
                "--initial-cluster=wasmail-test=http://127.0.0.1:{peer}"
            ))
            .arg("--initial-cluster-state=new")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("start etcd")
    }

    fn wait_healthy(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("etcd exited with {status} while starting:\n{}", self.log());
            }
            if self.health() {
                return;
            }
            if Instant::now() > deadline {
                panic!("etcd not healthy after {limit:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// True when etcd answers its `/health` endpoint as healthy.
    pub fn health(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let req = "GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
        if std::io::Write::write_all(&mut s, req.as_bytes()).is_err() {
            return false;
        }
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body.contains("\"health\":\"true\"")
    }

    /// etcd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// Kills etcd (SIGKILL) and waits for it, e.g. to test "etcd unreachable".
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}
