#!/usr/bin/env bash
# On the device machine (the device tool's `run`), from the repository root:
#   bash scripts/gpu-check/device.sh install PIECE...   unpack pieces (made by pack.sh here)
#   bash scripts/gpu-check/device.sh run SCENARIO...    s1 s2 s3 s4 (install first)
# Several verbs may follow one another in one call:
#   bash scripts/gpu-check/device.sh install .gpu/r2.tar.xz run s1 s2
#   bash scripts/gpu-check/device.sh src .gpu/src.tar.xz ...   the committed tree (pack.sh
#       --src writes it from HEAD): scenarios then run from that clean copy, not this tree
# /tmp survives between calls while the machine stays warm (30 s after a call); results
# collect in /tmp/gc-results and are copied to $OUT after every call.
set -uo pipefail
export PYTHONUNBUFFERED=1
SITE=/tmp/site
mkdir -p $SITE /tmp/gc-results
# Tools the image lacks (iproute2, git) come in tools.tar.xz; the image's own win.
export PATH=$PATH:/tmp/tools/bin
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
SRC=$(pwd)
[ -d /tmp/src ] && SRC=/tmp/src
verb=""
scenarios=()
for arg in "$@"; do
  case $arg in
    install|run|src) verb=$arg; continue ;;
  esac
  case $verb in
    install)
      t0=$(date +%s%N)
      case $arg in
        *tools.tar.xz) python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall("/tmp", filter="fully_trusted")' "$arg" ;;
        *.tar.xz) python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="fully_trusted")' "$arg" $SITE ;;
        *) echo "unknown piece $arg" >&2; exit 2 ;;
      esac || { echo "unpacking $arg failed" >&2; exit 2; }
      echo "$(basename "$arg") $(stat -c %s "$arg")" >> $SITE/.pieces
      echo "unpacked $arg in $(( ($(date +%s%N) - t0) / 1000000 )) ms" ;;
    src)
      rm -rf /tmp/src && mkdir -p /tmp/src
      python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall("/tmp/src", filter="data")' "$arg" || exit 2
      SRC=/tmp/src; echo "source: $(cat /tmp/src/.gpu-commit)" ;;
    run) scenarios+=("$arg") ;;
    *) echo "usage: device.sh install PIECE... | run SCENARIO..." >&2; exit 2 ;;
  esac
done
echo "pieces so far: $(cut -d' ' -f1 $SITE/.pieces 2>/dev/null | tr '\n' ' ')"
rc=0
if [ ${#scenarios[@]} -gt 0 ]; then
  # The daemon reads a Ray head's GCS with the engine python run isolated (`python -I`:
  # no PYTHONPATH), so Ray must import from the interpreter's own site-packages: a .pth
  # file there adds /tmp/site (a real engine venv has Ray installed in it).
  echo $SITE > "$(python3 -c 'import site; print(site.getsitepackages()[0])')/gpucheck-site.pth"
  {
    echo "## host $(date -u +%FT%TZ) $(uname -r)"
    nvidia-smi --query-gpu=index,uuid,name,memory.total,memory.used,driver_version --format=csv
    command -v ip git nsenter || true
  } 2>&1 | tee -a /tmp/gc-results/run.log
  # stop (SIGINT: every daemon and engine is stopped on the way out) before the device
  # tool's 600 s limit, so that what finished is still copied to $OUT below
  left=$(( ${GPUCHECK_LIMIT_S:-590} - SECONDS ))
  (cd "$SRC" && PYTHONPATH=$SRC:$SITE timeout -s INT -k 20 $left python3 -m testrigs.gpucheck \
    --mode gpu --work /tmp/gc --out /tmp/gc-results "${scenarios[@]}") 2>&1 | tee -a /tmp/gc-results/run.log
  rc=${PIPESTATUS[0]}
fi
if [ -n "${OUT:-}" ]; then
  cp /tmp/gc-results/*.json /tmp/gc-results/*.md /tmp/gc-results/*.txt /tmp/gc-results/run.log "$OUT"/ 2>/dev/null
  # the daemons' and engines' logs of the last run, compressed, for the record
  tar -C /tmp/gc --exclude='*/ray/*/session_*/sockets' --exclude='models' -cJf "$OUT/logs.tar.xz" \
    $(cd /tmp/gc 2>/dev/null && ls -d *.log state-*/logs state-*/ray 2>/dev/null) 2>/dev/null || true
fi
exit $rc
