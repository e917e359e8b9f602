#!/usr/bin/env bash
# Install Debian's chromium and chromium-driver when missing: the console's browser tests
# (tests/system/test_console_browser.py, tests/integration/test_console_page.py) drive a
# real headless Chromium through /usr/bin/chromedriver with Selenium (dev extra).
#
# Where apt-get is absent or we are not root, it says so loudly and exits 0: those tests
# then skip with the same reason.
set -euo pipefail

log() { printf '[install-chromium] %s\n' "$*" >&2; }
loud() {
  printf '\n[install-chromium] ************************************************************\n' >&2
  printf '[install-chromium] %s\n' "$@" >&2
  printf '[install-chromium] ************************************************************\n\n' >&2
}

if [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; then
  log "ready: $(/usr/bin/chromedriver --version 2>/dev/null | head -n1)"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  loud "NO apt-get HERE: cannot install chromium + chromium-driver." \
       "The console's browser tests will SKIP." \
       "Install Debian's chromium and chromium-driver (same version) by hand to run them."
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  loud "NOT ROOT: cannot apt-get install chromium chromium-driver." \
       "The console's browser tests will SKIP." \
       "Run: sudo apt-get install --no-install-recommends chromium chromium-driver"
  exit 0
fi
apt_install() {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    chromium chromium-driver
}
log "apt-get install chromium chromium-driver (Debian packages)"
if ! apt_install >/tmp/install-chromium.log 2>&1; then
  log "install failed; apt-get update and retry"
  apt-get update -q >>/tmp/install-chromium.log 2>&1 || true
  if ! apt_install >>/tmp/install-chromium.log 2>&1; then
    loud "apt-get install chromium chromium-driver FAILED (log: /tmp/install-chromium.log)." \
         "The console's browser tests will SKIP."
    exit 0
  fi
fi
log "ready: $(/usr/bin/chromedriver --version 2>/dev/null | head -n1)"
