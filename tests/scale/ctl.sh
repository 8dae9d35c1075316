#!/usr/bin/env bash
# The scale suite's process control: start, kill and restart the three nodes, the suite's own
# redis-server and its own PostgreSQL cluster. run.sh sets the environment; scale.py calls this
# script to kill and bring back processes mid-test. Every process it starts is recorded in a pid
# file under $SCALE_TMP, which run.sh's exit trap ends.
#   ctl.sh node-start N [extra serve options]   node nN on 127.0.0.N (ports chosen once, then kept)
#   ctl.sh node-wait N [seconds]                until its /readyz answers 200
#   ctl.sh node-kill N [signal]                 default KILL; waits until the process is gone
#                                               (TERM drains it: LODGE_DRAIN_SPREAD_MS, default
#                                               300 here, and LODGE_DRAIN_TIMEOUT_SECS, 3)
#   ctl.sh redis-start | redis-kill             the suite's redis-server, always on one port
#   ctl.sh pg-start | pg-stop                   the suite's PostgreSQL cluster (never the shared one)
#   ctl.sh pg-ensure                            start or reuse it (scripts/postgres.sh); prints its URL
#   ctl.sh balancer-start                       the TCP balancer in front of the nodes (balancer.py)
#   ctl.sh edge-start SEED FINGERPRINT TOKEN REGION  an edge on 127.0.0.6 (not a cluster member:
#                                               no Redis) trunked to the node trunk SEED
#   ctl.sh edge-kill [signal]                   the edge; default KILL
#   ctl.sh stop-all                             every node, redis-server and balancer it started
# Environment (from run.sh): SCALE_TMP SCALE_LODGE SCALE_REDIS_PORT SCALE_DB_URL SCALE_PGBIN
# SCALE_PGDIR SCALE_PGPORT SCALE_LB (balancer host:port) SCALE_PY (the venv's python),
# SCALE_PUBLIC_URL (node: each node's own --public-url; balancer: every node's is the
# balancer's) and SCALE_NODE_ARGS (extra options for every node).
set -euo pipefail
T="$SCALE_TMP"

# shellcheck source=../lib/ports.sh
. "$(dirname "$0")/../lib/ports.sh"
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
kill_pidfile() {  # kill_pidfile <file> <signal>: the process, and wait until it is gone
  alive "$1" || { rm -f "$1"; return 0; }
  local pid; pid="$(cat "$1")"
  kill "-$2" "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  rm -f "$1"
}
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
# Close every inherited descriptor above stderr in this (sub)shell: PostgreSQL outlives the run,
# and must not keep the lock file a caller took (`flock /tmp/lodge-scale.lock run.sh`) open,
# which would hold the lock for good.
close_fds() { local fd; for fd in $(ls /proc/$BASHPID/fd); do [ "$fd" -gt 2 ] && eval "exec $fd>&-" 2>/dev/null; done; return 0; }

cmd="$1"; shift
case "$cmd" in
  node-start)
    n="$1"; shift
    ip="127.0.0.$n"
    if [ ! -f "$T/n$n.ports" ]; then
      hp="$(free_port "$ip")"; mp="$(free_media "$ip")"; echo "$hp $mp" >"$T/n$n.ports"
    fi
    read -r hp mp <"$T/n$n.ports"
    alive "$T/n$n.pid" && { echo "ctl: n$n is already running" >&2; exit 1; }
    public="http://$ip:$hp"
    [ "${SCALE_PUBLIC_URL:-node}" = balancer ] && public="http://$SCALE_LB"
    echo "==== $(date +%T.%N | cut -c1-12) ctl: starting n$n (public URL $public) $*" >>"$T/n$n.log"
    # The balancer reads this: a node started with --roles media serves no API or gateway.
    echo "$*" >"$T/n$n.args"
    # {node_url} in SCALE_NODE_ARGS stands for this node's own http://127.0.0.N:PORT (e.g. a
    # per-node voice address while --public-url is the balancer).
    node_args="${SCALE_NODE_ARGS:-}"
    node_args="${node_args//\{node_url\}/http://$ip:$hp}"
    # Word splitting of node_args is wanted: it holds several options.
    # SIGTERM drains a node (issue #16): short here, so that stopping a node between steps
    # stays quick; rolling.sh sets its own.
    # shellcheck disable=SC2086
    LODGE_DRAIN_SPREAD_MS="${LODGE_DRAIN_SPREAD_MS:-300}" LODGE_DRAIN_TIMEOUT_SECS="${LODGE_DRAIN_TIMEOUT_SECS:-3}" \
    "$SCALE_LODGE" serve --data-dir "$T/n$n" --http-listen "$ip:$hp" --media-listen "$ip:$mp" \
      --public-url "$public" --node-id "n$n" \
      --redis-url "redis://127.0.0.1:$SCALE_REDIS_PORT" --database-url "$SCALE_DB_URL" \
      --heartbeat-interval-ms 5000 --rate-limit-route 100000 --rate-limit-global 100000 \
      --registrations-per-ip-per-hour 1000000 --max-http-connections-per-ip 0 \
      --session-start-max-concurrency 1000 --max-sessions-per-user 64 \
      $node_args "$@" >>"$T/n$n.log" 2>&1 </dev/null &
    echo $! >"$T/n$n.pid"
    ;;
  node-wait)
    n="$1"; secs="${2:-30}"
    read -r hp _ <"$T/n$n.ports"
    until=$((SECONDS + secs))
    until curl -fs -o /dev/null "http://127.0.0.$n:$hp/readyz"; do
      alive "$T/n$n.pid" || { echo "ctl: n$n exited while starting" >&2; exit 1; }
      [ $SECONDS -lt $until ] || { echo "ctl: n$n not ready after $secs s" >&2; exit 1; }
      sleep 0.1
    done
    ;;
  node-kill)
    n="$1"; sig="${2:-KILL}"
    echo "==== $(date +%T.%N | cut -c1-12) ctl: kill -$sig n$n" >>"$T/n$n.log"
    kill_pidfile "$T/n$n.pid" "$sig"
    ;;
  redis-start)
    alive "$T/redis.pid" && { echo "ctl: redis-server is already running" >&2; exit 1; }
    mkdir -p "$T/redis"
    redis-server --port "$SCALE_REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
      --dir "$T/redis" --daemonize no >>"$T/redis.log" 2>&1 </dev/null &
    echo $! >"$T/redis.pid"
    for _ in $(seq 1 100); do
      redis-cli -p "$SCALE_REDIS_PORT" ping 2>/dev/null | grep -q PONG && exit 0
      sleep 0.05
    done
    echo "ctl: redis-server did not answer on port $SCALE_REDIS_PORT" >&2; exit 1
    ;;
  balancer-start)
    "$SCALE_PY" "$(dirname "$0")/balancer.py" --listen "$SCALE_LB" --tmp "$T" >>"$T/balancer.log" 2>&1 </dev/null &
    echo $! >"$T/balancer.pid"
    ;;
  edge-start)
    ip=127.0.0.6
    if [ ! -f "$T/edge.ports" ]; then
      hp="$(free_port "$ip")"; mp="$(free_media "$ip")"; echo "$hp $mp" >"$T/edge.ports"
    fi
    read -r hp mp <"$T/edge.ports"
    alive "$T/edge.pid" && { echo "ctl: the edge is already running" >&2; exit 1; }
    echo "==== $(date +%T.%N | cut -c1-12) ctl: starting the edge (seed $1, region $4)" >>"$T/edge.log"
    "$SCALE_LODGE" serve --data-dir "$T/edge" --http-listen "$ip:$hp" --media-listen "$ip:$mp" \
      --origin "$1" --origin-fingerprint "$2" --cluster-token "$3" --region "$4" \
      >>"$T/edge.log" 2>&1 </dev/null &
    echo $! >"$T/edge.pid"
    ;;
  edge-kill)
    kill_pidfile "$T/edge.pid" "${1:-KILL}"
    ;;
  redis-kill)
    kill_pidfile "$T/redis.pid" KILL
    ;;
  pg-stop)
    as_pg "$SCALE_PGBIN/pg_ctl" -D "$SCALE_PGDIR/data" -m immediate -w stop >/dev/null
    ;;
  pg-ensure)
    (close_fds; PGPORT="$SCALE_PGPORT" PGDIR="$SCALE_PGDIR" "$(dirname "$0")/../../scripts/postgres.sh")
    ;;
  pg-start)
    # The options scripts/postgres.sh starts the cluster with.
    (close_fds; as_pg "$SCALE_PGBIN/pg_ctl" -D "$SCALE_PGDIR/data" -l "$SCALE_PGDIR/server.log" -w \
      -o "-p $SCALE_PGPORT -k $SCALE_PGDIR -c listen_addresses=127.0.0.1 -c max_connections=300" start >/dev/null)
    ;;
  stop-all)
    for f in "$T"/n*.pid "$T"/edge.pid; do [ -e "$f" ] && kill_pidfile "$f" TERM; done
    kill_pidfile "$T/redis.pid" KILL
    kill_pidfile "$T/balancer.pid" KILL
    ;;
  *) echo "ctl: unknown command $cmd" >&2; exit 2 ;;
esac
