#!/usr/bin/env bash
# A small `lodge-load chat` run against a fresh node: 100 sessions, 20 msg/s, 5 s, strict (every
# message delivered to every session, zero errors). The full-size run is a benchmark:
#   lodge-load chat -m 1000 -r 200 -d 30 --accounts 100 --senders 8
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
# The load generator registers and connects from one address: lift the per-address limits.
export LODGE_REGISTRATIONS_PER_IP_PER_HOUR=1000000 LODGE_MAX_HTTP_CONNECTIONS_PER_IP=0
BIN="${LODGE_BIN:-$ROOT/target/debug/lodge}"
LOAD="${LODGE_LOAD_BIN:-$ROOT/target/debug/lodge-load}"
TMP="$(mktemp -d)"
# shellcheck source=../lib/ports.sh
. "$ROOT/tests/lib/ports.sh"
HP="$(free_port)"; MP="$(free_media)"
DB=(); LABEL=sqlite
if [ -n "${TEST_POSTGRES_URL:-}" ]; then
  # A fresh database on the given PostgreSQL server.
  NAME="lodge_load_$RANDOM$RANDOM"
  psql "$TEST_POSTGRES_URL" -qc "CREATE DATABASE $NAME" >/dev/null
  DB=(--database-url "${TEST_POSTGRES_URL%/*}/$NAME"); LABEL=postgres
fi
"$BIN" serve --data-dir "$TMP/data" "${DB[@]}" --http-listen "127.0.0.1:$HP" --media-listen "127.0.0.1:$MP" >"$TMP/lodge.log" 2>&1 &
PID=$!
cleanup() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$HP/readyz" >/dev/null && break; sleep 0.1; done
if ! "$LOAD" chat --url "http://127.0.0.1:$HP" -m 100 -r 20 -d 5 --accounts 20 --strict --label "$LABEL" --report "$TMP/report.json"; then
  echo "---- lodge log (last 40 lines) ----"; tail -40 "$TMP/lodge.log"; exit 1
fi
