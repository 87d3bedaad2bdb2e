//! IMAP front benchmark harness (root; run by `benches/proxy.sh`).
//!
//! Starts `wasmail serve` with `[proxy]` and `[fastcontainer]` (Dovecot worker rendered
//! from examples/dovecot-worker.conf, registry passdb, one mailbox holding one large
//! message) and measures, always against the same worker:
//! - cold first login: worker stopped (admin API) → connect to the front → greeting →
//!   `LOGIN` → tagged OK (registry check, spawn, Dovecot start, worker login);
//! - warm login: connect → greeting → `LOGIN` → tagged OK through the front, against the
//!   same directly on the worker's IMAP socket (a held session keeps the worker warm);
//! - splice throughput: `FETCH 1 BODY.PEEK[]` of the large message through the front and
//!   directly, interleaved;
//! - with `--command-plugin target/plugins/command-rules.wasm`: the same FETCH on the
//!   per-command hook path (the domain's chain subscribed to `imap-command`, set in the
//!   registry after the plain rounds), against the plain splice.
//!
//! Figures are printed one per line; the script copies them into benches/RESULTS.md.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use wasmail::registry::password::hash_password;
use wasmail::registry::sqlite::SqliteRegistry;
use wasmail::registry::{Domain, Mailbox, Registry};

#[derive(Parser)]
struct Args {
    /// The wasmail binary to run as the server.
    #[arg(long)]
    wasmail: PathBuf,
    /// Cold first logins.
    #[arg(long, default_value_t = 20)]
    cold: usize,
    /// Warm logins per side.
    #[arg(long, default_value_t = 100)]
    warm: usize,
    /// Size of the message fetched, MiB.
    #[arg(long, default_value_t = 32)]
    size_mib: usize,
    /// FETCH rounds per side.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// The `command-rules` test plugin: also measure the per-command hook path.
    #[arg(long)]
    command_plugin: Option<PathBuf>,
}

/// A line-oriented IMAP client over TCP or a unix socket.
struct Client<S: Read + Write> {
    r: BufReader<S>,
    w: S,
}

trait Dup: Sized {
    fn dup(&self) -> Self;
}
impl Dup for TcpStream {
    fn dup(&self) -> Self {
        self.try_clone().unwrap()
    }
}
impl Dup for UnixStream {
    fn dup(&self) -> Self {
        self.try_clone().unwrap()
    }
}

impl<S: Read + Write + Dup> Client<S> {
    fn new(s: S) -> Self {
        Client {
            r: BufReader::with_capacity(256 * 1024, s.dup()),
            w: s,
        }
    }
    fn line(&mut self) -> String {
        let mut l = String::new();
        self.r.read_line(&mut l).unwrap();
        assert!(!l.is_empty(), "connection closed");
        l
    }
    /// Sends `cmd` (tag `t`) and reads to the tagged reply, skipping literals; returns
    /// the tagged line and the bytes read.
    fn run(&mut self, cmd: &str) -> (String, usize) {
        self.w.write_all(cmd.as_bytes()).unwrap();
        let tag = cmd.split(' ').next().unwrap();
        let mut total = 0;
        let mut sink = vec![0u8; 256 * 1024];
        loop {
            let l = self.line();
            total += l.len();
            if l.starts_with(&format!("{tag} ")) {
                return (l, total);
            }
            if let Some(n) = literal(&l) {
                let mut left = n;
                while left > 0 {
                    let want = left.min(sink.len());
                    let k = self.r.read(&mut sink[..want]).unwrap();
                    assert!(k > 0, "closed in a literal");
                    left -= k;
                }
                total += n;
            }
        }
    }
    fn login(&mut self) {
        let g = self.line();
        assert!(g.starts_with("* OK"), "{g}");
        let (r, _) = self.run("a LOGIN bob@example.com pw-bob\r\n");
        assert!(r.starts_with("a OK"), "{r}");
    }
}

fn literal(line: &str) -> Option<usize> {
    let l = line.trim_end().strip_suffix('}')?;
    l[l.rfind('{')? + 1..].parse().ok()
}

fn stats(name: &str, mut v: Vec<Duration>) -> Duration {
    v.sort();
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "{name}: n={} p50={:.2?} p90={:.2?} max={:.2?}",
        v.len(),
        p(0.5),
        p(0.9),
        v[v.len() - 1]
    );
    p(0.5)
}

struct Server {
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: kill with our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn setup(args: &Args, port: u16) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let reg = SqliteRegistry::open(&d.join("registry.db")).unwrap();
    reg.add_domain(&Domain {
        name: "example.com".into(),
        ..Domain::default()
    })
    .unwrap();
    reg.add_mailbox(&Mailbox {
        address: "bob@example.com".into(),
        password_hash: Some(hash_password("pw-bob").unwrap()),
        ..Mailbox::default()
    })
    .unwrap();
    let maildir = d.join("mail/example.com/bob/Maildir");
    for sub in ["new", "cur", "tmp"] {
        std::fs::create_dir_all(maildir.join(sub)).unwrap();
    }
    let mut msg = String::from("From: a@remote.test\r\nSubject: big\r\n\r\n");
    let line = format!("{}\r\n", "x".repeat(76));
    while msg.len() < args.size_mib << 20 {
        msg.push_str(&line);
    }
    std::fs::write(maildir.join("new/1.M1P1.bench"), msg).unwrap();
    let status = Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(d.join("mail"))
        .status()
        .unwrap();
    assert!(status.success());
    let root = env!("CARGO_MANIFEST_DIR");
    let bin_dir = args.wasmail.parent().unwrap().display().to_string();
    let config = format!(
        r#"
[registry]
path = "{d}/registry.db"
refresh = "200ms"
{plugin}
[admin]
listen = "unix:{d}/admin.sock"
[fastcontainer]
run_root = "{d}/run"
storage_root = "{d}/mail"
cgroup_root = "wasmail-proxy-bench"
idle = "fixed"
idle_timeout = "10m"
start_timeout = "10s"
system_mounts = ["/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc", "{bin_dir}"]
[fastcontainer.worker]
argv = ["/usr/sbin/dovecot", "-F", "-c", "{{run_dir}}/worker.conf"]
ready = "unix:imap"
passwd_file = "users"
files = {{ "worker.conf" = "{root}/examples/dovecot-worker.conf" }}
[proxy]
imap = "inet:127.0.0.1:{port}"
"#,
        d = d.display(),
        plugin = args
            .command_plugin
            .as_ref()
            .map(|p| format!(
                "[plugin.command-rules]\nfile = \"{}\"\ngrants = [\"config\", \"log\"]\n[plugin.command-rules.settings]\ncommands = [\"XBENCHPROBE=deny:probe\"]\n",
                p.display()
            ))
            .unwrap_or_default(),
    );
    std::fs::write(d.join("wasmail.toml"), config).unwrap();
    let child = Command::new(&args.wasmail)
        .args(["serve", "--config"])
        .arg(d.join("wasmail.toml"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(d.join("serve.log")).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Server { child, dir }
}

/// `POST /workers/example.com/stop` on the admin socket (a 404 when none runs is fine).
fn stop_worker(dir: &Path) {
    let mut s = UnixStream::connect(dir.join("admin.sock")).unwrap();
    s.write_all(
        b"POST /workers/example.com/stop HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(
        out.starts_with("HTTP/1.1 200") || out.starts_with("HTTP/1.1 404"),
        "{out}"
    );
}

fn worker_socket(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir.join("run"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("imap"))
        .find(|p| p.exists())
        .expect("a running worker")
}

fn main() {
    let args = Args::parse();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let server = setup(&args, port);
    let dir = server.dir.path().to_path_buf();
    let front = || Client::new(TcpStream::connect(("127.0.0.1", port)).unwrap());

    // Cold first logins.
    let mut cold = Vec::new();
    for _ in 0..args.cold {
        stop_worker(&dir);
        let t0 = Instant::now();
        let mut c = front();
        c.login();
        cold.push(t0.elapsed());
        c.run("z LOGOUT\r\n");
    }
    let cold_p50 = stats("cold first login through the front", cold);

    // Warm logins: a held session keeps the worker.
    let mut holder = front();
    holder.login();
    let sock = worker_socket(&dir);
    let direct = || Client::new(UnixStream::connect(&sock).unwrap());
    let (mut via, mut dir_t) = (Vec::new(), Vec::new());
    for _ in 0..args.warm {
        let t0 = Instant::now();
        let mut c = front();
        c.login();
        via.push(t0.elapsed());
        c.run("z LOGOUT\r\n");
        let t0 = Instant::now();
        let mut c = direct();
        c.login();
        dir_t.push(t0.elapsed());
        c.run("z LOGOUT\r\n");
    }
    let via_p50 = stats("warm login through the front", via);
    let direct_p50 = stats("warm login directly on the worker socket", dir_t);

    // Splice throughput.
    let mut pc = front();
    pc.login();
    pc.run("s SELECT INBOX\r\n");
    let mut dc = direct();
    dc.login();
    dc.run("s SELECT INBOX\r\n");
    let (mut pt, mut dt, mut bytes) = (Duration::ZERO, Duration::ZERO, 0);
    for _ in 0..args.rounds {
        let t0 = Instant::now();
        let (r, n) = pc.run("f FETCH 1 BODY.PEEK[]\r\n");
        pt += t0.elapsed();
        assert!(r.starts_with("f OK"), "{r}");
        bytes += n;
        let t0 = Instant::now();
        let (r, _) = dc.run("f FETCH 1 BODY.PEEK[]\r\n");
        dt += t0.elapsed();
        assert!(r.starts_with("f OK"), "{r}");
    }
    let mib = bytes as f64 / (1 << 20) as f64;
    let (p_rate, d_rate) = (mib / pt.as_secs_f64(), mib / dt.as_secs_f64());
    println!(
        "FETCH {} MiB x {}: through the front {p_rate:.0} MiB/s, direct {d_rate:.0} MiB/s",
        args.size_mib, args.rounds
    );
    println!(
        "ratios: warm login front/direct {:.2}x (p50 {:.2?} vs {:.2?}); splice throughput {:.0}% of direct; cold first login p50 {:.2?}",
        via_p50.as_secs_f64() / direct_p50.as_secs_f64(),
        via_p50,
        direct_p50,
        100.0 * p_rate / d_rate,
        cold_p50
    );
    if args.command_plugin.is_some() {
        hooked_throughput(&args, &dir, port, &mut pc);
    }
    drop(holder);
}

/// FETCH on the per-command hook path (example.com's chain gets `command-rules`),
/// interleaved with the same on `plain`, a session that began before the change and so
/// stays on the plain splice.
fn hooked_throughput(args: &Args, dir: &Path, port: u16, plain: &mut Client<TcpStream>) {
    let reg = SqliteRegistry::open(&dir.join("registry.db")).unwrap();
    let mut d = reg
        .snapshot()
        .unwrap()
        .domain("example.com")
        .unwrap()
        .clone();
    d.chains
        .insert("hook".into(), vec!["command-rules".to_string()]);
    reg.update_domain(&d).unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let mut hc = Client::new(TcpStream::connect(("127.0.0.1", port)).unwrap());
    hc.login();
    let (r, _) = hc.run("p XBENCHPROBE\r\n");
    assert!(
        r.starts_with("p NO [ALERT] probe"),
        "not on the hook path: {r}"
    );
    hc.run("s SELECT INBOX\r\n");
    let (mut ht, mut pt, mut bytes) = (Duration::ZERO, Duration::ZERO, 0);
    for _ in 0..args.rounds {
        let t0 = Instant::now();
        let (r, n) = hc.run("f FETCH 1 BODY.PEEK[]\r\n");
        ht += t0.elapsed();
        assert!(r.starts_with("f OK"), "{r}");
        bytes += n;
        let t0 = Instant::now();
        let (r, _) = plain.run("f FETCH 1 BODY.PEEK[]\r\n");
        pt += t0.elapsed();
        assert!(r.starts_with("f OK"), "{r}");
    }
    let mib = bytes as f64 / (1 << 20) as f64;
    let (rate, plain_rate) = (mib / ht.as_secs_f64(), mib / pt.as_secs_f64());
    println!(
        "FETCH {} MiB x {}: imap-command hook path {rate:.0} MiB/s, plain splice {plain_rate:.0} MiB/s ({:.0}%)",
        args.size_mib,
        args.rounds,
        100.0 * rate / plain_rate
    );
}
