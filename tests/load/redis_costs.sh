#!/usr/bin/env bash
# What a Lodge cluster asks of Redis per identify, message, presence change, voice join and leave,
# and Redis memory per online user (docs/SCALING.md's figures). Two nodes on 127.0.0.2/.3, a
# throwaway redis-server and a fresh PostgreSQL database.
#   tests/load/redis_costs.sh            (debug build; PROFILE=release for the release one)
#   SESSIONS=200 tests/load/redis_costs.sh
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PROFILE="${PROFILE:-debug}"
if [ "$PROFILE" = release ]; then
  (cd "$ROOT" && cargo build -q --release --locked -p lodge-signaling --bin lodge)
else
  (cd "$ROOT" && cargo build -q --locked -p lodge-signaling --bin lodge)
fi
BIN="$ROOT/target/$PROFILE/lodge"
export LODGE_REGISTRATIONS_PER_IP_PER_HOUR=1000000 LODGE_MAX_HTTP_CONNECTIONS_PER_IP=0 \
  LODGE_RATE_LIMIT_ROUTE=100000 LODGE_RATE_LIMIT_GLOBAL=100000 LODGE_SESSION_START_MAX_CONCURRENCY=1000
HERE="$ROOT/tests/load"
[ -x "$HERE/.venv/bin/python" ] || python3 -m venv "$HERE/.venv"
"$HERE/.venv/bin/pip" install -q --disable-pip-version-check aiohttp==3.11.18
PG="$("$ROOT/scripts/postgres.sh")"
TMP="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
# shellcheck source=../lib/ports.sh
. "$ROOT/tests/lib/ports.sh"
RPORT="$(free_port 127.0.0.1)"
redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$TMP" >"$TMP/redis.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 50); do redis-cli -p "$RPORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
DB="costs_$RANDOM$RANDOM"
psql "$PG" -qc "CREATE DATABASE $DB" >/dev/null
URLS=()
for n in 2 3; do
  ip="127.0.0.$n"; hp="$(free_port "$ip")"; mp="$(free_media "$ip")"
  "$BIN" serve --data-dir "$TMP/n$n" --http-listen "$ip:$hp" --media-listen "$ip:$mp" --log warn \
    --redis-url "redis://127.0.0.1:$RPORT" --database-url "${PG%/*}/$DB" --node-id "n$n" >"$TMP/n$n.log" 2>&1 &
  PIDS+=($!); URLS+=("http://$ip:$hp")
  for _ in $(seq 1 100); do curl -fs "http://$ip:$hp/readyz" >/dev/null && break; sleep 0.1; done
done
"$HERE/.venv/bin/python" "$HERE/redis_costs.py" --a "${URLS[0]}" --b "${URLS[1]}" --redis-port "$RPORT" --sessions "${SESSIONS:-100}" 2>"$TMP/costs.json" || { cat "$TMP/costs.json";
  tail -30 "$TMP/n2.log"; exit 1; }
