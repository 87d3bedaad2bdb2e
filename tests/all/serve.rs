//! Integration tests: the `wasmail` binary itself (CLI, config errors, serve lifecycle).

use std::process::Command;
use std::time::Duration;

use crate::support::{Serve, wasmail_bin};

#[test]
fn version_flag_prints_the_version() {
    let out = Command::new(wasmail_bin())
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text.trim(),
        format!("wasmail {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn check_config_reports_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[server]\nshutdown_grace = \"5s\"\n\n[milter]\nlisten = \"tcp:1.2.3.4\"\nmax_conections = 4\n",
    )
    .unwrap();
    let out = Command::new(wasmail_bin())
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    let expected = format!("{}:6:1: key `milter.max_conections`", path.display());
    assert!(err.contains(&expected), "stderr: {err}");
    assert!(err.contains("unknown field"), "stderr: {err}");

    // Once the typo is fixed, the semantic problem is reported at its line.
    std::fs::write(
        &path,
        "[server]\nshutdown_grace = \"5s\"\n\n[milter]\nlisten = \"tcp:1.2.3.4\"\n",
    )
    .unwrap();
    let out = Command::new(wasmail_bin())
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("{}:5:1: key `milter.listen`", path.display())),
        "stderr: {err}"
    );
}

#[test]
fn check_config_accepts_the_example_config() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/wasmail.toml");
    let out = Command::new(wasmail_bin())
        .args(["check-config", "--config", example])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK; services: milter, lookup, policy"));
}

#[test]
fn serve_stops_cleanly_on_sigterm() {
    let mut serve = Serve::start("[server]\nshutdown_grace = \"2s\"\n");
    let status = serve.stop(Duration::from_secs(10));
    assert!(status.success(), "exit {status}:\n{}", serve.log_text());
    assert!(serve.log_text().contains("SIGTERM: shutting down"));
    assert!(serve.log_text().contains("wasmail stopped"));
}

#[test]
fn serve_refuses_a_missing_config_with_the_path() {
    let out = Command::new(wasmail_bin())
        .args(["serve", "--config", "/nonexistent/wasmail.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/wasmail.toml"), "{err}");
}
