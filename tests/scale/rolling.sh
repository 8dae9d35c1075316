#!/usr/bin/env bash
# Rolling restart (issue #16): a two-node cluster (n2 on 127.0.0.2, n3 on 127.0.0.3, one
# redis-server, one PostgreSQL database, the readiness-checking TCP balancer in front as
# --public-url) under a running `lodge-load voice` crowd (24 WebRTC callers in 4 channels, 2
# speakers each). n2 gets SIGTERM: it drains (its calls move to n3 room by room, its gateway
# clients get op 7 and resume through the balancer) and exits; it starts again; then n3 the
# same. Asserted (rolling.py): every caller connected and kept media (lodge-load --strict, no
# moved caller without media at the end), every caller was moved, and each caller's longest
# gap (voice moved → media again) has p99 < 1 s; two `lodge-voice` native clients in a channel
# of their own stay in their call through both drains (they follow each move).
# Usage:
#   tests/scale/rolling.sh                      builds lodge, lodge-load and lodge-voice (debug)
#   LODGE_BIN=… LOAD_BIN=… VOICE_BIN=… tests/scale/rolling.sh   use those binaries (no build)
#   CALLERS=40 CHANNELS=8 DRAIN_SPREAD_MS=2000 …     a bigger crowd, a longer spread
# Multi-process: run it under `flock /tmp/lodge-scale.lock` next to other suites. Writes
# rolling-report.json and the load report (rolling-load.md) to $OUT (default: a temporary
# directory). Shares ctl.sh, balancer.py and harness.py with the scale suite (run.sh).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
HERE="$ROOT/tests/scale"
BIN="${LODGE_BIN:-}"; LOAD="${LOAD_BIN:-}"; VOICE="${VOICE_BIN:-}"
unset LODGE_BIN
START=$SECONDS

for c in redis-server redis-cli psql; do
  command -v "$c" >/dev/null 2>&1 || { echo "rolling restart: missing $c (run ./scripts/setup.sh)" >&2; exit 1; }
done
PGBIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
[ -n "$PGBIN" ] || { echo "rolling restart: missing postgresql (run ./scripts/setup.sh)" >&2; exit 1; }

if [ -z "$BIN" ] || [ -z "$LOAD" ] || [ -z "$VOICE" ]; then
  (cd "$ROOT" && cargo build -q --locked --bin lodge --bin lodge-load --bin lodge-voice)
  BIN="${BIN:-$ROOT/target/debug/lodge}"; LOAD="${LOAD:-$ROOT/target/debug/lodge-load}"
  VOICE="${VOICE:-$ROOT/target/debug/lodge-voice}"
fi
[ -x "$HERE/.venv/bin/python" ] || python3 -m venv "$HERE/.venv"
"$HERE/.venv/bin/pip" install -q --disable-pip-version-check -r "$HERE/requirements.txt"

OUT="${OUT:-$(mktemp -d)}"
TMP="$(mktemp -d)"
export SCALE_PGPORT="${SCALE_PGPORT:-55433}" SCALE_PGDIR="${SCALE_PGDIR:-/tmp/lodge-pg-scale}"
ADMIN_URL="$(SCALE_TMP=/nonexistent "$HERE/ctl.sh" pg-ensure)"
DB="rolling_$(python3 -c 'import secrets; print(secrets.token_hex(6))')"
psql -q "$ADMIN_URL" -c "CREATE DATABASE $DB" >/dev/null
export SCALE_TMP="$TMP" SCALE_LODGE="$BIN" SCALE_PGBIN="$PGBIN" SCALE_NODE_ARGS="--node-url {node_url}"
export SCALE_DB_URL="${ADMIN_URL%/postgres}/$DB"
# shellcheck source=../lib/ports.sh
. "$ROOT/tests/lib/ports.sh"
SCALE_REDIS_PORT="$(free_port)"
SCALE_LB="127.0.0.5:$(free_port 127.0.0.5)"
export SCALE_REDIS_PORT SCALE_LB SCALE_PY="$HERE/.venv/bin/python" SCALE_PUBLIC_URL=balancer
# The drain under test: its calls spread over DRAIN_SPREAD_MS, then op 7 over as long.
export LODGE_DRAIN_SPREAD_MS="${DRAIN_SPREAD_MS:-1500}" LODGE_DRAIN_TIMEOUT_SECS=20
CTL="$HERE/ctl.sh"

ok=0
cleanup() {
  # Stop what is left at once (a second signal would be needed to skip the drain).
  for n in 2 3; do "$CTL" node-kill "$n" KILL || true; done
  "$CTL" stop-all || true
  if [ "$ok" != 1 ]; then
    for n in 2 3; do
      echo "---- node n$n (127.0.0.$n) log, last 40 lines ----"; tail -40 "$TMP/n$n.log" 2>/dev/null || true
    done
    echo "---- lodge-load stderr, last 10 lines ----"; tail -10 "$TMP/rolling-load.err" 2>/dev/null | tr '\r' '\n' | tail -10 || true
  fi
  psql -q "$ADMIN_URL" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
  [ -n "${KEEP_LOGS:-}" ] && cp "$TMP"/*.log "$OUT"/ 2>/dev/null
  rm -rf "$TMP"
}
trap cleanup EXIT

"$CTL" redis-start
"$CTL" balancer-start
for n in 2 3; do "$CTL" node-start "$n"; done
for n in 2 3; do "$CTL" node-wait "$n" 60; done
echo "rolling restart: n2 n3 ready ($(( SECONDS - START )) s); drain spread ${LODGE_DRAIN_SPREAD_MS} ms; balancer $SCALE_LB"

if "$HERE/.venv/bin/python" "$HERE/rolling.py" --ctl "$CTL" --tmp "$TMP" --load "$LOAD" --voice "$VOICE" \
  --balancer "http://$SCALE_LB" --out "$OUT" --callers "${CALLERS:-24}" --channels "${CHANNELS:-4}"; then
  ok=1
fi
echo "rolling restart: $(( SECONDS - START )) s; report: $OUT/rolling-report.json, $OUT/rolling-load.md"
[ "$ok" = 1 ]
