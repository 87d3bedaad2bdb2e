//! Replays the committed fuzz seeds (`fuzz/seeds/<target>/`) through the same entry points
//! the `cargo fuzz` targets use, so every seed — and every crash turned into a seed —
//! runs on stable with plain `cargo test`.

use std::fs;
use std::path::PathBuf;

/// Fewer seed files than this means the directory went missing or was emptied.
const MIN_SEEDS: usize = 5;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/seeds/")).join(target);
    let mut paths: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    for path in &paths {
        let data = fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        eprintln!("{target}: {}", path.display());
        run(&data);
    }
    assert!(
        paths.len() >= MIN_SEEDS,
        "only {} seed files in {}, expected at least {MIN_SEEDS}",
        paths.len(),
        dir.display()
    );
}

#[test]
fn replay_socketmap_seeds() {
    replay("socketmap", wasmail_postfix::fuzzing::socketmap);
}

#[test]
fn replay_tcp_seeds() {
    replay("tcp", wasmail_postfix::fuzzing::tcp);
}

#[test]
fn replay_policy_seeds() {
    replay("policy", wasmail_postfix::fuzzing::policy);
}
