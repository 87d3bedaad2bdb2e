#!/usr/bin/env bash
# The whole test suite, as CI runs it (`.ci/run` calls exactly this).
# Installs what the tests need, builds once (debug), compiles the test plugins once, then runs
# every test. Tests that need root or a missing package print a loud `SKIPPED:` line.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each phase prints when it starts, so a slow CI run shows where the time went.
phase() { echo "== $(date -u +%H:%M:%S) $*"; }
phase setup
scripts/setup.sh --deps
# Test plugins are compiled once per run, before any test needs them.
phase plugins
scripts/build-plugins.sh --test
scripts/build-python-plugins.sh
phase build
cargo build --workspace --all-targets --locked
# A hung test must fail the run with its name, not eat CI's time limit: the whole test
# phase gets ${WASMAIL_TEST_TIMEOUT:-50m}, then SIGINT (cargo prints the running tests).
phase test
timeout -s INT -k 60 "${WASMAIL_TEST_TIMEOUT:-50m}" \
    cargo test --workspace --locked --no-fail-fast -- --show-output --test-threads="${WASMAIL_TEST_THREADS:-2}" 2>&1 | tee target/test.log
status=${PIPESTATUS[0]}
phase done
echo
echo "== skipped tests =="
grep -h '^SKIPPED:' target/test.log || echo "(none)"
exit "$status"
