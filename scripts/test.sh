#!/usr/bin/env bash
# The test command (README, CI): set-up on a fresh machine, then lint, types and tests.
#
#   scripts/test.sh            everything: unit, integration, system (real git servers,
#                              real processes, real vLLM on the CPU, real Ray in netns)
#   scripts/test.sh -m 'not system'   fast subset (pytest args pass through)
#
# Environment: RECONCILER_ENGINE_PYTHON (engine venv python; default .venv-engine/bin/python,
# installed here when missing), SKIP_ENGINE_INSTALL=1 to skip installing it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-dev.sh
if [[ "${SKIP_ENGINE_INSTALL:-0}" != 1 ]]; then
  scripts/install-engine-env.sh --cpu .venv-engine
fi
scripts/install-prometheus.sh  # promtool rule tests, the Prometheus system test
scripts/install-chromium.sh  # the console's browser tests (headless Chromium)
export RECONCILER_ENGINE_PYTHON="${RECONCILER_ENGINE_PYTHON:-$PWD/.venv-engine/bin/python}"

echo "[test] ruff" >&2
.venv/bin/ruff check reconciler schemas testrigs tests bench scripts
echo "[test] layer contract (import-linter)" >&2
.venv/bin/lint-imports --no-cache
echo "[test] mypy --strict" >&2
.venv/bin/mypy
echo "[test] pytest" >&2
set +e
.venv/bin/python -m pytest -p no:cacheprovider "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then
  echo "[test] pytest collected no tests: that is a failure" >&2
  exit 1
fi
exit $rc
