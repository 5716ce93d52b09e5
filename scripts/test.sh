#!/usr/bin/env bash
# Runs every test: Rust unit and integration tests, the end-to-end suite (the real
# `switchboard` binary driven by socket.io-client from npm, pinned by tests/e2e's lockfile,
# and by python-socketio, pinned by tests/python/requirements.txt, in tests/python/.venv),
# and the browser test of the chat page (headless Chromium; tests/browser/run.sh installs
# Debian's chromium when it is missing). Redis servers and a Redis Cluster are started by the
# tests themselves (redis-server and redis-cli on PATH).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --workspace --bins

# One Redis Cluster (three masters, three replicas) for the whole run: every test that needs
# one, Rust or end-to-end, shares it under a key prefix of its own (tests that kill a master
# start their own). It stops when this script exits and its input closes.
coproc CLUSTER { target/debug/redis-cluster; }
read -r cluster_line <&"${CLUSTER[0]}"
export "${cluster_line?the redis-cluster helper printed nothing}"

cargo test --workspace

export SB_BIN="$PWD/target/debug/switchboard"
tests/browser/run.sh

# python-socketio for tests/e2e/python.test.mjs, pinned, in the repository's own venv.
if ! tests/python/.venv/bin/python -c 'import socketio' >/dev/null 2>&1 \
  || ! cmp -s tests/python/requirements.txt tests/python/.venv/requirements.txt; then
  python3 -m venv tests/python/.venv
  tests/python/.venv/bin/pip install --quiet --no-cache-dir --disable-pip-version-check -r tests/python/requirements.txt
  cp tests/python/requirements.txt tests/python/.venv/requirements.txt
fi

cd tests/e2e
if ! npm ls --silent >/dev/null 2>&1; then
  npm ci --no-audit --no-fund
fi
npm test
