#!/usr/bin/env bash
# Here (no GPU): resolve and download the wheels that vLLM 0.25.0 + the reconciler daemon
# need on the H200 device image, minus what the image already has (device-freeze-h200.txt,
# `pip list --format=freeze` read there on 2026-11-29), and minus heavy optional kernel
# packages that a dense tiny Llama on FA3 does not import at start-up.
# Then pack vLLM itself pruned (no FA2 .so, no MoE .so, no vllm-rs, no CUTLASS/DeepGEMM
# headers) and the dependency wheels into pieces of < 60 MiB under .gpu/ (git-ignored).
#   scripts/gpu-check/fetch-wheels.sh [VLLM_WHEEL]   (run from the project's root; ~6 min;
#   scripts/gpu-check/pack.sh runs it)
set -euo pipefail
ROOT=$(pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
PY=${PY:-$(command -v python3.12)}   # any CPython 3.12 with pip (pyenv has one here)
W=/tmp/gpuwork; mkdir -p $W/wheels $ROOT/.gpu
VLLM_WHL=${1:-}
if [ -z "$VLLM_WHL" ]; then
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 -d $W vllm==0.25.0
  VLLM_WHL=$(ls $W/vllm-0.25.0-*.whl | head -1)
fi
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo /.gpu/ >> .git/info/exclude
PLAT=(--only-binary=:all: --python-version 3.12 --implementation cp
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
      --platform manylinux1_x86_64 --platform manylinux_2_24_x86_64
      --platform manylinux_2_31_x86_64 --platform manylinux_2_34_x86_64
      --platform manylinux_2_35_x86_64 --platform manylinux_2_18_x86_64 --platform any)
SKIP='^(torch|torchaudio|torchvision|torchcodec|pynvvideocodec|flashinfer-python|flashinfer-cubin|apache-tvm-ffi|tilelang|fastsafetensors|nvidia-cutlass-dsl|quack-kernels|tokenspeed-mla|humming-kernels|numba|setuptools|nvidia-cudnn-frontend|mistral-common)$'
# mistral_common pins numpy<2.4 on Python 3.12 (the image has 2.5.2): taken with --no-deps
# below, its other requirements resolved here
NODEPS=('mistral_common[image]>=1.11.5')
# vLLM's requirements (no extras), minus the skipped ones, plus the daemon's own
unzip -p "$VLLM_WHL" '*/METADATA' | sed -n 's/^Requires-Dist: //p' | grep -v 'extra ==' \
  | while IFS= read -r req; do
      name=$(echo "$req" | sed -E 's/[ ;<>=!~\[].*//' | tr 'A-Z_.' 'a-z--')
      echo "$name" | grep -Eq "$SKIP" || echo "$req"
    done > $W/reqs.txt
printf '%s\n' 'pydantic>=2.7,<3' 'pyyaml>=6' 'gitpython>=3.1.40' 'watchfiles>=0.21' \
  'apscheduler>=3.10,<4' 'prometheus-client>=0.20' 'nvidia-ml-py>=12' \
  'pydantic-extra-types[pycountry]>=2.10.5' 'jsonschema>=4.21.1' >> $W/reqs.txt
# the device's versions as constraints, so shared dependencies resolve to what is there
grep -viE "^(setuptools|numba|nvidia-[a-z0-9-]+|cuda-[a-z-]+)==" $HERE/device-freeze-h200.txt > $W/constraints.txt
# torch is on the image: a dependency-free stand-in (2.11.0+stub, preferred as the higher
# version) keeps the resolver away from torch's own CUDA wheel pins
mkdir -p $W/stub && $PY - $W/stub <<'PY'
import sys, zipfile
d = "torch-2.11.0+stub.dist-info"
with zipfile.ZipFile(f"{sys.argv[1]}/torch-2.11.0+stub-cp312-cp312-manylinux_2_28_x86_64.whl", "w") as z:
    z.writestr(f"{d}/METADATA", "Metadata-Version: 2.1\nName: torch\nVersion: 2.11.0+stub\n")
    z.writestr(f"{d}/WHEEL", "Wheel-Version: 1.0\nGenerator: stub\nRoot-Is-Purelib: false\nTag: cp312-cp312-manylinux_2_28_x86_64\n")
    z.writestr(f"{d}/RECORD", "")
PY
$PY -m pip install -q --dry-run --ignore-installed --report $W/report.json "${PLAT[@]}" \
  --find-links $W/stub --target $W/dry -c $W/constraints.txt -r $W/reqs.txt
$PY - "$HERE/device-freeze-h200.txt" "$W/report.json" > $W/need.txt <<'PY'
import json, re, sys
norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()
have = {norm(l.split("==")[0]) for l in open(sys.argv[1]) if "==" in l}
for item in json.load(open(sys.argv[2]))["install"]:
    md = item["metadata"]
    if norm(md["name"]) not in have:
        print(f'{md["name"]}=={md["version"]}')
PY
echo "to download: $(wc -l < $W/need.txt) wheels"; cat $W/need.txt | tr '\n' ' '; echo
$PY -m pip download -q --no-deps "${PLAT[@]}" -d $W/wheels -r $W/need.txt "${NODEPS[@]}"
ls $W/wheels | grep -i mistral >> $W/need.txt
cp $W/need.txt $ROOT/.gpu/wheel-set.txt
# pruned vLLM tree (skip the rest with ONLY_WHEELS=1)
rm -rf $W/vllm-tree && mkdir -p $W/vllm-tree && (cd $W/vllm-tree && unzip -q "$VLLM_WHL")
cd $W/vllm-tree
rm -f vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so vllm/_moe_C_stable_libtorch.abi3.so vllm/vllm-rs \
      vllm/third_party/deep_gemm/_C.cpython-3{10,11,13,14}-x86_64-linux-gnu.so
rm -rf vllm/third_party/deep_gemm/include vllm/third_party/fmha_sm100/cutlass
# piece a (54 MB): vLLM's kernel library; b (15 MB): FA3 + the rest of vLLM; c (24 MB): deps.
# One call carries a, the next (within 30 s) b + c.
# (xz, not zstd: the device image may lack zstd, Python's tarfile reads xz anywhere)
tar -cf - vllm/_C_stable_libtorch.abi3.so | xz -9e -T0 > $ROOT/.gpu/a.tar.xz
tar -cf - --exclude=vllm/_C_stable_libtorch.abi3.so vllm vllm-0.25.0.dist-info \
  | xz -9e -T0 > $ROOT/.gpu/b.tar.xz
# the wheels installed here (an unpack: pure Python or manylinux x86-64 for CPython 3.12)
# and packed as one tree, which compresses far better than the wheels themselves; the
# fastapi-cloud-cli branch of fastapi[standard] and pycountry's translations are left out
rm -rf $W/site && $PY -m pip install -q --no-index --no-deps --no-compile --target $W/site $W/wheels/*.whl
cd $W/site && rm -rf bin pycountry/locales fastapi_cloud_cli sentry_sdk rignore fastar
tar -cf - . | xz -9e -T0 > $ROOT/.gpu/c.tar.xz
ls -la $ROOT/.gpu
