#!/usr/bin/env bash
# Installs everything wasmail needs on a fresh Debian (bookworm) machine and builds it.
# Idempotent: safe to run again. Run as root (or with sudo available).
#
#   scripts/setup.sh            system packages + wasm target + release build + plugins
#   scripts/setup.sh --deps     system packages + wasm target only (what the tests need first)
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

PACKAGES=(
  build-essential pkg-config ca-certificates openssl sqlite3 iproute2 procps
  postfix swaks miltertest libmilter-dev python3-milter
  dovecot-core dovecot-imapd dovecot-pop3d dovecot-lmtpd dovecot-auth-lua
  protobuf-compiler libprotobuf-dev etcd-server python3 python3-venv python3-pip
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  # Postfix asks a debconf question on install; answer it so the install is non-interactive.
  echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
  echo "postfix postfix/mailname string wasmail.test" | $SUDO debconf-set-selections
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  # The packaged services are not used: tests and workers start private instances.
  $SUDO systemctl disable --now postfix dovecot etcd >/dev/null 2>&1 || true
else
  echo "setup: system packages already installed"
fi

# Postfix daemons log through postlogd's unix datagram socket (maillog_file). A container
# without systemd-sysctl keeps the kernel's queue of 10 datagrams, and a burst of start-up
# log lines under load can then wedge a private Postfix instance (postlogd blocks writing
# its own start-up lines to its full socket). 512 is what a standard Debian host sets.
qlen=/proc/sys/net/unix/max_dgram_qlen
if [ -w "$qlen" ] && [ "$(cat "$qlen")" -lt 512 ]; then
  echo "setup: raising net.unix.max_dgram_qlen from $(cat "$qlen") to 512"
  echo 512 > "$qlen" || true
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install Rust 1.95 with rustup first" >&2
  exit 1
fi
if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi

if [ "${1:-}" = "--deps" ]; then
  exit 0
fi

cargo build --release --locked
scripts/build-plugins.sh
scripts/build-python-plugins.sh
echo "setup: done; binary at target/release/wasmail"
