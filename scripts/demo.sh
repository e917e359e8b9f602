#!/usr/bin/env bash
# The demo: set up, prepare SmolLM2-135M-Instruct (cached), then run the daemon on a local
# one-node CPU cluster repo; chat, push a change, watch it converge, clean up.
#   scripts/demo.sh [--keep] [--tiny]   (--tiny: the random-weight model, no preparation)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-dev.sh
scripts/install-engine-env.sh --cpu .venv-engine
exec .venv/bin/python -m reconciler.demo.driver "$@"
