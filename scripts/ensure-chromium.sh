#!/usr/bin/env bash
# Make sure a headless-capable chromium is installed (Debian's package), idempotently.
#
# Prints the path of the browser on stdout and exits 0 when one is available; exits
# non-zero with a message on stderr when it cannot be installed (no root, no apt, no
# mirror). The browser tests call this from their set-up and skip on failure.
set -euo pipefail

find_browser() {
    local name
    for name in "${CHROMIUM:-}" chromium chromium-browser google-chrome-stable google-chrome; do
        [ -n "$name" ] || continue
        if command -v "$name" >/dev/null 2>&1; then
            command -v "$name"
            return 0
        fi
    done
    return 1
}

if find_browser; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-chromium: chromium is missing and apt-get is not available; install chromium yourself" >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "ensure-chromium: chromium is missing and installing it needs root (run: sudo apt-get install -y chromium)" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
# A single attempt may find stale package lists; update then retry once.
if ! $SUDO apt-get install -y --no-install-recommends chromium fonts-dejavu-core >&2; then
    $SUDO apt-get update >&2
    $SUDO apt-get install -y --no-install-recommends chromium fonts-dejavu-core >&2
fi

if find_browser; then
    exit 0
fi
echo "ensure-chromium: apt-get finished but no chromium binary is on PATH" >&2
exit 1
