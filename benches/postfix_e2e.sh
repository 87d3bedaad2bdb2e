#!/usr/bin/env bash
# End-to-end Postfix throughput with and without a milter, side by side in one run.
#
#   benches/postfix_e2e.sh [MESSAGES] [SESSIONS] [BODY_BYTES]     (ROUNDS=3 in the environment)
#
# ONLY="baseline floor ..." in the environment runs just those rows.
#
# Starts a private Postfix instance on 127.0.0.1 (relayhost = an smtp-sink on loopback), then
# for each row sends MESSAGES with smtp-source over SESSIONS parallel SMTP sessions and times
# until every message has left the queue, ROUNDS times with the rows interleaved; the table
# gives each row's median rate, and its share of Postfix without a milter as the median of
# the per-round shares with their range and the rounds at or above 90%:
#   baseline   no milter
#   libmilter  Debian libmilter no-op milter (all stages, adds one header) on a unix socket
#   libmilter-nr  the same, negotiating what wasmail does (no reply to headers, end of
#              headers and body; no DATA): the same packets on the wire
#   floor      the milter crate's no-op server (milter/examples/noop_server.rs), same wire
#              and one header, no plugins: what a milter on wasmail's driver costs Postfix
#              before any plugin runs
#   wasmail    `wasmail serve` with the benchmark plugin chain on a unix socket
#   wasmail-reuse  the same with `instance_reuse = 1000` for every plugin
#   wasmail-reuse-wt  that on the runtime's worker threads (`[server] event_loops = 0`;
#              the other wasmail rows run in the default shape, `"auto"`: one event loop on
#              a host with at most 2 CPUs)
# Each row also gets the CPU time per message of the Postfix instance plus that row's
# milter (cgroup CPU accounting; smtp-source and smtp-sink are not counted). On a machine
# where Postfix is CPU-bound, baseline CPU ÷ row CPU estimates the throughput share without
# the noise other tenants add to wall-clock rates.
# Needs root, postfix, smtp-source/smtp-sink, libmilter-dev, and a release build plus the
# built plugins (scripts/setup.sh). Loopback only; everything started is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
N=${1:-2000}
S=${2:-8}
L=${3:-4096}
ROUNDS=${ROUNDS:-3}
WASMAIL=${WASMAIL:-$ROOT/target/release/wasmail}
PLUGINS=${PLUGINS:-$ROOT/target/plugins}
# wasmail logs at its default level (info), as deployed; a RUST_LOG from the caller's shell
# would change what is measured.
export RUST_LOG=info
if [ -z "${EXAMPLES:-}" ]; then
  cargo build --release -p wasmail-milter --features tokio --example noop_server
  EXAMPLES=$ROOT/target/release/examples
fi

[ "$(id -u)" = 0 ] || { echo "needs root (private Postfix instance)" >&2; exit 1; }
T=$(mktemp -d /tmp/wasmail-pfbench.XXXXXX)
chmod 755 "$T"
PIDS=()
cleanup() {
  postfix -c "$T/etc" stop >/dev/null 2>&1 || true
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  [ -n "${KEEP:-}" ] || rm -rf "$T"
  # A killed process leaves its group only once it has exited.
  for g in "${CGROUPS[@]}"; do
    for _ in $(seq 50); do [ -n "$(cat "$g/cgroup.procs" 2>/dev/null)" ] || break; sleep 0.1; done
    rmdir "$g" 2>/dev/null || echo "left cgroup $g (still has processes)" >&2
  done
}
# CPU accounting groups: cgroup v1 cpuacct, or v2.
CGROUPS=()
CG_ROOT=/sys/fs/cgroup/cpuacct
[ -f "$CG_ROOT/cpuacct.usage" ] || CG_ROOT=/sys/fs/cgroup
cg_path() { echo "$CG_ROOT/wasmail-e2e-$$-$1"; }
cg_make() { mkdir -p "$(cg_path "$1")" && CGROUPS+=("$(cg_path "$1")"); }
# Moves this (sub)shell into group NAME and execs COMMAND... (children stay in the group).
# Call it as `cg_run NAME CMD &` (then $! is CMD's pid) or inside ( ).
cg_run() { local g; g=$(cg_path "$1"); shift; echo "$BASHPID" > "$g/cgroup.procs"; exec "$@"; }
cg_usage_us() { # total CPU time of group NAME, microseconds
  local g; g=$(cg_path "$1")
  if [ -f "$g/cpuacct.usage" ]; then echo $(( $(cat "$g/cpuacct.usage") / 1000 ));
  else awk '$1 == "usage_usec" {print $2}' "$g/cpu.stat"; fi
}
trap cleanup EXIT

SMTPD_PORT=${SMTPD_PORT:-10025}
SINK_PORT=${SINK_PORT:-10026}
mkdir -p "$T/etc" "$T/spool" "$T/data" "$T/run"
chown postfix "$T/data"
sed -E 's/^([a-z]+[[:space:]]+(inet|unix|unix-dgram|fifo|pass)[[:space:]]+[-yn][[:space:]]+[-yn][[:space:]]+)[-y]/\1n/' \
  /usr/share/postfix/master.cf.dist > "$T/etc/master.cf"
sed -i -E "s/^smtp[[:space:]]+inet/127.0.0.1:$SMTPD_PORT inet/" "$T/etc/master.cf"
cat > "$T/etc/main.cf" <<EOC
compatibility_level = 3.6
queue_directory = $T/spool
data_directory = $T/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.bench.test
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
mydestination =
local_transport = error:5.1.1 no local delivery
alias_maps =
local_recipient_maps =
relayhost = [127.0.0.1]:$SINK_PORT
smtpd_relay_restrictions = permit_mynetworks, reject
smtp_dns_support_level = disabled
maillog_file = $T/postfix.log
maillog_file_prefixes = /var, $T
smtputf8_enable = no
milter_protocol = 6
milter_default_action = tempfail
default_process_limit = 100
EOC
smtp-sink -u nobody -c 127.0.0.1:$SINK_PORT 256 >"$T/sink.log" 2>&1 &
PIDS+=($!); disown $!
for g in postfix libmilter libmilter-nr floor wasmail wasmail-reuse wasmail-reuse-wt; do cg_make "$g"; done
(cg_run postfix postfix -c "$T/etc" start >/dev/null)

queue_empty() { [ -z "$(find "$T/spool/incoming" "$T/spool/active" "$T/spool/deferred" -type f 2>/dev/null | head -1)" ]; }

run_row() {
  local name=$1 milter=$2
  postconf -c "$T/etc" -e "smtpd_milters = $milter"
  postfix -c "$T/etc" reload >/dev/null 2>&1
  sleep 1
  local before sent start end pf0 pf1 m0 m1
  before=$(grep -c 'status=sent' "$T/postfix.log" 2>/dev/null || true)
  pf0=$(cg_usage_us postfix)
  m0=$( [ "$name" = baseline ] && echo 0 || cg_usage_us "$name")
  start=$(date +%s.%N)
  smtp-source -s "$S" -m "$N" -l "$L" -f bench@example.com -t rcpt@example.net 127.0.0.1:$SMTPD_PORT
  while ! queue_empty; do sleep 0.05; done
  end=$(date +%s.%N)
  pf1=$(cg_usage_us postfix)
  m1=$( [ "$name" = baseline ] && echo 0 || cg_usage_us "$name")
  sent=$(( $(grep -c 'status=sent' "$T/postfix.log") - before ))
  local rate
  rate=$(python3 -c "print(f'{$sent/($end-$start):.1f}')")
  local n=$(( sent > 0 ? sent : 1 ))
  local pf=$(( (pf1 - pf0) / n )) milter=$(( (m1 - m0) / n ))
  printf '%-16s %6d sent of %6d  %8s msg/s  CPU/msg: Postfix %5d µs, milter %4d µs\n' \
    "$name" "$sent" "$N" "$rate" "$pf" "$milter"
  echo "$name $rate $sent $pf $milter" >> "$T/rows"
}

cc -O2 -o "$T/noop_libmilter" benches/peers/noop_libmilter.c -lmilter -lpthread
cg_run libmilter "$T/noop_libmilter" "unix:$T/run/libmilter.sock" all hdr &
PIDS+=($!); disown $!
cg_run libmilter-nr "$T/noop_libmilter" "unix:$T/run/libmilter-nr.sock" all-nr hdr &
PIDS+=($!); disown $!
cg_run floor "$EXAMPLES/noop_server" "unix:$T/run/floor.sock" all-nr hdr &
PIDS+=($!); disown $!
ROWS=("baseline|" "libmilter|unix:$T/run/libmilter.sock" "libmilter-nr|unix:$T/run/libmilter-nr.sock"
  "floor|unix:$T/run/floor.sock")
if [ -x "$WASMAIL" ] && [ -f benches/wasmail-bench.toml ]; then
  sed -e "s#{dir}#$T#g" -e "s#{plugins}#$PLUGINS#g" benches/wasmail-bench.toml > "$T/wasmail.toml"
  # The same chain with every plugin's instance_reuse = 1000.
  sed -e "s#{dir}#$T#g" -e "s#{plugins}#$PLUGINS#g" -e "s#milter.sock#milter-reuse.sock#" \
    -e '/^grants = /a instance_reuse = 1000' benches/wasmail-bench.toml > "$T/wasmail-reuse.toml"
  cg_run wasmail "$WASMAIL" serve --config "$T/wasmail.toml" 2>"$T/wasmail.log" &
  PIDS+=($!); disown $!
  cg_run wasmail-reuse "$WASMAIL" serve --config "$T/wasmail-reuse.toml" 2>"$T/wasmail-reuse.log" &
  PIDS+=($!); disown $!
  { printf '[server]\nevent_loops = 0\n'; sed "s#milter-reuse.sock#milter-reuse-wt.sock#" "$T/wasmail-reuse.toml"; } > "$T/wasmail-reuse-wt.toml"
  cg_run wasmail-reuse-wt "$WASMAIL" serve --config "$T/wasmail-reuse-wt.toml" 2>"$T/wasmail-reuse-wt.log" &
  PIDS+=($!); disown $!
  ROWS+=("wasmail|unix:$T/run/milter.sock" "wasmail-reuse|unix:$T/run/milter-reuse.sock"
    "wasmail-reuse-wt|unix:$T/run/milter-reuse-wt.sock")
else
  echo "wasmail rows skipped: build with scripts/setup.sh first" >&2
fi
for s in libmilter libmilter-nr floor milter milter-reuse milter-reuse-wt; do
  for _ in $(seq 100); do [ -S "$T/run/$s.sock" ] && break; sleep 0.1; done
  [ -S "$T/run/$s.sock" ] && chmod 666 "$T/run/$s.sock"
done

echo "Postfix $(postconf -d -h mail_version), $N messages, $S sessions, $L-byte bodies, $(nproc) cores, $ROUNDS rounds"
# Rows interleaved, round after round, so a drift of this shared machine hits every row.
for r in $(seq "$ROUNDS"); do
  for row in "${ROWS[@]}"; do
    case " ${ONLY:-${row%%|*}} " in *" ${row%%|*} "*) run_row "${row%%|*}" "${row#*|}" ;; esac
  done
done

python3 - "$T/rows" <<'PY'
import statistics, sys
rates, pfs, milters = {}, {}, {}
for line in open(sys.argv[1]):
    name, rate, _, pf, milter = line.split()
    rates.setdefault(name, []).append(float(rate))
    pfs.setdefault(name, []).append(float(pf))
    milters.setdefault(name, []).append(float(milter))
med = statistics.median
if "baseline" not in rates:
    sys.exit("no baseline row (ONLY without baseline): no shares to compute")
base = med(rates["baseline"])
base_cpu = med(pfs["baseline"])
print()
# "of Postfix without milter": the median of each round's row ÷ that round's baseline
# (rows run back to back within a round, so a slow spell of the shared machine hits both
# sides), its range, and in how many rounds the row reached 90%.
print("| row | msg/s (median of rounds) | rounds | of Postfix without milter, per round: median [min–max] (≥ 90%) | µs CPU/msg: Postfix | milter | baseline CPU ÷ row CPU |")
print("|---|---|---|---|---|---|---|")
for name, v in rates.items():
    m, pf, mi = med(v), med(pfs[name]), med(milters[name])
    each = ", ".join(f"{x:.0f}" for x in v)
    shares = [x / b * 100 for x, b in zip(v, rates["baseline"])]
    share = f"{med(shares):.0f}% [{min(shares):.0f}–{max(shares):.0f}%] ({sum(x >= 90 for x in shares)}/{len(shares)})"
    print(f"| {name} | {m:.1f} | {each} | {share} | {pf:.0f} | {mi:.0f} | {base_cpu / (pf + mi) * 100:.0f}% |")
PY
