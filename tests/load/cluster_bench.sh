#!/usr/bin/env bash
# Chat fan-out on one node against three nodes of a cluster, and what the Redis bus adds.
#   tests/load/cluster_bench.sh            release build, 1000 sessions × 50 msg/s, 20 s per run
#   M=200 R=20 D=5 tests/load/cluster_bench.sh   a smaller run (CI uses this with SMOKE=1)
# Three runs, every one on PostgreSQL (scripts/postgres.sh, a fresh database per run), so only
# the bus differs:
#   alone   one node, no Redis (dispatches go straight to its sessions)
#   bus     one node with --redis-url (every dispatch through Redis and back: the bus's cost)
#   three   three nodes on 127.0.0.2–4 sharing Redis; sessions and senders spread over them
# For each: deliveries/s, create→dispatch latency p50/p99 (lodge-load chat), CPU of the nodes
# and of redis-server per delivery (/proc/<pid>/stat over the sending phase), and Redis's bytes
# and commands per published dispatch (INFO stats, same phase). Writes cluster-bench.md to $OUT.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
M="${M:-1000}" R="${R:-50}" D="${D:-20}"
ACCOUNTS="${ACCOUNTS:-100}" SENDERS="${SENDERS:-16}"
PROFILE="${PROFILE:-release}"
OUT="${OUT:-$(mktemp -d)}"; mkdir -p "$OUT"
if [ -z "${LODGE_BIN:-}" ]; then
  if [ "$PROFILE" = release ]; then
    (cd "$ROOT" && cargo build -q --release --locked -p lodge-signaling -p lodge-loadtest --bin lodge --bin lodge-load)
  else
    (cd "$ROOT" && cargo build -q --locked -p lodge-signaling -p lodge-loadtest --bin lodge --bin lodge-load)
  fi
fi
BIN="${LODGE_BIN:-$ROOT/target/$PROFILE/lodge}"
LOAD="${LODGE_LOAD_BIN:-$ROOT/target/$PROFILE/lodge-load}"
unset LODGE_BIN LODGE_LOAD_BIN
export LODGE_REGISTRATIONS_PER_IP_PER_HOUR=1000000 LODGE_MAX_HTTP_CONNECTIONS_PER_IP=0 \
  LODGE_RATE_LIMIT_ROUTE=100000 LODGE_RATE_LIMIT_GLOBAL=100000
command -v redis-server >/dev/null || { echo "cluster_bench: redis-server is not installed (scripts/setup.sh)"; exit 1; }
PG="$("$ROOT/scripts/postgres.sh")"
TMP="$(mktemp -d)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT
# shellcheck source=../lib/ports.sh
. "$ROOT/tests/lib/ports.sh"
ticks() { local t=0; for p in "$@"; do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo "$t"; }
HZ="$(getconf CLK_TCK)"

RPORT="$(free_port 127.0.0.1)"
redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$TMP" --daemonize no >"$TMP/redis.log" 2>&1 &
RPID=$!; PIDS+=("$RPID")
for _ in $(seq 1 50); do redis-cli -p "$RPORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
rinfo() { redis-cli -p "$RPORT" info stats | tr -d '\r' | awk -F: -v k="$1" '$1==k{print $2}'; }

# Dispatches the nodes have published to the bus so far: published N --url U1 --url U2 ...
published() {
  local n="$1" total=0; shift
  [ "$n" -gt 0 ] || { echo 0; return; }
  for u in "$@"; do
    [ "$u" = --url ] && continue
    total=$((total + $(curl -fs "$u/metrics" | awk '$1=="lodge_bus_published_total"{print $2}')))
  done
  echo "$total"
}

# run NAME NODES(0=alone,1,3)
run() {
  local name="$1" n="$2" urls=() npids=() redis=()
  local db="bench_${name}_$RANDOM$RANDOM"
  psql "$PG" -qc "CREATE DATABASE $db" >/dev/null
  [ "$n" -gt 0 ] && redis=(--redis-url "redis://127.0.0.1:$RPORT")
  local count=$(( n == 0 ? 1 : n ))
  for i in $(seq 1 "$count"); do
    local ip="127.0.0.$((i + 1))" hp mp
    hp="$(free_port "$ip")"; mp="$(free_media "$ip")"
    "$BIN" serve --data-dir "$TMP/$name-$i" --http-listen "$ip:$hp" --media-listen "$ip:$mp" \
      --database-url "${PG%/*}/$db" "${redis[@]}" --node-id "$name-$i" --log warn >"$TMP/$name-$i.log" 2>&1 &
    npids+=($!); PIDS+=($!); urls+=(--url "http://$ip:$hp")
    for _ in $(seq 1 100); do curl -fs "http://$ip:$hp/readyz" >/dev/null && break; sleep 0.1; done
  done
  # CPU and Redis traffic are counted over the sending phase only: from the generator's
  # "sessions connected" line to its "closing the sessions" line, so the
  # identifies' password hashing and the sessions' teardown are not counted per delivery.
  local b0 c0 p0 t0 u0 u1 lpid
  "$LOAD" chat "${urls[@]}" -m "$M" -r "$R" -d "$D" --accounts "$ACCOUNTS" --senders "$SENDERS" \
    --strict --label "$name" --report "$OUT/$name.json" >"$OUT/$name.txt" 2>&1 &
  lpid=$!
  until grep -q "sessions connected" "$OUT/$name.txt" 2>/dev/null; do
    kill -0 "$lpid" 2>/dev/null || break; sleep 0.05; done
  u0="$(published "$n" "${urls[@]}")"
  b0="$(rinfo total_net_input_bytes)"; c0="$(rinfo total_commands_processed)"
  t0="$(ticks "${npids[@]}")"; p0="$(ticks "$RPID")"
  until grep -q "closing the sessions" "$OUT/$name.txt" 2>/dev/null; do
    kill -0 "$lpid" 2>/dev/null || break; sleep 0.05; done
  local t1 p1 b1 c1
  t1="$(ticks "${npids[@]}")"; p1="$(ticks "$RPID")"
  b1="$(rinfo total_net_input_bytes)"; c1="$(rinfo total_commands_processed)"
  u1="$(published "$n" "${urls[@]}")"
  wait "$lpid" || { cat "$OUT/$name.txt"; tail -30 "$TMP/$name-1.log"; exit 1; }
  local published=$((u1 - u0))
  python3 - "$OUT/$name.json" "$name" "$n" "$((t1 - t0))" "$((p1 - p0))" "$HZ" "$((b1 - b0))" "$((c1 - c0))" "$published" >>"$OUT/rows.md" <<'PY'
import json, sys
path, name, n, node_t, redis_t, hz, rbytes, rcmds, published = sys.argv[1:]
r = json.load(open(path))
def find(d, *keys):
    for k in keys:
        if isinstance(d, dict) and k in d:
            return d[k]
    return None
deliv = find(r, "deliveries", "delivered")
rate = find(r, "deliveries_per_s", "deliveries_per_sec")
lat = find(r, "latency_ms", "latency") or {}
p50 = find(lat, "p50", "p50_ms"); p99 = find(lat, "p99", "p99_ms")
node_cpu = int(node_t) / int(hz); redis_cpu = int(redis_t) / int(hz)
per = lambda x: f"{x / deliv * 1e6:.1f}" if deliv else "–"
pub = int(published)
bpd = f"{int(rbytes) / pub:.0f}" if pub else "–"
cpd = f"{int(rcmds) / pub:.2f}" if pub else "–"
nodes = {"0": "1 (alone)", "1": "1 + Redis", "3": "3 + Redis"}[n]
print(f"| {name} | {nodes} | {deliv} | {rate:,.0f} | {p50} | {p99} | {per(node_cpu)} | {per(redis_cpu)} | {bpd} | {cpd} |")
PY
  for p in "${npids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait "${npids[@]}" 2>/dev/null || true
}

{
  echo "# Chat fan-out: one node against a cluster ($PROFILE build)"
  echo
  echo "\`lodge-load chat -m $M -r $R -d $D --accounts $ACCOUNTS --senders $SENDERS\`, PostgreSQL for every run, $(nproc) cores shared by the nodes, Redis, PostgreSQL and the generator."
  echo
  echo "| run | nodes | deliveries | deliveries/s | p50 ms | p99 ms | node CPU µs/delivery | Redis CPU µs/delivery | Redis bytes in per dispatch | Redis commands per dispatch |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
} >"$OUT/rows.md"
run alone 0
run bus 1
run three 3
cp "$OUT/rows.md" "$OUT/cluster-bench.md"
cat "$OUT/cluster-bench.md"
