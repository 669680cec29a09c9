#!/usr/bin/env bash
# Makes sure headless Chromium is installed for the web UI browser test
# (node/tests/ui_browser.rs). Installs Debian's `chromium` package with apt-get when missing
# (CI runs as root). Bounded in time; fails loudly when it cannot install, unless
# TASKBROKER_SKIP_BROWSER=1 asks to skip the browser test explicitly.
set -euo pipefail

if [ "${TASKBROKER_SKIP_BROWSER:-}" = 1 ]; then
  echo "ensure-chromium: SKIP (TASKBROKER_SKIP_BROWSER=1): the browser test will be skipped"
  exit 0
fi
for b in "${CHROMIUM:-}" chromium chromium-browser; do
  if [ -n "$b" ] && command -v "$b" >/dev/null 2>&1; then
    echo "ensure-chromium: using $(command -v "$b")"
    exit 0
  fi
done
if ! command -v apt-get >/dev/null 2>&1; then
  echo "ensure-chromium: chromium is missing and apt-get is not available; install Chromium" \
       "or set TASKBROKER_SKIP_BROWSER=1 to skip the browser test" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo -n"; fi
echo "ensure-chromium: installing Debian's chromium package (apt-get update + install, at most 15 min)"
export DEBIAN_FRONTEND=noninteractive
timeout 300 $SUDO apt-get update -qq
timeout 600 $SUDO apt-get install -y -qq chromium >/dev/null
command -v chromium >/dev/null 2>&1 || { echo "ensure-chromium: chromium still missing after install" >&2; exit 1; }
echo "ensure-chromium: installed $(command -v chromium)"
