#!/usr/bin/env bash
# Runs every test: Rust unit and integration tests, then the end-to-end suite, which drives
# the real `switchboard` binary with socket.io-client from npm (pinned by tests/e2e's lockfile).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --workspace --bins
cargo test --workspace

cd tests/e2e
if ! npm ls --silent >/dev/null 2>&1; then
  npm ci --no-audit --no-fund
fi
npm test
