#!/usr/bin/env bash
# IMAP front figures, one run (root; cgroups; Debian dovecot-core/-imapd):
# - cold first login through the front (worker stopped before each): target ≤ 150 ms;
# - warm login through the front vs directly on the worker's IMAP socket;
# - splice throughput of a large FETCH through the front vs direct: target ≥ 90 %.
#
#   sudo benches/proxy.sh
#
# Environment (defaults): COLD=20, WARM=100, SIZE_MIB=32, ROUNDS=10, PROFILE=release,
# COMMAND_PLUGIN= (target/plugins/command-rules.wasm: also FETCH on the imap-command hook path)
# (PROFILE=debug reuses the test build; its figures are pessimistic for the proxy).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "benches/proxy.sh: needs root (namespaces, cgroups)" >&2
    exit 1
fi
PROFILE=${PROFILE:-release}
if [ "$PROFILE" = release ]; then
    cargo build --release --bin wasmail --bin wasmail-container-init --example proxy_bench
    T=target/release
else
    cargo build --bin wasmail --bin wasmail-container-init --example proxy_bench
    T=target/debug
fi
echo "== machine: $(nproc) cores, $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); profile $PROFILE"
"$T/examples/proxy_bench" --wasmail "$PWD/$T/wasmail" --cold "${COLD:-20}" --warm "${WARM:-100}" \
    --size-mib "${SIZE_MIB:-32}" --rounds "${ROUNDS:-10}" \
    ${COMMAND_PLUGIN:+--command-plugin "$PWD/$COMMAND_PLUGIN"}
