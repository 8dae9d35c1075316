#!/usr/bin/env bash
# The Debian package: build it with cargo-deb, check what it holds, install it with dpkg, start
# the installed binary as the installed user with the installed configuration, check /healthz,
# then remove and purge it and check what is left.
#
# Needs root (dpkg -i), cargo-deb (scripts/setup.sh installs it) and a release build (cargo deb
# makes one, sharing target/release with the other release suites). The node it starts listens
# on 127.0.0.1 only: the installed configuration's addresses, moved to free ports through the
# environment (LODGE_HTTP_LISTEN/LODGE_MEDIA_LISTEN/LODGE_PUBLIC_URL), so a node already on
# 8080 does not collide. Where systemd runs (not in CI's container) the unit is also verified.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
say() { printf 'package: %s\n' "$*"; }
fail() { printf 'package: FAIL: %s\n' "$*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || fail "needs root to install the package (dpkg -i)"
command -v cargo-deb >/dev/null || fail "cargo-deb is not installed (scripts/setup.sh installs it)"
if dpkg -s lodge >/dev/null 2>&1; then
  fail "a lodge package is already installed on this machine; remove it first (dpkg -P lodge)"
fi

say "building the .deb (cargo deb, release)"
DEB="$(cargo deb -p lodge-signaling --locked | tail -1)"
[ -f "$DEB" ] || fail "cargo deb made no package (got: $DEB)"
say "built $(basename "$DEB") ($(du -h "$DEB" | cut -f1))"

LIST="$(dpkg-deb -c "$DEB")"
for f in ./usr/bin/lodge ./etc/lodge/lodge.toml ./lib/systemd/system/lodge.service ./usr/share/doc/lodge/README.md; do
  grep -q " $f\$" <<<"$LIST" || fail "the package lacks $f"
done
CTL="$(mktemp -d)"; dpkg-deb -e "$DEB" "$CTL"
grep -qx "/etc/lodge/lodge.toml" "$CTL/conffiles" || fail "/etc/lodge/lodge.toml is not a conffile"
for s in postinst prerm postrm; do [ -x "$CTL/$s" ] || fail "no $s script"; done

# The unit: every hardening line present, and (where systemd can tell) valid.
UNIT="$(mktemp -d)"; dpkg-deb -x "$DEB" "$UNIT"
for want in "User=lodge" "NoNewPrivileges=yes" "ProtectSystem=strict" "ReadWritePaths=/var/lib/lodge" \
            "PrivateTmp=yes" "CapabilityBoundingSet=" "SystemCallFilter=@system-service" "ExecReload="; do
  grep -q "^$want" "$UNIT/lib/systemd/system/lodge.service" || fail "lodge.service lacks $want"
done
if command -v systemd-analyze >/dev/null; then
  # verify needs the binary where the unit names it: check with the package's own copy.
  sed "s|/usr/bin/lodge|$UNIT/usr/bin/lodge|" "$UNIT/lib/systemd/system/lodge.service" > "$UNIT/lodge.service"
  if ! OUT="$(systemd-analyze verify "$UNIT/lodge.service" 2>&1)"; then
    fail "systemd-analyze verify: $OUT"
  fi
  [ -z "$OUT" ] || say "systemd-analyze verify said: $OUT"
fi

cleanup() {
  [ -n "${PID:-}" ] && kill "$PID" 2>/dev/null || true
  dpkg -P lodge >/dev/null 2>&1 || true
  rm -rf /var/lib/lodge
}
trap cleanup EXIT

say "installing with dpkg"
dpkg -i "$DEB" >/dev/null
[ -x /usr/bin/lodge ] || fail "/usr/bin/lodge not installed"
getent passwd lodge >/dev/null || fail "no lodge user after install"
[ "$(stat -c '%U %a' /var/lib/lodge)" = "lodge 700" ] || fail "/var/lib/lodge is $(stat -c '%U %a' /var/lib/lodge), want lodge 700"
[ "$(stat -c '%U:%G %a' /etc/lodge/lodge.toml)" = "root:lodge 640" ] || fail "/etc/lodge/lodge.toml is $(stat -c '%U:%G %a' /etc/lodge/lodge.toml)"
/usr/bin/lodge --version >/dev/null
runuser -u lodge -- /usr/bin/lodge config --config /etc/lodge/lodge.toml >/dev/null \
  || fail "the installed configuration does not parse"

# shellcheck source=../lib/ports.sh
. "$ROOT/tests/lib/ports.sh"
HTTP="$(free_port)"; MEDIA="$(free_media)"
LOG="$(mktemp)"
say "starting the installed binary as lodge with /etc/lodge/lodge.toml (HTTP 127.0.0.1:$HTTP)"
( cd / && LODGE_HTTP_LISTEN="127.0.0.1:$HTTP" LODGE_MEDIA_LISTEN="127.0.0.1:$MEDIA" \
  LODGE_PUBLIC_URL="http://127.0.0.1:$HTTP" \
  exec runuser -u lodge -- /usr/bin/lodge serve --config /etc/lodge/lodge.toml ) >"$LOG" 2>&1 &
PID=$!
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$HTTP/healthz" >/dev/null 2>&1 && break
  kill -0 "$PID" 2>/dev/null || { cat "$LOG" >&2; fail "the installed lodge exited"; }
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$HTTP/healthz" >/dev/null || { tail -20 "$LOG" >&2; fail "/healthz did not answer"; }
[ -f /var/lib/lodge/lodge.db ] || fail "no database in /var/lib/lodge (data_dir from the installed configuration)"
[ "$(stat -c %U /var/lib/lodge/lodge.db)" = lodge ] || fail "the database is not the lodge user's"
say "/healthz answered; the database is /var/lib/lodge/lodge.db, owned by lodge"
kill -TERM "$PID"; wait "$PID" 2>/dev/null || true; PID=""

say "removing and purging"
dpkg -r lodge >/dev/null
[ ! -e /usr/bin/lodge ] || fail "/usr/bin/lodge left after remove"
[ -e /etc/lodge/lodge.toml ] || fail "remove (not purge) must keep the configuration"
dpkg -P lodge >/dev/null 2>&1
[ ! -e /etc/lodge/lodge.toml ] || fail "purge left /etc/lodge/lodge.toml"
! getent passwd lodge >/dev/null || fail "purge left the lodge user"
[ -d /var/lib/lodge ] || fail "purge must keep the data directory (it holds the database)"
say "OK: built, installed, served /healthz as lodge, removed, purged (data kept)"
