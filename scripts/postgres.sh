#!/usr/bin/env bash
# Start (or reuse) a throwaway PostgreSQL cluster on 127.0.0.1 for Lodge's tests and print its
# admin URL. Needs Debian's `postgresql` package (scripts/setup.sh installs it).
#   PGPORT (default 55432), PGDIR (default /tmp/lodge-pg)
set -euo pipefail
PORT="${PGPORT:-55432}"
DIR="${PGDIR:-/tmp/lodge-pg}"
PGBIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
[ -n "$PGBIN" ] || { echo "postgres.sh: PostgreSQL is not installed (apt-get install postgresql)" >&2; exit 1; }
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
if "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PORT"; then
  : # already running (an earlier run on this machine): reuse it
else
  rm -rf "$DIR"; mkdir -p "$DIR"
  [ "$(id -u)" -eq 0 ] && chown postgres "$DIR"
  as_pg "$PGBIN/initdb" -D "$DIR/data" -A trust -U lodge --no-sync >/dev/null
  as_pg "$PGBIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w \
    -o "-p $PORT -k $DIR -c listen_addresses=127.0.0.1 -c max_connections=300" start >/dev/null
fi
echo "postgres://lodge@127.0.0.1:$PORT/postgres"
