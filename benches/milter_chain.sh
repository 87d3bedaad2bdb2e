#!/usr/bin/env bash
# Milter throughput side by side, one run: wasmail with (a) a 3-plugin chain at every stage
# and (b) one end-of-message plugin, against no-op libmilter and pymilter milters set up for
# the same stages, driven by the milter crate's load generator (the MTA side of the
# protocol), over unix sockets and once over TCP. Each wasmail row runs twice: with a fresh
# plugin instance per transaction (the default) and with `instance_reuse = 1000`.
#
# wasmail negotiates no reply to headers, end of headers and body chunks (it sends content
# verdicts at end of message) and no DATA. The "every stage" peers answer every command, as
# a milter written against libmilter/pymilter does by default; the "same wire" peers
# (mode all-nr) negotiate exactly what wasmail does, so both sides exchange the same
# packets. Each row prints the SMFIP_* protocol flags agreed.
#
#   benches/milter_chain.sh [SESSIONS] [CONCURRENCY] [HEADERS]
#
# Needs a release build and the plugins (scripts/setup.sh), gcc + libmilter-dev and
# python3-milter. Everything runs on loopback and is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
N=${1:-4000}
C=${2:-16}
H=${3:-8}
WASMAIL=${WASMAIL:-$ROOT/target/release/wasmail}
LOADGEN=${LOADGEN:-$ROOT/target/release/examples/loadgen}
PLUGINS=${PLUGINS:-$ROOT/target/plugins}
[ -x "$LOADGEN" ] || cargo build --release -p wasmail-milter --features tokio --example loadgen
T=$(mktemp -d /tmp/wasmail-chain.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$T"
}
trap cleanup EXIT
gcc -O2 -o "$T/noop_libmilter" benches/peers/noop_libmilter.c -lmilter -lpthread

wasmail_config() { # NAME LISTEN CHAIN-TOML [INSTANCE-REUSE]
  local reuse=${4:-1}
  cat > "$T/$1.toml" <<EOC
[milter]
listen = "$2"
socket_mode = "0666"
$3
[plugins]
dir = "$PLUGINS"
watch = false
[plugin.a]
file = "noop.wasm"
grants = []
instance_reuse = $reuse
[plugin.b]
file = "noop.wasm"
grants = []
instance_reuse = $reuse
[plugin.stamp]
file = "stamp.wasm"
grants = ["config"]
instance_reuse = $reuse
[plugin.eom]
file = "stamp.wasm"
grants = ["config"]
instance_reuse = $reuse
[plugin.eom.settings]
stages = "end-of-message"
EOC
}
wait_for() { for _ in $(seq 100); do [ -S "$1" ] || nc -z 127.0.0.1 "${1#*:}" 2>/dev/null && return 0; sleep 0.1; done; }
run() { # LABEL SOCKET
  local out
  out=$("$LOADGEN" "$2" "$C" "$N" 4096 "$H" | tail -1)
  local rate p99
  rate=$(sed -E 's/.*sessions_per_sec=([0-9.]+).*/\1/' <<<"$out")
  p99=$(sed -E 's/.*p99_ms=([0-9.]+).*/\1/' <<<"$out")
  printf '%-38s %8s /s   p99 %7s ms   (%s %s)\n' "$1" "$rate" "$p99" "$(grep -o 'errors=[0-9]*' <<<"$out")" "$(grep -o 'protocol=[0-9a-fx]*' <<<"$out")"
}
start() { "$@" >"$T/$(basename "$1").$RANDOM.log" 2>&1 & PIDS+=($!); disown $!; }

echo "$(date -u +%F) $(nproc) cores, kernel $(uname -r); $N sessions, concurrency $C, 4 KiB body, $H headers"
echo "== unix sockets"
start "$T/noop_libmilter" "unix:$T/lm-all.sock" all hdr
start "$T/noop_libmilter" "unix:$T/lm-eom.sock" eom hdr
start "$T/noop_libmilter" "unix:$T/lm-nr.sock" all-nr hdr
start /usr/bin/python3 benches/peers/noop_pymilter.py "unix:$T/py-all.sock" all hdr
start /usr/bin/python3 benches/peers/noop_pymilter.py "unix:$T/py-nr.sock" all-nr hdr
start /usr/bin/python3 benches/peers/noop_pymilter.py "unix:$T/py-eom.sock" eom hdr
wasmail_config chain "unix:$T/wm-chain.sock" 'chain = ["a", "b", "stamp"]'
wasmail_config eom "unix:$T/wm-eom.sock" 'chain = ["eom"]'
wasmail_config reuse "unix:$T/wm-reuse.sock" 'chain = ["a", "b", "stamp"]' 1000
wasmail_config reuse-eom "unix:$T/wm-reuse-eom.sock" 'chain = ["eom"]' 1000
for c in chain eom reuse reuse-eom; do start "$WASMAIL" serve --config "$T/$c.toml"; done
for s in lm-all lm-eom lm-nr py-all py-eom py-nr wm-chain wm-eom wm-reuse wm-reuse-eom; do wait_for "$T/$s.sock"; done
run "libmilter, every stage"            "unix:$T/lm-all.sock"
run "pymilter, every stage"             "unix:$T/py-all.sock"
run "libmilter, every stage, same wire"  "unix:$T/lm-nr.sock"
run "pymilter, every stage, same wire"   "unix:$T/py-nr.sock"
run "wasmail, 3-plugin chain"           "unix:$T/wm-chain.sock"
run "wasmail, 3-plugin chain, reuse"    "unix:$T/wm-reuse.sock"
run "libmilter, end of message only"    "unix:$T/lm-eom.sock"
run "pymilter, end of message only"     "unix:$T/py-eom.sock"
run "wasmail, one end-of-message plugin" "unix:$T/wm-eom.sock"
run "wasmail, one eom plugin, reuse"    "unix:$T/wm-reuse-eom.sock"

echo "== TCP (loopback; the generator uses Nagle like Postfix: --nagle)"
start "$T/noop_libmilter" "inet:19101@127.0.0.1" all hdr
start /usr/bin/python3 benches/peers/noop_pymilter.py "inet:19102@127.0.0.1" all hdr
start "$T/noop_libmilter" "inet:19105@127.0.0.1" all-nr hdr
wasmail_config tcp "inet:127.0.0.1:19103" 'chain = ["a", "b", "stamp"]'
wasmail_config tcp-reuse "inet:127.0.0.1:19104" 'chain = ["a", "b", "stamp"]' 1000
start "$WASMAIL" serve --config "$T/tcp.toml"
start "$WASMAIL" serve --config "$T/tcp-reuse.toml"
sleep 2
run_tcp() { local out; out=$("$LOADGEN" "$2" "$C" "$((N / 2))" 4096 "$H" --nagle | tail -1)
  printf '%-38s %8s /s   p99 %7s ms\n' "$1" "$(sed -E 's/.*sessions_per_sec=([0-9.]+).*/\1/' <<<"$out")" "$(sed -E 's/.*p99_ms=([0-9.]+).*/\1/' <<<"$out")"; }
run_tcp "libmilter, every stage"  "inet:127.0.0.1:19101"
run_tcp "pymilter, every stage"   "inet:127.0.0.1:19102"
run_tcp "libmilter, same wire"    "inet:127.0.0.1:19105"
run_tcp "wasmail, 3-plugin chain" "inet:127.0.0.1:19103"
run_tcp "wasmail, 3-plugin chain, reuse" "inet:127.0.0.1:19104"
