#!/usr/bin/env bash
# Install Prometheus (the server and promtool) from Debian's `prometheus` package when
# missing: the alert-rule unit tests (promtool) and the system test that scrapes a real
# daemon and engine (tests/system/test_prometheus.py) need them.
#
# Where apt-get is absent or we are not root, it says so loudly and exits 0: those tests
# then skip with the same reason. The package's service is left stopped and disabled if
# installing it started one (the tests run their own server on a free loopback port).
set -euo pipefail

log() { printf '[install-prometheus] %s\n' "$*" >&2; }
loud() {
  printf '\n[install-prometheus] ************************************************************\n' >&2
  printf '[install-prometheus] %s\n' "$@" >&2
  printf '[install-prometheus] ************************************************************\n\n' >&2
}

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
  log "ready: $(prometheus --version 2>&1 | head -n1)"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  loud "NO apt-get HERE: cannot install Prometheus." \
       "The promtool rule tests and tests/system/test_prometheus.py will SKIP." \
       "Install prometheus + promtool (2.42 or newer) by hand to run them."
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  loud "NOT ROOT: cannot apt-get install prometheus." \
       "The promtool rule tests and tests/system/test_prometheus.py will SKIP." \
       "Run: sudo apt-get install --no-install-recommends prometheus"
  exit 0
fi

was_active=0
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
  was_active=1
fi
apt_install() {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus
}
log "apt-get install prometheus (Debian package: server + promtool)"
if ! apt_install >/tmp/install-prometheus.log 2>&1; then
  log "install failed; apt-get update and retry"
  apt-get update -q >>/tmp/install-prometheus.log 2>&1 || true
  if ! apt_install >>/tmp/install-prometheus.log 2>&1; then
    loud "apt-get install prometheus FAILED (log: /tmp/install-prometheus.log)." \
         "The promtool rule tests and tests/system/test_prometheus.py will SKIP."
    exit 0
  fi
fi
if [[ $was_active -eq 0 ]] && command -v systemctl >/dev/null 2>&1 \
   && systemctl is-active --quiet prometheus 2>/dev/null; then
  log "stopping the prometheus service the package started (tests run their own)"
  systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
log "ready: $(prometheus --version 2>&1 | head -n1)"
