#!/usr/bin/env bash
# The load generator's cluster options against one node reached under two URLs (127.0.0.1 and
# 127.1 are the same node, so what a real cluster shares is shared): `chat` and `voice` deal
# their sessions and callers round robin over the URLs and report per node; two `voice --shard
# I/2` runs at once cover a scenario between them, and `lodge-load merge` combines their JSON
# reports into one report with plots whose counts add up to the scenario's.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
export LODGE_REGISTRATIONS_PER_IP_PER_HOUR=1000000 LODGE_MAX_HTTP_CONNECTIONS_PER_IP=0
BIN="${LODGE_BIN:-$ROOT/target/debug/lodge}"
LOAD="${LODGE_LOAD_BIN:-$ROOT/target/debug/lodge-load}"
TMP="$(mktemp -d)"
# shellcheck source=../lib/ports.sh
. "$ROOT/tests/lib/ports.sh"
HP="$(free_port)"; MP="$(free_media)"
"$BIN" serve --data-dir "$TMP/data" --http-listen "127.0.0.1:$HP" --media-listen "127.0.0.1:$MP" >"$TMP/lodge.log" 2>&1 &
PID=$!
cleanup() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$HP/readyz" >/dev/null && break; sleep 0.1; done
A="http://127.0.0.1:$HP" B="http://127.1:$HP"
fail() { echo "cluster load smoke: $*"; echo "---- lodge log (last 40 lines) ----"; tail -40 "$TMP/lodge.log"; exit 1; }

# chat over two URLs (a comma list): 40 sessions, 20 on each, every message everywhere.
"$LOAD" chat --url "$A,$B" -m 40 -r 10 -d 3 --accounts 10 --senders 2 --strict --report "$TMP/chat.json" >"$TMP/chat.md" || fail "chat run failed"
grep -q "^| $B | 20 |" "$TMP/chat.md" || fail "chat: no per-node row for $B: $(cat "$TMP/chat.md")"
python3 - "$TMP/chat.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
n = r["nodes"]
assert [x["sessions"] for x in n] == [20, 20], n
assert sum(x["delivered"] for x in n) == r["delivered"] == r["expected_deliveries"], (n, r["delivered"])
assert sum(x["sent"] for x in n) == r["sent"] and all(x["sent"] > 0 for x in n), n
assert r["latency_hist_us"], "the latency histogram is serialized"
PY

# voice: a scenario of 12 callers in 2 channels, run as two shards at once, each over both URLs
# (repeated --url), one --server-pid per URL.
for i in 0 1; do
  "$LOAD" voice --url "$A" --url "$B" --server-pid "$PID,$PID" --shard "$i/2" -n 12 -c 2 -s 2 -d 5 \
    --probes 0.5 --strict --report "$TMP/shard-$i.json" >"$TMP/shard-$i.md" 2>"$TMP/shard-$i.err" &
  eval "S$i=\$!"
done
wait "$S0" || fail "shard 0 failed: $(tail -5 "$TMP/shard-0.err")"
wait "$S1" || fail "shard 1 failed: $(tail -5 "$TMP/shard-1.err")"
grep -q "^Shard 1/2 of a scenario of 12 callers in 2 channels" "$TMP/shard-1.md" || fail "shard 1 does not say what it is"
grep -q "^| $B | 3 | 3 |" "$TMP/shard-0.md" || fail "shard 0: no per-node row for $B: $(cat "$TMP/shard-0.md")"
# The same shard twice is refused, naming both files.
if out="$("$LOAD" merge "$TMP/shard-0.json" "$TMP/shard-0.json" --out "$TMP/bad" 2>&1)"; then fail "merged a shard with itself"; fi
echo "$out" | grep -q "both hold shard 0/2" || fail "unclear refusal: $out"
"$LOAD" merge "$TMP/shard-0.json" "$TMP/shard-1.json" --out "$TMP/merged" --strict >/dev/null || fail "merge failed"
for f in report.md report.json m2e-cdf.png pps.png join.png mos.png; do
  [ -s "$TMP/merged/$f" ] || fail "merge: $f missing"
done
python3 - "$TMP/shard-0.json" "$TMP/shard-1.json" "$TMP/merged/report.json" <<'PY'
import json, sys
s0, s1, m = (json.load(open(p)) for p in sys.argv[1:])
assert (s0["callers"], s1["callers"], m["callers"]) == (6, 6, 12), (s0["callers"], s1["callers"], m["callers"])
assert m["connected"] == 12 and m["shards"] == {"count": 2, "indices": [0, 1]}, m["shards"]
assert m["rtp_received"] == s0["rtp_received"] + s1["rtp_received"]
assert m["mouth_to_ear_ms"]["count"] == s0["mouth_to_ear_ms"]["count"] + s1["mouth_to_ear_ms"]["count"]
assert len(m["probes"]) == len(s0["probes"]) + len(s1["probes"])
assert [n["callers"] for n in m["nodes"]] == [6, 6], m["nodes"]
for s in (s0, s1):
    assert len(s["nodes"]) == 2 and s["server"]["cpu_seconds"] is not None, s["server"]
    assert all(n["server"]["cpu_seconds"] is not None for n in s["nodes"]), s["nodes"]
print(f"cluster load smoke: chat over 2 URLs, voice 2 shards × 6 callers merged: "
      f"{m['connected']} connected, loss {m['loss_pct']:.2f}%, m2e p99 {m['mouth_to_ear_ms']['p99']:.1f} ms")
PY
