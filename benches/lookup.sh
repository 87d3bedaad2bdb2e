#!/usr/bin/env bash
# Lookup responder throughput and latency side by side, one run: wasmail's socketmap
# responder answering from the domain registry and from `table` plugins, against a floor
# (postfix/examples/socketmap_floor.rs: the same codec, runtime shape and decode-all-then-
# write loop, a constant `OK` answer; no lookup, no idle timeout, no tracing). The load generator (postfix/examples/socketmap_loadgen.rs)
# behaves like Postfix: one request outstanding per connection, over 1 and over 8
# connections. Every reply must be `OK`, or the run stops.
#
#   benches/lookup.sh
#
# Environment (defaults): DURATION=10 (seconds measured per case, after 1 s of warm-up),
# ROUNDS=1 (with more, the cases run round after round, interleaved, and the table gives
# each case's median, its share of the floor as the median of per-round shares with their
# range, and in how many rounds each target was met: a drift of a shared machine then hits
# every case, and one lucky or unlucky round cannot decide a verdict), CONNS="1 8",
# DOMAINS=20 and MAILBOXES=10 (mailboxes per domain, registry and plugin settings alike),
# WORKERS=2 (runtime threads of the floor and of wasmail alike), LOOPS (event loops of the
# floor and of wasmail alike, `[server] event_loops`; by default what wasmail's "auto" picks:
# 1 on a host with at most 2 CPUs, else 0, where the connections run on the runtime
# threads), WASMAIL
# (target/release/wasmail) and EXAMPLES (target/release/examples), each built unless
# given, PLUGINS (target/plugins, built by scripts/build-plugins.sh if missing). Unix
# sockets only; everything started is stopped on exit.
#
# Cases (tables and keys):
# - floor:                  any table name, the constant answer.
# - registry, +ext:         built-in virtual_mailbox_maps, keys `User3+Bench@D07.Bench.TEST`:
#                           folded, first candidate (with the extension) not found, the
#                           second (`user3@d07.bench.test`) found.
# - registry, exact:        built-in virtual_mailbox_maps, keys `user3@d07.bench.test`,
#                           found at the first candidate.
# - plugin table-rules:     `rules` bound to table-rules.wasm (search exact), the same plain
#                           keys listed in its `found` setting: one plugin call per lookup.
# - plugin virtual-mailbox: virtual_mailbox_maps bound to virtual-mailbox.wasm, which
#                           answers by table name (a binding replaces the built-in table
#                           for the whole server, hence a second wasmail instance; search
#                           address), directory in its settings, the same +ext keys as the
#                           registry case: one instance, two plugin calls per lookup.
# - plugin virtual-mailbox, exact: the same binding with the plain keys (`user3@d07...`),
#                           found at the first candidate: one plugin call per lookup.
#
# Each case also reports the server's CPU time per lookup (user + system, all threads, from
# /proc, over the measured seconds): steadier than lookups/s on a shared machine, and at 8
# connections, where the server's runtime thread is the bottleneck, floor CPU ÷ case CPU
# predicts the throughput share.
#
# Targets (the issue): plugin-answered p99 ≤ 100 µs; every wasmail case ≥ 80% of the
# floor's lookups/s at the same connection count.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-1}
CONNS=${CONNS:-"1 8"}
DOMAINS=${DOMAINS:-20}
MAILBOXES=${MAILBOXES:-10}
WORKERS=${WORKERS:-2}
LOOPS=${LOOPS:-$(( $(nproc) <= 2 ? 1 : 0 ))}
PLUGINS=${PLUGINS:-$ROOT/target/plugins}
# wasmail logs at its default level (info), as deployed; a RUST_LOG from the caller's shell
# would change what is measured.
export RUST_LOG=info
if [ -z "${WASMAIL:-}" ]; then
  cargo build --release --bin wasmail
  WASMAIL=$ROOT/target/release/wasmail
fi
if [ -z "${EXAMPLES:-}" ]; then
  cargo build --release -p wasmail-postfix --examples --features tokio
  EXAMPLES=$ROOT/target/release/examples
fi
for p in table-rules virtual-mailbox; do
  [ -f "$PLUGINS/$p.wasm" ] || bash scripts/build-plugins.sh
done

T=$(mktemp -d /tmp/wasmail-lookup.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$T"
}
trap cleanup EXIT
start() { "$@" >"$T/$(basename "$1").$RANDOM.log" 2>&1 & PIDS+=($!); disown $!; }
wait_for() { for _ in $(seq 100); do [ -S "$1" ] && return 0; sleep 0.1; done; echo "no socket $1" >&2; exit 1; }

# The directory: DOMAINS domains d01.bench.test..., MAILBOXES mailboxes user1@... each.
domains=() mailboxes=() ext=()
for d in $(seq -w 1 "$DOMAINS"); do
  domains+=("d$d.bench.test")
  for m in $(seq 1 "$MAILBOXES"); do
    mailboxes+=("user$m@d$d.bench.test")
    ext+=("User$m+Bench@D$d.Bench.TEST")
  done
done
# Keys asked: every 3rd mailbox (up to 64), so all domains are touched.
keys_plain=() keys_ext=()
for ((i = 0; i < ${#mailboxes[@]} && ${#keys_plain[@]} < 64; i += 3)); do
  keys_plain+=("${mailboxes[i]}")
  keys_ext+=("${ext[i]}")
done
join() { local IFS=,; echo "$*"; }
toml_list() { local out="" x; for x in "$@"; do out+="\"$x\", "; done; echo "[${out%, }]"; }
found=()
for k in "${keys_plain[@]}"; do found+=("$k=${k#*@}/${k%@*}/"); done

common() { # REGISTRY-DB SOCKET
  cat <<EOC
[server]
worker_threads = $WORKERS
event_loops = $LOOPS
[registry]
path = "$1"
refresh = "10s"
[plugins]
dir = "$PLUGINS"
watch = false
[lookup]
socketmap = "unix:$2"
recipient_delimiter = "+"
EOC
}
{
  common "$T/registry.db" "$T/wm.sock"
  cat <<EOC
[lookup.tables.rules]
plugin = "rules"
search = "exact"
[plugin.rules]
file = "table-rules.wasm"
grants = ["config"]
[plugin.rules.settings]
found = $(toml_list "${found[@]}")
EOC
} > "$T/registry.toml"
{
  common "$T/registry.db" "$T/vm.sock"
  cat <<EOC
[lookup.tables.virtual_mailbox_maps]
plugin = "virtual-mailbox"
[plugin.virtual-mailbox]
file = "virtual-mailbox.wasm"
grants = ["config"]
[plugin.virtual-mailbox.settings]
domains = $(toml_list "${domains[@]}")
mailboxes = $(toml_list "${mailboxes[@]}")
EOC
} > "$T/plugin.toml"

echo "filling the registry: ${#domains[@]} domains, ${#mailboxes[@]} mailboxes (wasmail CLI)"
for d in "${domains[@]}"; do "$WASMAIL" domain -c "$T/registry.toml" add "$d" >/dev/null; done
for m in "${mailboxes[@]}"; do "$WASMAIL" mailbox -c "$T/registry.toml" add --no-password "$m" >/dev/null; done

declare -A PID_OF
start env WORKERS="$WORKERS" LOOPS="$LOOPS" "$EXAMPLES/socketmap_floor" "$T/floor.sock"; PID_OF[$T/floor.sock]=$!
start "$WASMAIL" serve -c "$T/registry.toml"; PID_OF[$T/wm.sock]=$!
start "$WASMAIL" serve -c "$T/plugin.toml"; PID_OF[$T/vm.sock]=$!
for s in floor wm vm; do wait_for "$T/$s.sock"; done

cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
echo "$(date -u +%F) $(nproc) cores ($cpu), kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg); runtime workers $WORKERS, event loops $LOOPS (floor and wasmail alike)"
echo "DURATION=$DURATION s per case after 1 s warm-up; ${#domains[@]} domains, ${#mailboxes[@]} mailboxes; ${#keys_plain[@]} keys cycled"

ROWS=()
field() { sed -E "s/.*\"$1\":\"?([^,\"}]*).*/\1/" <<<"$2"; }
# CPU time (user + system, all threads) of a process, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK_US=$((1000000 / $(getconf CLK_TCK)))
run() { # LABEL CONNS SOCKET TABLE KEYS
  local out pid=${PID_OF[$3]} before after
  # The server's CPU time over the measured seconds (the warm-up second is left out).
  (sleep 1; cpu_ticks "$pid" > "$T/cpu0") &
  out=$("$EXAMPLES/socketmap_loadgen" --socket "$3" --table "$4" --keys "$5" \
    --connections "$2" --duration "$DURATION" --json)
  after=$(cpu_ticks "$pid"); wait; before=$(cat "$T/cpu0")
  local n; n=$(field lookups "$out")
  local cpu; cpu=$(awk -v t=$((after - before)) -v u="$TICK_US" -v n="$n" 'BEGIN { printf "%.1f", t * u / (n > 0 ? n : 1) }')
  printf '%-24s %s  server CPU %s µs/lookup\n' "$1" "$out" "$cpu"
  ROWS+=("$1|$2|$(field lookups_per_sec "$out")|$(field p50_us "$out")|$(field p99_us "$out")|$(field max_us "$out")|$cpu")
}
for r in $(seq "$ROUNDS"); do
  [ "$ROUNDS" = 1 ] || echo "-- round $r"
  for c in $CONNS; do
    run "floor"                   "$c" "$T/floor.sock" virtual_mailbox_maps "$(join "${keys_ext[@]}")"
    run "registry, +ext"          "$c" "$T/wm.sock"    virtual_mailbox_maps "$(join "${keys_ext[@]}")"
    run "registry, exact"         "$c" "$T/wm.sock"    virtual_mailbox_maps "$(join "${keys_plain[@]}")"
    run "plugin table-rules"      "$c" "$T/wm.sock"    rules                "$(join "${keys_plain[@]}")"
    run "plugin virtual-mailbox"  "$c" "$T/vm.sock"    virtual_mailbox_maps "$(join "${keys_ext[@]}")"
    run "plugin virtual-mailbox, exact" "$c" "$T/vm.sock" virtual_mailbox_maps "$(join "${keys_plain[@]}")"
  done
done

echo
[ "$ROUNDS" = 1 ] || echo "Medians of $ROUNDS interleaved rounds; ÷ floor is the median of each round's case ÷ that round's floor."
printf '%s\n' "${ROWS[@]}" | python3 -c '
import statistics, sys
rows = {}
for line in sys.stdin:
    label, c, rate, p50, p99, mx, cpu = line.rstrip("\n").split("|")
    rows.setdefault((label, c), []).append([float(x) for x in (rate, p50, p99, mx, cpu)])
med = {k: [statistics.median(col) for col in zip(*v)] for k, v in rows.items()}
# Each case against the floor of the same round (cases run back to back within a round, so
# a slow spell of the shared machine hits both sides of a ratio): median, range, and how
# many rounds met the 80% target.
print("| case | connections | lookups/s | p50 µs | p99 µs | max µs | server µs CPU/lookup | ÷ floor, per round: median [min–max] | targets |")
print("|---|---|---|---|---|---|---|---|---|")
for (label, c), (rate, p50, p99, mx, cpu) in med.items():
    shares = [r[0] / f[0] for r, f in zip(rows[(label, c)], rows[("floor", c)])]
    share = statistics.median(shares)
    verdict = "—"
    if label != "floor":
        met = sum(x >= 0.8 for x in shares)
        verdict = ("≥ 80%: yes" if share >= 0.8 else "≥ 80%: **no**") + f" ({met} of {len(shares)} rounds)"
        if label.startswith("plugin"):
            fast = sum(r[2] <= 100 for r in rows[(label, c)])
            verdict += ("; p99 ≤ 100 µs: yes" if p99 <= 100 else "; p99 ≤ 100 µs: **no**") + f" ({fast} of {len(shares)})"
    print(f"| {label} | {c} | {rate:.0f} | {p50:.1f} | {p99:.1f} | {mx:.1f} | {cpu:.1f} | {100 * share:.1f}% [{100 * min(shares):.0f}–{100 * max(shares):.0f}%] | {verdict} |")
'
