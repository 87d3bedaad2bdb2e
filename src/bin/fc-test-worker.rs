//! `fc-test-worker`: a trivial FastContainer worker for the tests (tests/all/fastcontainer.rs).
//!
//! `fc-test-worker SOCKET [MODE]` listens on the unix socket `SOCKET` and writes one line
//! to every connection: `hello <hostname> <pid>` plus the mode's `key=value` fields.
//! SIGTERM makes it exit with code 0. Modes:
//! - `serve` (default): just the greeting.
//! - `alloc MIB`: a thread allocates and touches `MIB` MiB, 1 MiB at a time, and holds it
//!   (past the cgroup's memory limit the kernel OOM-kills it); `alloc=MIB`.
//! - `forkbomb`: before listening, forks children that sleep until `fork` fails (at most
//!   1000, in case no pids limit is in effect); `forked=N`.
//! - `crash`: exits with code 3 at once.
//! - `ns`: the view from inside: `uid= gid= groups= capeff= capprm= capbnd= nnp=`,
//!   `ns=mnt:INODE,pid:..,uts:..,ipc:..,net:..`, `root=` (the names in `/`, sorted),
//!   `lo=up|down`, `nofile=` (soft RLIMIT_NOFILE), `rootfs=ro|rw` and `usr=ro|rw` (whether
//!   a file can be created there).

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixListener;

extern "C" fn on_term(_: libc::c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(0) }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(socket) = args.get(1) else {
        eprintln!("usage: fc-test-worker SOCKET [serve|alloc MIB|forkbomb|crash|ns]");
        std::process::exit(2);
    };
    // SAFETY: installs an async-signal-safe handler.
    unsafe { libc::signal(libc::SIGTERM, on_term as *const () as libc::sighandler_t) };
    let extra = match args.get(2).map(String::as_str).unwrap_or("serve") {
        "serve" => String::new(),
        "crash" => std::process::exit(3),
        "forkbomb" => format!(" forked={}", fork_until_refused()),
        "alloc" => {
            let mib: usize = args.get(3).and_then(|m| m.parse().ok()).unwrap_or(1024);
            std::thread::spawn(move || allocate(mib));
            format!(" alloc={mib}")
        }
        "ns" => view(),
        other => {
            eprintln!("fc-test-worker: unknown mode {other}");
            std::process::exit(2);
        }
    };
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket).unwrap_or_else(|e| {
        eprintln!("fc-test-worker: bind {socket}: {e}");
        std::process::exit(1);
    });
    let greeting = format!("hello {} {}{extra}\n", hostname(), std::process::id());
    for mut c in listener.incoming().flatten() {
        // A readiness probe may already have hung up.
        let _ = c.write_all(greeting.as_bytes());
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

fn fork_until_refused() -> usize {
    let mut n = 0;
    while n < 1000 {
        // SAFETY: single-threaded at this point; the child only calls pause().
        match unsafe { libc::fork() } {
            0 => loop {
                // SAFETY: pause has no preconditions.
                unsafe { libc::pause() };
            },
            pid if pid > 0 => n += 1,
            _ => break,
        }
    }
    n
}

fn allocate(mib: usize) {
    let mut held: Vec<Vec<u8>> = Vec::new();
    for _ in 0..mib {
        let mut chunk = vec![0u8; 1 << 20];
        for i in (0..chunk.len()).step_by(4096) {
            chunk[i] = 1;
        }
        held.push(chunk);
    }
    loop {
        std::thread::park();
    }
}

fn view() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().replace(' ', ","))
            .unwrap_or_default()
    };
    let ns: Vec<String> = ["mnt", "pid", "uts", "ipc", "net"]
        .iter()
        .map(|n| {
            let ino = std::fs::metadata(format!("/proc/self/ns/{n}")).map_or(0, |m| m.ino());
            format!("{n}:{ino}")
        })
        .collect();
    let mut root: Vec<String> = std::fs::read_dir("/")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    root.sort();
    let writable = |dir: &str| {
        let probe = format!("{dir}/.fc-probe-{}", std::process::id());
        match std::fs::File::create(&probe) {
            Ok(_) => {
                let _ = std::fs::remove_file(&probe);
                "rw"
            }
            Err(_) => "ro",
        }
    };
    let mut nofile = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into our local.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut nofile) };
    // SAFETY: getuid/getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    format!(
        " uid={uid} gid={gid} groups={} capeff={} capprm={} capbnd={} nnp={} ns={} root={} lo={} nofile={} rootfs={} usr={}",
        field("Groups:"),
        field("CapEff:"),
        field("CapPrm:"),
        field("CapBnd:"),
        field("NoNewPrivs:"),
        ns.join(","),
        root.join(","),
        if loopback_up() { "up" } else { "down" },
        nofile.rlim_cur,
        writable(""),
        writable("/usr"),
    )
}

fn loopback_up() -> bool {
    // SAFETY: a datagram socket and SIOCGIFFLAGS into an ifreq we own; the socket is
    // closed before returning.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        if fd < 0 {
            return false;
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        ifr.ifr_name[0] = b'l' as libc::c_char;
        ifr.ifr_name[1] = b'o' as libc::c_char;
        let ok = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr) == 0
            && ifr.ifr_ifru.ifru_flags & libc::IFF_UP as libc::c_short != 0;
        libc::close(fd);
        ok
    }
}
