#!/usr/bin/env bash
# The whole test suite, as CI runs it (`.ci/run` calls exactly this).
# Installs what the tests need, builds once (debug), compiles the test plugins once, then runs
# every test. Tests that need root or a missing package print a loud `SKIPPED:` line.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh --deps
# Test plugins are compiled once per run, before any test needs them.
scripts/build-plugins.sh --test
scripts/build-python-plugins.sh
cargo build --workspace --all-targets --locked
cargo test --workspace --locked --no-fail-fast -- --show-output --test-threads="${WASMAIL_TEST_THREADS:-2}" 2>&1 | tee target/test.log
status=${PIPESTATUS[0]}
echo
echo "== skipped tests =="
grep -h '^SKIPPED:' target/test.log || echo "(none)"
exit "$status"
