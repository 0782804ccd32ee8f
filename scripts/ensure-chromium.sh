#!/usr/bin/env bash
# The browser test drives Debian's Chromium with Playwright (`playwright install` cannot download
# browsers here). Install it from the distribution's archive when it is missing.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || [ -x "${PERSONALM_CHROMIUM:-/usr/bin/chromium}" ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "chromium missing and no apt-get: the browser test will skip (set PERSONALM_CHROMIUM)" >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
    echo "chromium missing and not root: the browser test will skip (apt install chromium)" >&2
    exit 0
  fi
fi
echo "installing chromium (apt) for the browser test"
$SUDO apt-get install -y -q chromium >/dev/null 2>&1 || {
  $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q chromium >/dev/null
}
