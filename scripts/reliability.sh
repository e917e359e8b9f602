#!/usr/bin/env bash
# Reliability + security suites (real daemon, test engine, loopback git; needs root for
# the tmpfs disk-full case) and the findings table. Reports are kept under
# ${RELIABILITY_OUT:-/tmp/reliability}. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python bench/reliability.py --out "${RELIABILITY_OUT:-/tmp/reliability}" "$@"
