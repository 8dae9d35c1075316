#!/usr/bin/env bash
# Benchmark: what one edge hop adds. The same call twice on loopback (release build): speakers
# on the origin and LISTENERS listeners, first all on the origin, then the listeners on an edge
# (one trunk hop + the edge's SFU pass). The difference in mouth-to-ear delay is the hop's cost;
# the origin's trunk counters give the trunk overhead per forwarded packet.
#   tests/cluster/hop_delay.sh            # 2 speakers, 40 listeners, 30 s each
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
# The load generator registers and connects from one address: lift the per-address limits.
export LODGE_REGISTRATIONS_PER_IP_PER_HOUR=1000000 LODGE_MAX_HTTP_CONNECTIONS_PER_IP=0
[ -n "${NODE_BIN:-}" ] || (cd "$ROOT" && cargo build -q --release -p lodge-signaling -p lodge-loadtest)
BIN="${NODE_BIN:-$ROOT/target/release/lodge}"
LOAD="${LOAD_BIN:-$ROOT/target/release/lodge-load}"
LISTENERS="${LISTENERS:-40}" DURATION="${DURATION:-30}"
TMP="$(mktemp -d)"
TOKEN="cluster-$(python3 -c 'import secrets; print(secrets.token_hex(12))')"
# shellcheck source=../lib/ports.sh
. "$ROOT/tests/lib/ports.sh"
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$TMP"' EXIT
OH="127.0.0.1:$(free_port)"; OT="127.0.0.1:$(free_udp)"
"$BIN" serve --data-dir "$TMP/o" --http-listen "$OH" --media-listen "127.0.0.1:$(free_media)" \
  --trunk-listen "$OT" --cluster-token "$TOKEN" --log warn \
  --rate-limit-route 100000 --rate-limit-global 100000 >"$TMP/o.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do curl -fs "http://$OH/readyz" >/dev/null && break; sleep 0.1; done
FP="$(grep -o 'sha256:[0-9a-f]\{64\}' "$TMP/o.log" | head -1)"
EH="127.0.0.2:$(free_port 127.0.0.2)"
"$BIN" serve --data-dir "$TMP/e" --http-listen "$EH" --media-listen "127.0.0.2:$(free_media 127.0.0.2)" \
  --origin "$OT" --origin-fingerprint "$FP" --cluster-token "$TOKEN" --region eu --log warn >"$TMP/e.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do curl -fs "http://$EH/metrics" 2>/dev/null | grep -q '^lodge_origin_up 1' && break; sleep 0.1; done
N=$((LISTENERS + 2))
run() {  # run <name> <regions>
  "$LOAD" voice --url "http://$OH" -n "$N" -c 1 -s 2 -d "$DURATION" --join-rate 50 --probes 0 \
    --regions "$2" --strict --report "$TMP/$1.json" >/dev/null 2>"$TMP/$1.err" || { cat "$TMP/$1.err"; exit 1; }
}
scrape() { curl -fs "http://$OH/metrics" | python3 -c '
import sys
v = {"udp": 0.0, "payload": 0.0, "media": 0.0}
for l in sys.stdin:
    for k, name in (("udp", "lodge_trunk_udp_bytes_sent_total{"), ("payload", "lodge_trunk_payload_bytes_sent_total{"), ("media", "lodge_trunk_media_sent_total{")):
        if l.startswith(name): v[k] += float(l.rsplit(" ", 1)[1])
print(v["udp"], v["payload"], v["media"])'; }
run direct "origin"
read -r u0 p0 m0 < <(scrape)
run edge "origin,origin$(printf ',eu%.0s' $(seq 1 "$LISTENERS"))"
read -r u1 p1 m1 < <(scrape)
python3 - "$TMP/direct.json" "$TMP/edge.json" "$u0" "$p0" "$m0" "$u1" "$p1" "$m1" "$LISTENERS" <<'PY'
import json, sys
d, e = (json.load(open(p)) for p in sys.argv[1:3])
u0, p0, m0, u1, p1, m1 = map(float, sys.argv[3:9])
def row(name, r):
    m = r["mouth_to_ear_ms"]
    return f"| {name} | {m['p50']:.2f} | {m['p90']:.2f} | {m['p99']:.2f} | {m['p99_9']:.2f} | {r['loss_pct']:.3f}% |"
print(f"\n{sys.argv[9]} listeners, 2 speakers on the origin (release, loopback, node + edge + generator on one machine)\n")
print("| listeners on | m2e p50 ms | p90 | p99 | p99.9 | loss |\n|---|---|---|---|---|---|")
print(row("the origin", d)); print(row("an edge (one hop)", e))
dp = {q: e["mouth_to_ear_ms"][q] - d["mouth_to_ear_ms"][q] for q in ("p50", "p99")}
media = m1 - m0
print(f"\nadded by the edge hop: p50 {dp['p50']:+.2f} ms, p99 {dp['p99']:+.2f} ms")
if media > 0:
    print(f"trunk: {media:.0f} packets, overhead {(u1 - u0 - (p1 - p0)) / media:.1f} bytes per forwarded packet "
          f"(QUIC + Lodge header, ACKs and control included); speakers sent {e['rtp_sent']}")
PY
