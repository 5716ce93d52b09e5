#!/usr/bin/env bash
# Builds the .deb with cargo-deb, installs it on this machine with dpkg (as root), checks
# the installed files, validates the installed config, runs the installed binary with it as
# a plain process (as the package's user, with the package's environment file), stops it
# with SIGTERM, verifies the systemd unit when systemd-analyze is there, and purges the
# package again.
#
#   packaging/test-deb.sh                    # packages target/debug/switchboard (fast)
#   DEB_PROFILE=release packaging/test-deb.sh   # a release build, as for publishing
#
# The default packages the debug binary scripts/test.sh builds anyway: a release build of
# the workspace takes far longer than everything else in CI on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DEB_VERSION=3.8.0
PROFILE=${DEB_PROFILE:-dev}
CONFIG=/etc/switchboard/switchboard.toml
ENV_FILE=/etc/switchboard/switchboard.env
UNIT=/usr/lib/systemd/system/switchboard.service

say() { printf 'test-deb: %s\n' "$*"; }
fail() { printf 'test-deb: FAILED: %s\n' "$*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1; }
started=$SECONDS

[ "$(id -u)" = 0 ] || fail "installs a package with dpkg: run it as root"
need dpkg || fail "dpkg is missing: this script is for Debian and its derivatives"
need curl || { apt-get update -qq && apt-get install -y -qq curl; }
# systemd-analyze checks the unit offline. Debian's systemd package does not become the
# init system (systemd-sysv does), so installing it here is harmless; without it, skip.
if ! need systemd-analyze && need apt-get; then
  apt-get install -y -qq systemd >/dev/null 2>&1 || say "could not install systemd: the unit will not be verified"
fi

# cargo-deb, pinned, in the repository's own .tools/ (like mdbook).
if ! .tools/bin/cargo-deb --version 2>/dev/null | grep -q "$CARGO_DEB_VERSION"; then
  say "installing cargo-deb $CARGO_DEB_VERSION into .tools/"
  cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked --root .tools --quiet
fi

out=target/debian
rm -rf "$out"
if [ "$PROFILE" = release ]; then
  say "building the release binary and the package"
  deb=$(.tools/bin/cargo-deb --locked -o "$out/" | tail -n 1)
else
  cargo build --quiet --bin switchboard
  # cargo-deb warns that the dev profile is meant for development: that is the point here.
  deb=$(.tools/bin/cargo-deb --profile dev --no-build --strip --fast -o "$out/" | tail -n 1)
fi
[ -f "$deb" ] || fail "cargo-deb made no package (got '$deb')"
say "built $deb ($(du -h "$deb" | cut -f1)) in $((SECONDS - started)) s"

user_existed=no
getent passwd switchboard >/dev/null && user_existed=yes
server_pid=
logs=$(mktemp)
cleanup() {
  status=$?
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -KILL "$server_pid" 2>/dev/null || true
  fi
  if dpkg-query -W switchboard >/dev/null 2>&1; then
    dpkg --purge switchboard >/dev/null || status=1
  fi
  if [ "$user_existed" = no ] && getent passwd switchboard >/dev/null; then
    userdel switchboard 2>/dev/null || true
    getent group switchboard >/dev/null && { groupdel switchboard 2>/dev/null || true; }
  fi
  if [ "$status" != 0 ]; then
    echo "--- switchboard output ---" >&2
    cat "$logs" >&2 || true
  fi
  rm -f "$logs"
  exit "$status"
}
trap cleanup EXIT

say "dpkg -i"
dpkg -i "$deb" >/dev/null

# The installed files.
[ -x /usr/bin/switchboard ] || fail "/usr/bin/switchboard is not installed"
[ -f "$CONFIG" ] || fail "$CONFIG is not installed"
[ -f "$UNIT" ] || fail "$UNIT is not installed"
dpkg-query -W -f='${Conffiles}\n' switchboard | grep -q " $CONFIG " || fail "$CONFIG is not a conffile"
getent passwd switchboard >/dev/null || fail "postinst did not create the user switchboard"
[ "$(stat -c '%U:%G %a' "$CONFIG")" = "root:switchboard 640" ] || fail "$CONFIG is $(stat -c '%U:%G %a' "$CONFIG"), not root:switchboard 640"
[ "$(stat -c '%U:%G %a' "$ENV_FILE")" = "root:switchboard 640" ] || fail "$ENV_FILE is missing or not root:switchboard 640"
grep -q '^SWITCHBOARD_AUTH__JWT__SECRET=sb_[0-9a-f]\{64\}$' "$ENV_FILE" || fail "$ENV_FILE has no generated secret"
grep -q 'ExecStart=/usr/bin/switchboard serve --config /etc/switchboard/switchboard.toml' "$UNIT" || fail "the unit does not run the installed config"
say "installed: /usr/bin/switchboard, $CONFIG (conffile), $ENV_FILE, $UNIT, user switchboard"

# The packaged config holds no secret: alone, it is refused, naming the key.
if /usr/bin/switchboard check --config "$CONFIG" >/dev/null 2>"$logs"; then
  fail "$CONFIG passes check without the environment file's secret"
fi
grep -q 'auth.jwt.secret' "$logs" || fail "check without a secret did not name auth.jwt.secret: $(cat "$logs")"
say "switchboard check --config $CONFIG (with $ENV_FILE)"
( set -a; . "$ENV_FILE"; set +a; /usr/bin/switchboard check --config "$CONFIG" >/dev/null )

# Serve as the service would: as user switchboard, with the environment file, on ports
# the kernel picks (the addresses bound are read from the log).
(
  set -a
  # shellcheck disable=SC1090
  . "$ENV_FILE"
  set +a
  export NO_COLOR=1 SWITCHBOARD_SERVER__INTERNAL_LISTEN=127.0.0.1:0
  exec setpriv --reuid=switchboard --regid=switchboard --init-groups -- /usr/bin/switchboard serve --config "$CONFIG" --listen 127.0.0.1:0
) >"$logs" 2>&1 &
server_pid=$!

bound() { sed -n "s/.*$1=\\([0-9.]*:[0-9]*\\).*/\\1/p" "$logs" | head -n 1; }
deadline=$((SECONDS + 20))
until [ -n "$(bound ' listen')" ] && [ -n "$(bound internal_listen)" ]; do
  kill -0 "$server_pid" 2>/dev/null || fail "switchboard serve exited before it was ready"
  [ "$SECONDS" -lt "$deadline" ] || fail "switchboard serve did not log its addresses within 20 s"
  sleep 0.1
done
public=$(bound ' listen')
internal=$(bound internal_listen)
until curl -fsS "http://$public/healthz" >/dev/null 2>&1; do
  kill -0 "$server_pid" 2>/dev/null || fail "switchboard serve exited before /healthz answered"
  [ "$SECONDS" -lt "$deadline" ] || fail "/healthz did not answer within 20 s"
  sleep 0.1
done
say "serving: public http://$public, internal http://$internal"

# The environment file's API key opens the API, on the internal listener only.
key=$(sed -n 's/^SWITCHBOARD_API__KEYS=.*\["\(sb_[0-9a-f]*\)"\].*/\1/p' "$ENV_FILE")
[ -n "$key" ] || fail "no API key in $ENV_FILE"
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $key" "http://$internal/api/v1/presence")
[ "$code" = 200 ] || fail "the internal API answered $code with the generated key"
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $key" "http://$public/api/v1/presence")
[ "$code" = 404 ] || fail "the public listener answered $code for /api (want 404)"

kill -TERM "$server_pid"
set +e
wait "$server_pid"
code=$?
set -e
server_pid=
[ "$code" = 0 ] || fail "switchboard exited with $code after SIGTERM"
say "SIGTERM: exited 0"

if need systemd-analyze; then
  # Offline: no running systemd is needed to check the unit's syntax, user and paths.
  # It only warns about unknown keys and bad values: any output at all is a failure here.
  verify=$(systemd-analyze verify "$UNIT" 2>&1) || fail "systemd-analyze verify: $verify"
  [ -z "$verify" ] || fail "systemd-analyze verify: $verify"
  exposure=$(systemd-analyze security --offline=true "$UNIT" 2>/dev/null | sed -n 's/.*Overall exposure level for [^:]*: //p')
  say "systemd-analyze verify: OK (exposure ${exposure:-not rated})"
else
  say "systemd-analyze is not installed: unit not verified (apt-get install systemd adds it)"
fi

dpkg --purge switchboard >/dev/null
[ ! -e /usr/bin/switchboard ] && [ ! -e "$CONFIG" ] && [ ! -e "$ENV_FILE" ] || fail "dpkg --purge left files behind"
say "purged; done in $((SECONDS - started)) s"
