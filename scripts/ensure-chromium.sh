#!/usr/bin/env bash
# The web UI's browser tests (tests/ui) drive Debian's /usr/bin/chromium through Playwright's executable_path:
# Playwright's own browser download (`playwright install`) is blocked on these machines. Installs it when
# missing and we are root with apt; otherwise says in one line what to install and fails.
set -euo pipefail
CHROMIUM=/usr/bin/chromium
[ -x "$CHROMIUM" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's chromium for the browser tests (apt-get, ~1 min)..." >&2
  if apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
      && [ -x "$CHROMIUM" ]; then
    exit 0
  fi
fi
echo "make test needs $CHROMIUM for the web UI's browser tests: run 'sudo apt-get install -y chromium' (Debian/Ubuntu), then make test again" >&2
exit 1
