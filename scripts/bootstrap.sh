#!/usr/bin/env bash
# Create .venv with edgeflow and its dev tools, once; later calls only check it is current.
set -euo pipefail
cd "$(dirname "$0")/.."

pick_python() {
  for v in python3.12 python3.11 python3.10 python3; do
    if command -v "$v" >/dev/null 2>&1 && "$v" -c 'import sys; sys.exit(not ((3,10) <= sys.version_info[:2] <= (3,12)))' 2>/dev/null; then
      echo "$v"; return 0
    fi
  done
  return 1
}

if [ ! -x .venv/bin/python ]; then
  PY=$(pick_python || true)
  if [ -z "${PY:-}" ] || ! "$PY" -c 'import venv, ensurepip' 2>/dev/null; then
    echo "bootstrap: installing Python 3 (3.10-3.12) with venv from Debian packages" >&2
    apt-get update -qq && apt-get install -y -qq python3 python3-venv python3-dev >/dev/null
    PY=$(pick_python)
  fi
  "$PY" -m venv .venv
fi

stamp=.venv/.edgeflow-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev,mqtt,plot]'
  echo "$want" > "$stamp"
fi
