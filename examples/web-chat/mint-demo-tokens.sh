#!/usr/bin/env bash
# Mints 8-hour tokens for demo users and writes public/demo-users.json, which the chat page
# offers as a "Demo user" picker. For a local demo only: anyone who can load the page can
# read that file. Run from anywhere:
#   examples/web-chat/mint-demo-tokens.sh [user ...]      # default: alice bob carol
set -euo pipefail
cd "$(dirname "$0")/../.."
config=examples/web-chat/switchboard.toml
out=examples/web-chat/public/demo-users.json
if [ -n "${SB_BIN:-}" ]; then
  token() { "$SB_BIN" token --ttl 8h --config "$config" --sub "$1"; }
else
  token() { cargo run -q --bin switchboard -- token --ttl 8h --config "$config" --sub "$1"; }
fi
users=("$@")
[ ${#users[@]} -gt 0 ] || users=(alice bob carol)
for u in "${users[@]}"; do
  [[ "$u" =~ ^[A-Za-z0-9._-]+$ ]] || { echo "user ids here are letters, digits, . _ -: $u" >&2; exit 2; }
done
{
  printf '['
  sep=''
  for u in "${users[@]}"; do
    printf '%s\n  {"user": "%s", "token": "%s"}' "$sep" "$u" "$(token "$u")"
    sep=','
  done
  printf '\n]\n'
} > "$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out for: ${users[*]}"
