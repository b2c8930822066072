#!/usr/bin/env bash
# Headless Chromium for the MLflow UI test (tests/test_ui.py) and the README
# screenshot (scripts/readme_figures.py). Idempotent: does nothing when a
# chromium is already on PATH. Prints the path of the binary.
set -euo pipefail
for name in chromium chromium-browser google-chrome; do
    if command -v "$name" >/dev/null 2>&1; then
        command -v "$name"
        exit 0
    fi
done
if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null 2>&1; then
    echo "chromium is missing and cannot be installed without root: apt-get install -y chromium" >&2
    exit 1
fi
SUDO=$([ "$(id -u)" -eq 0 ] || echo sudo)
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >&2
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >&2
command -v chromium
