#!/usr/bin/env bash
# Create (or refresh) the daemon's virtual environment .venv with the dev tools.
# Light on purpose: no torch, no ray, no vllm (those live in the engine env).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
  echo "[setup] creating .venv" >&2
  "$PYTHON" -m venv .venv
fi
stamp=".venv/.setup-stamp"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  echo "[setup] installing the package and dev tools into .venv" >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev,tinymodel]'
  echo "$want" > "$stamp"
fi
