//! Shared test support: locating binaries, temp dirs, skip helpers, real-peer harnesses.

#![allow(dead_code)]

use std::path::PathBuf;

/// Path of the `wasmail` binary built by cargo for this test run.
pub fn wasmail_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_wasmail"))
}

/// True when running as root; prints a loud skip line naming the test and reason otherwise.
pub fn require_root(test: &str) -> bool {
    if nix_is_root() {
        return true;
    }
    eprintln!("SKIPPED: {test}: needs root (CI runs as root)");
    false
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// True when `program` is on PATH (or an absolute path that exists); prints a loud skip line
/// naming the test and the missing program otherwise.
pub fn require_program(test: &str, program: &str) -> bool {
    if which(program).is_some() {
        return true;
    }
    eprintln!("SKIPPED: {test}: `{program}` is not installed (scripts/setup.sh installs it)");
    false
}

/// Finds `program` on PATH (plus /usr/sbin and /usr/lib/postfix/sbin, which Debian keeps off
/// a normal user's PATH).
pub fn which(program: &str) -> Option<PathBuf> {
    let p = PathBuf::from(program);
    if p.is_absolute() {
        return p.exists().then_some(p);
    }
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/lib/postfix/sbin"])
        .map(|d| PathBuf::from(d).join(program))
        .find(|c| c.is_file())
}
