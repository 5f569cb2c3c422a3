#!/usr/bin/env bash
# Install Debian's Chromium for the browser test of the Dagster UI
# (engine_assets_tests/test_ui_chromium.py). Does nothing when it is already there.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_browser.sh: apt-get not found. Install Chromium at /usr/bin/chromium by hand." >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
$SUDO apt-get update
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends chromium fonts-dejavu-core
