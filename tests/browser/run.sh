#!/usr/bin/env bash
# The browser tests: the web-chat example and the admin page in headless Chromium against
# the real binary (the admin test starts its own redis-server and two nodes).
# Installs Debian's chromium when missing (apt-get, as root), the pinned npm packages when
# missing (npm ci), builds the binary unless SB_BIN names one, and runs the test.
#   tests/browser/run.sh                        # from anywhere
#   UPDATE_SCREENSHOT=1 tests/browser/run.sh    # also rewrites book/src/images/web-chat.png and admin.png
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

chromium="${CHROMIUM:-/usr/bin/chromium}"
if [ ! -x "$chromium" ]; then
  echo "browser test: installing chromium" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

if [ -z "${SB_BIN:-}" ]; then
  (cd "$repo" && cargo build --quiet --bin switchboard)
  export SB_BIN="$repo/target/debug/switchboard"
fi

cd "$here"
if [ ! -d node_modules ]; then
  npm ci --no-audit --no-fund
fi
npm test
