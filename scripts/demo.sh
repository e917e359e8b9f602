#!/usr/bin/env bash
# The demo: set up, then run the daemon on a local one-node CPU cluster repo with a tiny
# model made at run time; chat, push a change, watch it converge, clean up.
#   scripts/demo.sh [--keep]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-dev.sh
scripts/install-engine-env.sh --cpu .venv-engine
exec .venv/bin/python -m reconciler.demo.driver "$@"
