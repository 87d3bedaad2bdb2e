#!/usr/bin/env bash
# Milter throughput side by side, one run: wasmail with (a) a 3-plugin chain at every stage
# and (b) one end-of-message plugin, against no-op libmilter and pymilter milters set up for
# the same stages, driven by the milter crate's load generator (the MTA side of the
# protocol), over unix sockets and once over TCP. Each wasmail row runs twice: with a fresh
# plugin instance per transaction (the default) and with `instance_reuse = 1000`, in
# wasmail's default runtime shape (`[server] event_loops = "auto"`: one event loop on a host
# with at most 2 CPUs, else the multi-thread runtime's workers; the header line says which
# this host got); the chain with reuse also runs on the runtime's worker threads
# (`event_loops = 0`) and on one event loop per core. The floor (the milter crate's driver
# with a no-op handler) runs on the multi-thread runtime's workers.
#
# wasmail negotiates no reply to headers, end of headers and body chunks (it sends content
# verdicts at end of message) and no DATA. The "every stage" peers answer every command, as
# a milter written against libmilter/pymilter does by default; the "same wire" peers
# (mode all-nr) negotiate exactly what wasmail does, so both sides exchange the same
# packets. Each row prints the SMFIP_* protocol flags agreed.
#
#   benches/milter_chain.sh [SESSIONS] [CONCURRENCY] [HEADERS]     (ROUNDS=3 in the environment)
#
# The unix-socket rows run ROUNDS times, interleaved, and the summary gives each row's
# median sessions/s, p99 and the milter process's CPU time per message (user + system,
# from /proc; less sensitive to other tenants of a shared machine than throughput), then
# each every-stage wasmail row against each peer as the median of per-round ratios, their
# range, and in how many rounds the issue's targets (1.5× libmilter, 3× pymilter) held.
#
# Needs a release build and the plugins (scripts/setup.sh), gcc + libmilter-dev and
# python3-milter. Everything runs on loopback and is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
N=${1:-4000}
C=${2:-16}
H=${3:-8}
ROUNDS=${ROUNDS:-3}
WASMAIL=${WASMAIL:-$ROOT/target/release/wasmail}
LOADGEN=${LOADGEN:-$ROOT/target/release/examples/loadgen}
NOOP=${NOOP:-$ROOT/target/release/examples/noop_server}
PLUGINS=${PLUGINS:-$ROOT/target/plugins}
# wasmail logs at its default level (info), as deployed; a RUST_LOG from the caller's shell
# would change what is measured.
export RUST_LOG=info
[ -x "$LOADGEN" ] && [ -x "$NOOP" ] ||
  cargo build --release -p wasmail-milter --features tokio --example loadgen --example noop_server
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

wasmail_config() { # NAME LISTEN CHAIN-TOML [INSTANCE-REUSE] [EVENT-LOOPS (default: wasmail's)]
  local reuse=${4:-1}
  cat > "$T/$1.toml" <<EOC
[server]
${5:+event_loops = $5}
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
# CPU time (user + system, all threads, exited ones included) of a process, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK_US=$((1000000 / $(getconf CLK_TCK)))
run() { # LABEL NAME: drive unix:$T/NAME.sock; also the server's CPU time per message
  local out pid before after
  pid=${PID_OF[$2]}
  before=$(cpu_ticks "$pid")
  out=$("$LOADGEN" "unix:$T/$2.sock" "$C" "$N" 4096 "$H" | tail -1)
  after=$(cpu_ticks "$pid")
  local rate p99
  rate=$(sed -E 's/.*sessions_per_sec=([0-9.]+).*/\1/' <<<"$out")
  p99=$(sed -E 's/.*p99_ms=([0-9.]+).*/\1/' <<<"$out")
  local cpu=$(( (after - before) * TICK_US / N ))
  printf '%-38s %8s /s   p99 %7s ms   %6s µs CPU/msg   (%s %s)\n' "$1" "$rate" "$p99" \
    "$cpu" "$(grep -o 'errors=[0-9]*' <<<"$out")" "$(grep -o 'protocol=[0-9a-fx]*' <<<"$out")"
  printf '%s|%s|%s|%s\n' "$1" "$rate" "$p99" "$cpu" >> "$T/rows"
}
declare -A PID_OF
start() { # NAME COMMAND...
  local name=$1; shift
  "$@" >"$T/$name.log" 2>&1 & PIDS+=($!); PID_OF[$name]=$!; disown $!
}

echo "$(date -u +%F) $(nproc) cores, kernel $(uname -r); $N sessions, concurrency $C, 4 KiB body, $H headers"
echo "== unix sockets"
for m in all eom nr; do
  start "lm-$m" "$T/noop_libmilter" "unix:$T/lm-$m.sock" "$([ $m = nr ] && echo all-nr || echo $m)" hdr
  start "py-$m" /usr/bin/python3 benches/peers/noop_pymilter.py "unix:$T/py-$m.sock" \
    "$([ $m = nr ] && echo all-nr || echo $m)" hdr
done
wasmail_config chain "unix:$T/wm-chain.sock" 'chain = ["a", "b", "stamp"]'
wasmail_config eom "unix:$T/wm-eom.sock" 'chain = ["eom"]'
wasmail_config reuse "unix:$T/wm-reuse.sock" 'chain = ["a", "b", "stamp"]' 1000
wasmail_config reuse-eom "unix:$T/wm-reuse-eom.sock" 'chain = ["eom"]' 1000
wasmail_config reuse-wt "unix:$T/wm-reuse-wt.sock" 'chain = ["a", "b", "stamp"]' 1000 0
wasmail_config reuse-nl "unix:$T/wm-reuse-nl.sock" 'chain = ["a", "b", "stamp"]' 1000 "$(nproc)"
for c in chain eom reuse reuse-eom reuse-wt reuse-nl; do start "wm-$c" "$WASMAIL" serve --config "$T/$c.toml"; done
# The floor: the milter crate's driver with a no-op handler, same wire, one header added.
start floor "$NOOP" "unix:$T/floor.sock" all-nr hdr
for s in lm-all lm-eom lm-nr py-all py-eom py-nr wm-chain wm-eom wm-reuse wm-reuse-eom wm-reuse-wt wm-reuse-nl floor; do wait_for "$T/$s.sock"; done
sleep 0.5
echo "wasmail's default shape here: $(grep -o 'workers=[0-9]* event_loops=[0-9]*' "$T/wm-chain.log" | head -1) (runtime workers, event loops)"
# Rows interleaved, round after round, so a drift of this shared machine hits every row.
for r in $(seq "$ROUNDS"); do
  echo "-- round $r"
  run "libmilter, every stage"               lm-all
  run "pymilter, every stage"                py-all
  run "libmilter, every stage, same wire"    lm-nr
  run "pymilter, every stage, same wire"     py-nr
  run "wasmail, 3-plugin chain"              wm-chain
  run "wasmail, 3-plugin chain, reuse"       wm-reuse
  run "wasmail, chain, reuse, worker threads" wm-reuse-wt
  run "wasmail, chain, reuse, loop per core" wm-reuse-nl
  run "floor: driver, no-op handler"         floor
  run "libmilter, end of message only"       lm-eom
  run "pymilter, end of message only"        py-eom
  run "wasmail, one end-of-message plugin"   wm-eom
  run "wasmail, one eom plugin, reuse"       wm-reuse-eom
done
echo
echo "Medians of $ROUNDS rounds (server CPU per message: user + system time of the milter"
echo "process over the row, all threads; it does not count the load generator):"
python3 - "$T/rows" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    label, rate, p99, cpu = line.rstrip("\n").split("|")
    rows.setdefault(label, []).append((float(rate), float(p99), float(cpu)))
print("| row | sessions/s | p99 ms | µs CPU/msg |")
print("|---|---|---|---|")
for label, v in rows.items():
    med = [statistics.median(x[i] for x in v) for i in range(3)]
    print(f"| {label} | {med[0]:.0f} | {med[1]:.2f} | {med[2]:.0f} |")

# Each wasmail row against each peer of the same round (rows run back to back within a
# round, so a slow spell of the shared machine hits both sides of a ratio): the median of
# the per-round ratios, their range, and in how many rounds the issue's target was met.
peers = [
    ("libmilter, every stage", 1.5),
    ("pymilter, every stage", 3.0),
    ("libmilter, every stage, same wire", 1.5),
    ("pymilter, every stage, same wire", 3.0),
    ("floor: driver, no-op handler", None),
]
chains = [l for l in rows if l.startswith("wasmail") and "end-of-message" not in l and "eom" not in l]
if all(p in rows for p, _ in peers):
    print()
    print("Per-round ratios, median [min–max] (rounds meeting the target):")
    print()
    print("| wasmail row | " + " | ".join(f"÷ {p}" for p, _ in peers) + " |")
    print("|---|" + "---|" * len(peers))
    for label in chains:
        cells = []
        for p, target in peers:
            r = [a[0] / b[0] for a, b in zip(rows[label], rows[p])]
            cell = f"{statistics.median(r):.2f}× [{min(r):.2f}–{max(r):.2f}]"
            if target is not None:
                cell += f" ({sum(x >= target for x in r)}/{len(r)} ≥ {target:g}×)"
            cells.append(cell)
        print(f"| {label} | " + " | ".join(cells) + " |")
PY

echo "== TCP (loopback; the generator uses Nagle like Postfix: --nagle)"
start tcp-lm "$T/noop_libmilter" "inet:19101@127.0.0.1" all hdr
start tcp-py /usr/bin/python3 benches/peers/noop_pymilter.py "inet:19102@127.0.0.1" all hdr
start tcp-lm-nr "$T/noop_libmilter" "inet:19105@127.0.0.1" all-nr hdr
wasmail_config tcp "inet:127.0.0.1:19103" 'chain = ["a", "b", "stamp"]'
wasmail_config tcp-reuse "inet:127.0.0.1:19104" 'chain = ["a", "b", "stamp"]' 1000
start tcp-wm "$WASMAIL" serve --config "$T/tcp.toml"
start tcp-wm-reuse "$WASMAIL" serve --config "$T/tcp-reuse.toml"
sleep 2
run_tcp() { local out; out=$("$LOADGEN" "$2" "$C" "$((N / 2))" 4096 "$H" --nagle | tail -1)
  printf '%-38s %8s /s   p99 %7s ms\n' "$1" "$(sed -E 's/.*sessions_per_sec=([0-9.]+).*/\1/' <<<"$out")" "$(sed -E 's/.*p99_ms=([0-9.]+).*/\1/' <<<"$out")"; }
run_tcp "libmilter, every stage"  "inet:127.0.0.1:19101"
run_tcp "pymilter, every stage"   "inet:127.0.0.1:19102"
run_tcp "libmilter, same wire"    "inet:127.0.0.1:19105"
run_tcp "wasmail, 3-plugin chain" "inet:127.0.0.1:19103"
run_tcp "wasmail, 3-plugin chain, reuse" "inet:127.0.0.1:19104"
