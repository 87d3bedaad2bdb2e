#!/usr/bin/env bash
# FastContainer figures, one run (root; cgroups; Debian dovecot-core/-imapd/-lmtpd):
# - trivial worker (src/bin/fc-test-worker.rs): N cold starts through the manager, spawn →
#   first answer on its socket, and teardown (SIGTERM → exit → cgroup, run dir and root
#   mount point removed); PID 1 is wasmail-container-init.
# - Dovecot worker rendered from examples/dovecot-worker.conf with a registry passdb:
#   N_DOVECOT cold starts, spawn → first successful IMAP LOGIN (argon2id password check
#   included), and teardown.
# - `wasmail serve` with IDLE_DOMAINS configured domains and no session: RSS against an
#   empty registry, and the processes it runs.
#
#   sudo benches/fastcontainer.sh
#
# Environment (defaults): N=200, N_DOVECOT=50, IDLE_DOMAINS=10000, FAVORDYNMODS=0 (1 switches
# the host's cgroups to favordynmods first, as `[fastcontainer] favordynmods = true` does;
# it stays on until reboot). Release binaries are
# built first. Targets (the issue): trivial p50 ≤ 5 ms, p99 ≤ 20 ms; Dovecot ≤ 150 ms to
# first login; idle domains cost no process.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-200}
N_DOVECOT=${N_DOVECOT:-50}
IDLE_DOMAINS=${IDLE_DOMAINS:-10000}
if [ "$(id -u)" != 0 ]; then
    echo "benches/fastcontainer.sh: needs root (namespaces, cgroups)" >&2
    exit 1
fi
cargo build --release --locked --bin wasmail --bin wasmail-container-init --bin fc-test-worker \
    --example fastcontainer_bench
T=target/release
echo "== machine: $(nproc) cores, $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "== cgroup: $(stat -fc %T /sys/fs/cgroup)"
FDM=()
if [ "${FAVORDYNMODS:-0}" = 1 ]; then FDM=(--favordynmods); fi
echo "== cgroup favordynmods: $(grep -c favordynmods /proc/mounts) mounts have it before the run"
"$T/examples/fastcontainer_bench" cold-starts --n "$N" --init "$T/wasmail-container-init" \
    --worker "$PWD/$T/fc-test-worker" "${FDM[@]}"
# The same with every root built from scratch (`template_roots = false`), for the ratio.
"$T/examples/fastcontainer_bench" cold-starts --n "$N" --init "$T/wasmail-container-init" \
    --worker "$PWD/$T/fc-test-worker" --no-template
if command -v dovecot >/dev/null || [ -x /usr/sbin/dovecot ]; then
    "$T/examples/fastcontainer_bench" cold-starts --n "$N_DOVECOT" \
        --init "$T/wasmail-container-init" --dovecot "$PWD/examples/dovecot-worker.conf"
else
    echo "SKIPPED: dovecot worker: dovecot is not installed (scripts/setup.sh installs it)"
fi
"$T/examples/fastcontainer_bench" idle-domains --n "$IDLE_DOMAINS" --wasmail "$T/wasmail"
# CRIU evaluation (optional start mode): it only makes sense if `criu check` passes here.
if command -v criu >/dev/null; then
    echo "== criu $(criu --version | head -1): criu check"
    criu check 2>&1 | tail -4 || true
else
    echo "== criu: not installed (apt-get install criu to repeat the check)"
fi
