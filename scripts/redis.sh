#!/usr/bin/env bash
# Start (or reuse) a throwaway redis-server on 127.0.0.1 for Lodge's tests and print its URL.
# Nothing is persisted (no RDB, no AOF). Needs Debian's `redis-server` (scripts/setup.sh).
#   scripts/redis.sh         start it, or reuse the one already on the port; print the URL
#   scripts/redis.sh stop    shut it down (restart tests: stop, then start again)
#   REDIS_PORT (default 56379), REDIS_DIR (default /tmp/lodge-redis, one per port if not default)
set -euo pipefail
PORT="${REDIS_PORT:-56379}"
DIR="${REDIS_DIR:-/tmp/lodge-redis}"
[ "$PORT" = 56379 ] || [ -n "${REDIS_DIR:-}" ] || DIR="/tmp/lodge-redis-$PORT"
command -v redis-server >/dev/null 2>&1 || {
  echo "redis.sh: redis-server is not installed (apt-get install redis-server)" >&2; exit 1; }
up() { redis-cli -h 127.0.0.1 -p "$PORT" ping 2>/dev/null | grep -q PONG; }
case "${1:-start}" in
  stop)
    if up; then redis-cli -h 127.0.0.1 -p "$PORT" shutdown nosave >/dev/null 2>&1 || true; fi
    for _ in $(seq 50); do up || break; sleep 0.1; done
    rm -f "$DIR/redis.pid"
    exit 0 ;;
  start) ;;
  *) echo "usage: scripts/redis.sh [start|stop]" >&2; exit 2 ;;
esac
if ! up; then
  mkdir -p "$DIR"
  redis-server --bind 127.0.0.1 --port "$PORT" --dir "$DIR" --save '' --appendonly no \
    --daemonize yes --pidfile "$DIR/redis.pid" --logfile "$DIR/redis.log" >/dev/null
  for _ in $(seq 50); do up && break; sleep 0.1; done
  up || { echo "redis.sh: redis-server did not answer on port $PORT (see $DIR/redis.log)" >&2; exit 1; }
fi
echo "redis://127.0.0.1:$PORT"
