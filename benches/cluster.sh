#!/usr/bin/env bash
# Cluster figures, one run (root; Debian etcd-server and dovecot-core/-lmtpd):
# - placement against a private loopback etcd (examples/cluster_bench.rs `placement`): the
#   claim transaction (create branch, and get branch returning the existing owner), the
#   relay side's owner lookup (one etcd get), and `resolve` from the watched cache; p50/p99
#   over N calls each, through the real `Cluster` code.
# - session routing overhead (`lmtp` mode): two `wasmail serve` hosts (127.0.0.2 and
#   127.0.0.3) with Dovecot workers, one shared registry and mail storage; N LMTP
#   deliveries (one per session, 1 KiB) through host a's LMTP front for a domain a owns and
#   for one b owns (relayed a → b over the host-to-host relay), alternating.
#
#   sudo benches/cluster.sh
#
# Environment (defaults): N=1000 (placement calls per case), N_LMTP=300, PROFILE=release
# (`debug` reuses the debug build). Everything started is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
N=${N:-1000}
N_LMTP=${N_LMTP:-300}
PROFILE=${PROFILE:-release}
if [ "$(id -u)" != 0 ]; then
    echo "benches/cluster.sh: needs root (the Dovecot workers run in containers)" >&2
    exit 1
fi
if [ "$PROFILE" = release ]; then
    cargo build --release --locked --bin wasmail --bin wasmail-container-init --example cluster_bench
else
    cargo build --locked --bin wasmail --bin wasmail-container-init --example cluster_bench
fi
T=$ROOT/target/$PROFILE
ETCD=${ETCD_BIN:-$(command -v etcd || echo /usr/bin/etcd)}

W=$(mktemp -d /tmp/wasmail-cluster-bench.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    sleep 3
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    # The hosts' (now empty) cgroup parents.
    for d in /sys/fs/cgroup/wasmail-cluster-bench-* /sys/fs/cgroup/*/wasmail-cluster-bench-*; do
        [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    done
    rm -rf "$W"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
EP=$(port); PP=$(port)
"$ETCD" --name=bench --data-dir="$W/etcd" --listen-client-urls="http://127.0.0.1:$EP" \
    --advertise-client-urls="http://127.0.0.1:$EP" --listen-peer-urls="http://127.0.0.1:$PP" \
    --initial-advertise-peer-urls="http://127.0.0.1:$PP" \
    --initial-cluster="bench=http://127.0.0.1:$PP" >"$W/etcd.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$EP/health" >/dev/null 2>&1 && break; sleep 0.1; done
URL=http://127.0.0.1:$EP

echo "== machine: $(nproc) cores, $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "== etcd $("$ETCD" --version | head -1 | awk '{print $3}'), build profile $PROFILE"
echo "== placement (N=$N)"
"$T/examples/cluster_bench" placement --etcd "$URL" --n "$N"

mkdir -p "$W/shared/mail"
DOMAINS=""
host_config() { # name ip lmtp relay
    cat <<CONF
[server]
shutdown_grace = "5s"
[registry]
path = "$W/shared/registry.db"
refresh = "1s"
[lmtp]
listen = "inet:$2:$3"
hostname = "lmtp.$1.bench"
[fastcontainer]
run_root = "$W/$1/run"
storage_root = "$W/shared/mail"
cgroup_root = "wasmail-cluster-bench-$1"
idle = "fixed"
idle_timeout = "10m"
start_timeout = "10s"
system_mounts = ["/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc"]
[fastcontainer.limits]
memory = "256MiB"
pids = 128
[fastcontainer.worker]
argv = ["/usr/sbin/dovecot", "-F", "-c", "{run_dir}/worker.conf"]
ready = "unix:imap"
passwd_file = "users"
files = { "worker.conf" = "$ROOT/examples/dovecot-worker.conf" }
[cluster]
host = "$1"
relay = "$2:$4"
etcd = ["$URL"]
release_grace = "1h"
CONF
}
mkdir -p "$W/a" "$W/b"
host_config a 127.0.0.2 "$(port)" "$(port)" >"$W/a/wasmail.toml"
host_config b 127.0.0.3 "$(port)" "$(port)" >"$W/b/wasmail.toml"
for i in 1 2 3 4 5 6 7 8; do
    "$T/wasmail" domain --config "$W/a/wasmail.toml" add "d$i.bench" >/dev/null
    echo "pw-bob" | "$T/wasmail" mailbox --config "$W/a/wasmail.toml" add "bob@d$i.bench" --password-stdin >/dev/null
    DOMAINS="$DOMAINS,d$i.bench"
done
for h in a b; do
    RUST_LOG=warn "$T/wasmail" serve --config "$W/$h/wasmail.toml" 2>"$W/$h/serve.log" &
    PIDS+=($!)
done
for h in a b; do
    for _ in $(seq 200); do grep -q "wasmail serving" "$W/$h/serve.log" 2>/dev/null && break; sleep 0.1; done
done
sleep 1
LMTP_A=$(grep -o 'listen = "inet:[^"]*"' "$W/a/wasmail.toml" | head -1 | sed 's/.*inet://; s/"//')
echo "== session routing overhead (N_LMTP=$N_LMTP, via host a at $LMTP_A)"
"$T/examples/cluster_bench" lmtp --etcd "$URL" --addr "$LMTP_A" --host a \
    --domains "${DOMAINS#,}" --n "$N_LMTP"
