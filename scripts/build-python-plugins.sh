#!/usr/bin/env bash
# Builds the Python example plugins (plugins/python/*/app.py) into WebAssembly
# components with componentize-py, after running each plugin's unit tests.
#
#   scripts/build-python-plugins.sh            # every plugin
#   scripts/build-python-plugins.sh keyword-score
#
# Output: target/plugins/<plugin>.wasm. The tool lives in a venv under target/pyenv
# (created on first use, reused afterwards); the version is pinned in
# plugins/python/requirements.txt. Needs python3 (3.9+) with venv and pip, and access
# to PyPI on the first run. Environment: PYTHON (default python3).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$root/plugins/python"
venv="$root/target/pyenv"
out="$root/target/plugins"
requirements="$src/requirements.txt"
python="${PYTHON:-python3}"

stage="$root/target/python-build"
# Keep __pycache__ out of the source tree (the unit tests; componentize-py's build-time
# interpreter writes its caches anyway, hence the staging directory below).
export PYTHONDONTWRITEBYTECODE=1

pinned="$(sed -n 's/^componentize-py==\([^[:space:]]*\).*/\1/p' "$requirements")"
if [[ -z "$pinned" ]]; then
    echo "error: $requirements must pin componentize-py==<version>" >&2
    exit 1
fi

if [[ ! -x "$venv/bin/python" ]]; then
    echo "creating $venv"
    "$python" -m venv "$venv"
fi
installed="$("$venv/bin/componentize-py" --version 2>/dev/null | awk '{print $2}' || true)"
if [[ "$installed" != "$pinned" ]]; then
    echo "installing componentize-py $pinned into $venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
fi

if (($#)); then
    plugins=("$@")
else
    plugins=()
    for app in "$src"/*/app.py; do
        plugins+=("$(basename "$(dirname "$app")")")
    done
fi

mkdir -p "$out"
for plugin in "${plugins[@]}"; do
    dir="$src/$plugin"
    if [[ ! -f "$dir/app.py" ]]; then
        echo "error: no plugin at $dir (expected app.py)" >&2
        exit 1
    fi
    # The WIT world the plugin targets: the first line of an optional `world` file.
    world=milter-filter
    if [[ -f "$dir/world" ]]; then
        world="$(head -n1 "$dir/world")"
    fi

    echo "== $plugin: unit tests"
    (cd "$dir" && "$venv/bin/python" -m unittest --quiet)

    echo "== $plugin: componentize-py ($world)"
    # componentize-py packs the whole --python-path directory into the component and
    # writes bytecode caches there: give it a copy of the plugin's modules, minus tests.
    rm -rf "${stage:?}/$plugin"
    mkdir -p "$stage/$plugin"
    find "$dir" -maxdepth 1 -name '*.py' ! -name 'test_*.py' -exec cp {} "$stage/$plugin/" \;
    # Unset VIRTUAL_ENV so that componentize-py does not add a caller's venv to the path.
    env -u VIRTUAL_ENV "$venv/bin/componentize-py" -q -d "$root/wit" -w "$world" \
        componentize -p "$stage/$plugin" app -o "$out/$plugin.wasm"
    size="$(wc -c <"$out/$plugin.wasm")"
    echo "built $out/$plugin.wasm ($size bytes, $((size / 1024 / 1024)) MiB)"
done
