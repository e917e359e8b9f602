#!/usr/bin/env bash
# Validate the NVML GPU port on a machine with NVIDIA GPUs. Run from the repository root.
# pydantic and pyyaml come as wheels in .whl/ where the machine lacks them (see README.md).
# Output goes to stdout and to $OUT/output.txt.
set -u
OUT=${OUT:-/tmp/gpu-validation}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ! python3 -c "import pydantic, yaml" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
PROBE_DIR=$(mktemp -d /tmp/gpu-probe.XXXX)
export PROBE_DIR
{
  echo "## host"
  date -u +%Y-%m-%dT%H:%M:%SZ
  uname -r
  nvidia-smi --query-gpu=index,uuid,name,memory.total,memory.used,driver_version,pci.bus_id \
    --format=csv
  nvidia-smi topo -m 2>&1 | head -8
  python3 - <<'PY'
import importlib.metadata as md, sys
print("python", sys.version.split()[0])
for name in ("nvidia-ml-py", "torch", "pydantic", "pyyaml"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "MISSING")
PY
  echo
  echo "## probe: NvmlGpuPort, a foreign process on GPU 0, plan()"
  python3 docs/gpu-validation/probe.py
  echo "probe exit code: $?"
  echo "kernel log, XID lines (cross-check; may be unreadable in a VM):"
  (dmesg 2>&1 | grep -i xid | tail -3) || true
  nvidia-smi --query-gpu=index,memory.used --format=csv
  echo
  echo "## reconciler CLI on the probe's repo (declared GPUs, no NVML)"
  python3 -m reconciler validate "$PROBE_DIR/repo-tp"
  echo "validate exit code: $?"
  python3 -m reconciler plan --repo "$PROBE_DIR/repo-tp" --node gpu-node
  echo "plan exit code: $? (1 = changes)"
  echo
  echo "## unit tests (NVML present: the NVML-absent test skips, the real-GPU test runs)"
  python3 -m pytest -q -p no:cacheprovider tests/unit/test_gpus.py 2>&1
  echo "pytest exit code: $?"
} 2>&1 | tee "$OUT/output.txt"
