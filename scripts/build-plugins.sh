#!/usr/bin/env bash
# Builds every wasmail plugin (the cargo workspace in plugins/) once, in release, for
# wasm32-wasip2, and copies each component to target/plugins/<crate-name>.wasm at the
# repository root (crate names keep their dashes: target/plugins/auth-check.wasm).
#
#   scripts/build-plugins.sh          build and copy the components
#   scripts/build-plugins.sh --test   also run the plugins' guest-side unit tests natively
#
# Honours CARGO_TARGET_DIR (default: plugins/target). Callable from any directory.
set -euo pipefail

usage() {
  sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
}

run_tests=0
for arg in "$@"; do
  case "$arg" in
    --test) run_tests=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "build-plugins: unknown argument: $arg" >&2; usage >&2; exit 2 ;;
  esac
done

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
manifest="$root/plugins/Cargo.toml"
target_dir="${CARGO_TARGET_DIR:-$root/plugins/target}"
case "$target_dir" in
  /*) ;;
  *) target_dir="$PWD/$target_dir" ;; # cargo resolves a relative CARGO_TARGET_DIR against the cwd
esac
out_dir="$root/target/plugins"

locked=()
if [ -f "$root/plugins/Cargo.lock" ]; then
  locked=(--locked)
fi

if command -v rustup >/dev/null 2>&1 &&
  ! rustup target list --installed | grep -qx wasm32-wasip2; then
  echo "build-plugins: installing the wasm32-wasip2 target" >&2
  rustup target add wasm32-wasip2
fi

if [ "$run_tests" = 1 ]; then
  host="$(rustc -vV | sed -n 's/^host: //p')"
  echo "build-plugins: running guest-side unit tests on $host"
  CARGO_TARGET_DIR="$target_dir" cargo test "${locked[@]}" --manifest-path "$manifest" \
    --workspace --target "$host"
fi

CARGO_TARGET_DIR="$target_dir" cargo build "${locked[@]}" --release --target wasm32-wasip2 \
  --manifest-path "$manifest" --workspace

# The plugin crates: every workspace crate whose library is a cdylib (the SDK produces no .wasm).
crates=()
for toml in "$root"/plugins/*/*/Cargo.toml; do
  if grep -Eq '^crate-type *= *\[.*"cdylib"' "$toml"; then
    crates+=("$(sed -n 's/^name *= *"\(.*\)"/\1/p' "$toml" | head -n 1)")
  fi
done
if [ "${#crates[@]}" = 0 ]; then
  echo "build-plugins: no plugin crates found in $manifest" >&2
  exit 1
fi

mkdir -p "$out_dir"
status=0
for crate in "${crates[@]}"; do
  src="$target_dir/wasm32-wasip2/release/${crate//-/_}.wasm"
  dst="$out_dir/$crate.wasm"
  if [ ! -f "$src" ]; then
    echo "build-plugins: $src was not produced" >&2
    status=1
    continue
  fi
  # A component starts with \0asm and version bytes 0d 00 01 00 (a core module: 01 00 00 00).
  magic="$(head -c 8 "$src" | od -An -tx1 | tr -d ' \n')"
  if [ "$magic" != "0061736d0d000100" ]; then
    echo "build-plugins: $src is not a WebAssembly component (header $magic)" >&2
    status=1
    continue
  fi
  cp -f "$src" "$dst.tmp"
  mv -f "$dst.tmp" "$dst"
  printf '%-40s %8d bytes\n' "target/plugins/$crate.wasm" "$(stat -c %s "$dst")"
done
exit "$status"
