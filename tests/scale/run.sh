#!/usr/bin/env bash
# The scale suite (issue #14): a cluster of three equal `lodge serve` nodes as separate processes
# on 127.0.0.2, 127.0.0.3 and 127.0.0.4, sharing the suite's own throwaway redis-server and a
# fresh PostgreSQL database, checked step by step (scale.py):
#   fanout          cross-node chat fan-out in order, VIEW_CHANNEL filtering intact
#   voice-room      callers joining through different nodes share one room and hear each other
#   kill-media      the room's node is killed: every caller is moved and hears again (gap p50/p99)
#   kill-gateway    a gateway node is killed: its clients resume on another, no dispatch missed
#   redis-restart   Redis restarts: nodes come back, no acknowledged message lost, no session
#                   silently behind (each saw everything or got op 7/9)
#                   a voice call runs across it (loss, gaps); the voice states come back and a
#                   caller joining after it lands in the same room and hears the others
#   postgres-down   PostgreSQL unreachable: REST 503 with Discord-shaped JSON, calls go on
#   discordpy       the unmodified discord.py bot resumes on another node after its node dies
#   presence        op 3 on one node reaches a guild member's session on another; the user
#                   goes offline there only when their last session (on any node) ends
#   kill-both       the node with callers' gateway sessions AND their room is killed: they
#                   resume (op 6) elsewhere, their call moves, media again (gap p50/p99)
#   edges           an edge (region eu, no Redis) seeded with one node trunks to both media
#                   nodes; two rooms homed on two nodes each get only their own speakers from
#                   it; kill -9 of the seed (one room's home): its callers move, gap p50/p99;
#                   kill -9 of the edge: the remaining node moves the edge's callers to itself
# Usage:
#   tests/scale/run.sh                          builds lodge and lodge-load (debug), every step
#   ONLY="fanout;kill-media" tests/scale/run.sh some steps (";" or "," between names or numbers)
#   LODGE_BIN=… LOAD_BIN=… tests/scale/run.sh   use those binaries (no build)
#   NODE_ARGS="--option value" …                extra `lodge serve` options for every node;
#                                               {node_url} in them becomes the node's own URL
#                                               (default: --node-url {node_url})
#   SCALE_PUBLIC_URL=node …                     every node's --public-url is its own address;
#                                               default (balancer): the suite's TCP balancer
#                                               (127.0.0.5, in front of the API nodes), as a
#                                               cluster is deployed — gateway clients resume
#                                               through it, voice goes to --node-url
# Writes scale-report.{md,json} to $OUT (default: a temporary directory) and prints a table.
# Needs redis-server and PostgreSQL (scripts/setup.sh installs both; this script installs
# nothing). Its PostgreSQL cluster is its own (PGPORT 55433, PGDIR /tmp/lodge-pg-scale; override
# with SCALE_PGPORT/SCALE_PGDIR) because a step stops it: the cluster the other suites share is
# never touched. Each run creates its own database in it (scale_<random>) and drops it at exit.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
HERE="$ROOT/tests/scale"
BIN="${LODGE_BIN:-}"; LOAD="${LOAD_BIN:-}"
# The node rejects LODGE_* variables it does not know: do not hand it this script's own.
unset LODGE_BIN
START=$SECONDS

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-cli)
PGBIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
[ -n "$PGBIN" ] || missing+=(postgresql)
command -v psql >/dev/null 2>&1 || missing+=(psql)
if [ ${#missing[@]} -gt 0 ]; then
  echo "scale suite: missing ${missing[*]} (run ./scripts/setup.sh)" >&2; exit 1
fi

if [ -z "$BIN" ] || [ -z "$LOAD" ]; then
  (cd "$ROOT" && cargo build -q --locked --bin lodge --bin lodge-load)
  BIN="${BIN:-$ROOT/target/debug/lodge}"; LOAD="${LOAD:-$ROOT/target/debug/lodge-load}"
fi
[ -x "$HERE/.venv/bin/python" ] || python3 -m venv "$HERE/.venv"
"$HERE/.venv/bin/pip" install -q --disable-pip-version-check -r "$HERE/requirements.txt"

OUT="${OUT:-$(mktemp -d)}"
TMP="$(mktemp -d)"
export SCALE_PGPORT="${SCALE_PGPORT:-55433}" SCALE_PGDIR="${SCALE_PGDIR:-/tmp/lodge-pg-scale}"
# Started with no inherited descriptors (ctl.sh): it outlives this run and must not hold a
# caller's lock file open.
ADMIN_URL="$(SCALE_TMP=/nonexistent "$HERE/ctl.sh" pg-ensure)"
DB="scale_$(python3 -c 'import secrets; print(secrets.token_hex(6))')"
psql -q "$ADMIN_URL" -c "CREATE DATABASE $DB" >/dev/null
export SCALE_TMP="$TMP" SCALE_LODGE="$BIN" SCALE_PGBIN="$PGBIN" SCALE_NODE_ARGS="${NODE_ARGS---node-url {node_url}}"
export SCALE_DB_URL="${ADMIN_URL%/postgres}/$DB"
# shellcheck source=../lib/ports.sh
. "$ROOT/tests/lib/ports.sh"
SCALE_REDIS_PORT="$(free_port)"
SCALE_LB="127.0.0.5:$(free_port 127.0.0.5)"
export SCALE_REDIS_PORT SCALE_LB SCALE_PY="$HERE/.venv/bin/python" SCALE_PUBLIC_URL="${SCALE_PUBLIC_URL:-balancer}"
CTL="$HERE/ctl.sh"

ok=0
cleanup() {
  "$CTL" stop-all || true
  if [ "$ok" != 1 ]; then
    for n in 2 3 4; do
      echo "---- node n$n (127.0.0.$n) log, last 60 lines ----"; tail -60 "$TMP/n$n.log" 2>/dev/null || true
    done
    echo "---- redis-server log, last 10 lines ----"; tail -10 "$TMP/redis.log" 2>/dev/null || true
  fi
  # A step that stopped PostgreSQL and failed before starting it again: bring it back.
  "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$SCALE_PGPORT" || "$CTL" pg-start || true
  psql -q "$ADMIN_URL" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
  [ -n "${KEEP_LOGS:-}" ] && cp "$TMP"/*.log "$OUT"/ 2>/dev/null
  rm -rf "$TMP"
}
trap cleanup EXIT

"$CTL" redis-start
"$CTL" balancer-start
for n in 2 3 4; do "$CTL" node-start "$n"; done
for n in 2 3 4; do "$CTL" node-wait "$n" 60; done
echo "scale suite: nodes n2 n3 n4 ready ($(( SECONDS - START )) s); redis 127.0.0.1:$SCALE_REDIS_PORT; database $DB;" \
  "balancer $SCALE_LB; public URL: $SCALE_PUBLIC_URL"

if "$HERE/.venv/bin/python" "$HERE/scale.py" --ctl "$CTL" --tmp "$TMP" --load "$LOAD" \
  --db-url "$SCALE_DB_URL" --balancer "http://$SCALE_LB" --out "$OUT" --only "${ONLY:-}"; then
  ok=1
fi
echo "scale suite: $(( SECONDS - START )) s; report: $OUT/scale-report.md"
[ "$ok" = 1 ]
