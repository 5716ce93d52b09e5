#!/usr/bin/env bash
# Runs every test: Rust unit and integration tests, the end-to-end suite (the real
# `switchboard` binary driven by socket.io-client from npm, pinned by tests/e2e's lockfile),
# and the browser test of the chat page (headless Chromium; tests/browser/run.sh installs
# Debian's chromium when it is missing).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --workspace --bins
cargo test --workspace

export SB_BIN="$PWD/target/debug/switchboard"
tests/browser/run.sh

cd tests/e2e
if ! npm ls --silent >/dev/null 2>&1; then
  npm ci --no-audit --no-fund
fi
npm test
