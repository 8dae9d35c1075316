#!/usr/bin/env bash
# A cluster in separate processes on loopback: one origin (127.0.0.1) and two edges, "eu"
# (127.0.0.2) and "us" (127.0.0.3), joined by QUIC trunks. Real WebRTC callers (lodge-load
# voice) spread over the three nodes by region hint must all hear each other; 50 listeners on
# one edge must cost the origin one trunk stream per active speaker, not one per listener; a
# wrong cluster token is refused and counted; an edge that loses its origin says so.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
# The load generator registers and connects from one address: lift the per-address limits.
export LODGE_REGISTRATIONS_PER_IP_PER_HOUR=1000000 LODGE_MAX_HTTP_CONNECTIONS_PER_IP=0
BIN="${NODE_BIN:-$ROOT/target/debug/lodge}"
LOAD="${LOAD_BIN:-$ROOT/target/debug/lodge-load}"
TMP="$(mktemp -d)"
TOKEN="cluster-$(python3 -c 'import secrets; print(secrets.token_hex(12))')"
OPERATOR="$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
# shellcheck source=../lib/ports.sh
. "$ROOT/tests/lib/ports.sh"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT
fail() {
  echo "cluster test: $*"
  for n in origin eu us; do echo "---- $n log (last 30 lines) ----"; tail -30 "$TMP/$n.log" 2>/dev/null || true; done
  exit 1
}
metric() {  # metric <http host:port> <series name> [region]: the sum of its samples, or "none"
  curl -fs "http://$1/metrics" | python3 -c '
import sys
name, region = sys.argv[1], sys.argv[2]
vals = [float(l.rsplit(" ", 1)[1]) for l in sys.stdin
        if l.split("{")[0].split(" ")[0] == name and (not region or f"region=\"{region}\"" in l)]
print(int(sum(vals)) if vals else "none")' "$2" "${3:-}"
}
wait_for() {  # wait_for <seconds> <command...>
  local until=$((SECONDS + $1)); shift
  until "$@"; do [ $SECONDS -lt $until ] || return 1; sleep 0.2; done
}

OH="127.0.0.1:$(free_port)"; OM="127.0.0.1:$(free_media)"; OT="127.0.0.1:$(free_udp)"
"$BIN" serve --data-dir "$TMP/origin" --http-listen "$OH" --media-listen "$OM" --trunk-listen "$OT" \
  --cluster-token "$TOKEN" --operator-token "$OPERATOR" --rate-limit-route 10000 --rate-limit-global 10000 \
  >"$TMP/origin.log" 2>&1 &
PIDS+=($!)
wait_for 20 curl -fs "http://$OH/readyz" -o /dev/null || fail "the origin did not start"
FP="$(grep -o 'sha256:[0-9a-f]\{64\}' "$TMP/origin.log" | head -1)"
[ -n "$FP" ] || fail "the origin printed no trunk fingerprint"

start_edge() {  # start_edge <name> <ip> <token> <origin trunk>: sets EDGE (host:port) and EDGE_PID
  EDGE="$2:$(free_port "$2")"
  local m
  m="$2:$(free_media "$2")"
  "$BIN" serve --data-dir "$TMP/$1" --http-listen "$EDGE" --media-listen "$m" --origin "$4" \
    --origin-fingerprint "$FP" --cluster-token "$3" --region "$1" >"$TMP/$1.log" 2>&1 &
  EDGE_PID=$!
  PIDS+=("$EDGE_PID")
}
start_edge eu 127.0.0.2 "$TOKEN" "$OT"; EU="$EDGE"
start_edge us 127.0.0.3 "$TOKEN" "$OT"; US="$EDGE"; US_PID="$EDGE_PID"
for e in "$EU" "$US"; do
  wait_for 20 sh -c "[ \"\$(curl -fs http://$e/metrics | grep '^lodge_origin_up ' | cut -d' ' -f2)\" = 1 ]" \
    || fail "edge $e did not connect to the origin"
done
# Edges serve voice, not the API.
code="$(curl -s -o /dev/null -w '%{http_code}' "http://$EU/api/v10/gateway")"
[ "$code" = 404 ] || fail "an edge answered the REST API ($code)"

echo "-- 6 callers on three nodes, 3 speakers (one per node): everyone hears everyone"
"$LOAD" voice --url "http://$OH" -n 6 -c 1 -s 3 -d 6 --probes 0.5 --regions origin,eu,us --strict \
  --report "$TMP/spread.json" >/dev/null 2>"$TMP/spread.err" || { cat "$TMP/spread.err"; fail "spread run"; }
for e in "$EU" "$US"; do
  [ "$(metric "$e" lodge_trunk_media_sent_total)" -gt 0 ] || fail "edge $e sent nothing to the origin"
  [ "$(metric "$e" lodge_trunk_media_received_total)" -gt 0 ] || fail "edge $e got nothing from the origin"
done
grep -q "caller placed on this edge" "$TMP/eu.log" || fail "no caller was placed on the eu edge"
# Every caller's call-quality summary lands in the origin's database, edges' callers included.
calls() { curl -fs -H "Authorization: Operator $OPERATOR" "http://$OH/api/v10/quality/calls?limit=200" \
  | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))'; }
wait_for 15 sh -c "[ \"\$(curl -fs -H 'Authorization: Operator $OPERATOR' 'http://$OH/api/v10/quality/calls?limit=200' | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')\" -ge 6 ]" \
  || fail "the origin has $(calls) call summaries after 6 calls on three nodes"

echo "-- three headless Chromium clients by region hint (eu edge, us edge, origin) hear each other"
if [ "${CLUSTER_BROWSER:-1}" = 1 ]; then
  (cd "$ROOT/tests/browser" && [ -d node_modules/playwright-core ] || npm ci --no-audit --no-fund --loglevel=error)
  (cd "$ROOT/tests/browser" && LODGE_URL="http://$OH" VOICE_REGIONS=eu,us,origin node voice.test.mjs >"$TMP/browser.log" 2>&1) \
    || { tail -40 "$TMP/browser.log"; fail "browsers across the cluster"; }
  grep -q "all three hear each other" "$TMP/browser.log" || fail "browser log lacks the hearing check"
fi

echo "-- 2 speakers on the origin, 50 listeners on the eu edge: one trunk stream per speaker"
REGIONS="origin,origin$(printf ',eu%.0s' $(seq 1 50))"
# The first run's streams end when its callers leave (the edge withdraws its interest).
wait_for 15 sh -c "[ \"\$(curl -fs http://$OH/metrics | grep 'lodge_trunk_streams_out{.*region=\"eu\"' | cut -d' ' -f2)\" = 0 ]" \
  || fail "the origin kept sending the eu edge streams nobody listens to"
before="$(metric "$OH" lodge_trunk_media_sent_total eu)"
"$LOAD" voice --url "http://$OH" -n 52 -c 1 -s 2 -d 10 --join-rate 50 --probes 0.1 --regions "$REGIONS" \
  --strict --report "$TMP/fanout.json" >/dev/null 2>"$TMP/fanout.err" &
LP=$!
wait_for 40 sh -c "[ \"\$(curl -fs http://$EU/metrics | grep '^lodge_participants ' | cut -d' ' -f2)\" = 50 ]" \
  || fail "50 listeners did not reach the eu edge"
sleep 3
streams="$(metric "$OH" lodge_trunk_streams_out eu)"
[ "$streams" -le 2 ] && [ "$streams" -ge 1 ] || fail "origin → eu streams: $streams (want 1–2 for 2 speakers)"
wait "$LP" || { cat "$TMP/fanout.err"; fail "fan-out run"; }
after="$(metric "$OH" lodge_trunk_media_sent_total eu)"
python3 - "$TMP/fanout.json" "$before" "$after" <<'PY' || fail "trunk carried more than one copy per speaker packet"
import json, sys
r = json.load(open(sys.argv[1])); sent = int(sys.argv[3]) - int(sys.argv[2])
spoken = r["rtp_sent"]; heard = r["rtp_received"]
print(f"   speakers sent {spoken} packets; the origin sent the eu edge {sent} "
      f"({sent / max(spoken, 1):.2f} per speaker packet); eu listeners received {heard}")
assert 0 < sent <= spoken * 1.02, (sent, spoken)
assert heard > 40 * sent * 0.9, (heard, sent)
assert r["loss_pct"] < 1.0, r["loss_pct"]
PY

echo "-- a trunk with 5% bursty loss and 40±10 ms (impairment relay): listeners lose ≤ 0.5% after repair"
RELAY="127.0.0.5:$(free_udp 127.0.0.5)"
"$LOAD" relay --listen "$RELAY" --to "$OT" --profile trunk_bursty_5 --seed 7 >"$TMP/relay.log" 2>&1 &
PIDS+=($!)
start_edge far 127.0.0.6 "$TOKEN" "$RELAY"; FH="$EDGE"
wait_for 30 sh -c "[ \"\$(curl -fs http://$FH/metrics | grep '^lodge_origin_up ' | cut -d' ' -f2)\" = 1 ]" \
  || fail "the far edge did not connect through the relay"
"$LOAD" voice --url "http://$OH" -n 10 -c 1 -s 2 -d 20 --probes 0.3 \
  --regions "origin,origin$(printf ',far%.0s' $(seq 1 8))" --strict --report "$TMP/far.json" \
  >/dev/null 2>"$TMP/far.err" || { cat "$TMP/far.err"; fail "impaired-trunk run"; }
recovered="$(metric "$OH" lodge_trunk_recovered_total far)"; lost="$(metric "$OH" lodge_trunk_lost_total far)"
recovered_edge="$(metric "$FH" lodge_trunk_recovered_total)"
python3 - "$TMP/far.json" "$recovered_edge" <<'PY' || fail "listeners behind the impaired trunk lost too much"
import json, sys
r = json.load(open(sys.argv[1])); rec = int(sys.argv[2])
print(f"   far listeners: loss {r['loss_pct']:.2f}% after repair ({rec} packets recovered by NACK at the edge), "
      f"mouth-to-ear p50/p99 {r['mouth_to_ear_ms']['p50']:.0f}/{r['mouth_to_ear_ms']['p99']:.0f} ms, "
      f"probe MOS ≥ {min(p['mos_estimate'] for p in r['probes']):.2f}")
assert rec > 0, "the relay dropped packets, so some must have been repaired"
assert r["loss_pct"] <= 0.5, r["loss_pct"]
PY

echo "-- an edge dies mid-call: its callers are moved (VOICE_SERVER_UPDATE) and hear again within 5 s"
"$LOAD" voice --url "http://$OH" -n 6 -c 1 -s 1 -d 14 --probes 0 --regions origin,us,us,us,us,us \
  --strict --report "$TMP/failover.json" >/dev/null 2>"$TMP/failover.err" &
LP=$!
wait_for 40 sh -c "[ \"\$(curl -fs http://$US/metrics | grep '^lodge_participants ' | cut -d' ' -f2)\" = 5 ]" \
  || fail "5 callers did not reach the us edge"
sleep 3
kill -9 "$US_PID"
wait "$LP" || { cat "$TMP/failover.err"; fail "fail-over run"; }
python3 - "$TMP/failover.json" <<'PY' || fail "callers of the dead edge did not come back in time"
import json, sys
r = json.load(open(sys.argv[1]))
print(f"   {r['rejoins']} calls moved off the dead edge; voice lost → media again p50/max "
      f"{r['rejoin_ms']['p50']:.0f}/{r['rejoin_ms']['max']:.0f} ms")
assert r["rejoins"] == 5, r["rejoins"]
assert r["rejoin_ms"]["max"] <= 5000, r["rejoin_ms"]
assert not r["errors"], r["errors"][:3]
PY

echo "-- a wrong cluster token is refused and counted; the edge reports its origin down"
start_edge bad 127.0.0.4 "wrong-token-0123456789" "$OT"; BAD="$EDGE"
wait_for 20 sh -c "[ \"\$(curl -fs http://$OH/metrics | grep 'lodge_trunk_handshakes_total{outcome=\"refused\"}' | cut -d' ' -f2)\" -ge 1 ]" \
  || fail "the origin did not count the refused trunk"
[ "$(metric "$BAD" lodge_origin_up)" = 0 ] || fail "an edge with the wrong token says its origin is up"
grep -q "wrong cluster token" "$TMP/bad.log" || fail "the refused edge does not say why"

echo "-- an edge whose origin goes away reports it and tells its callers (voice close 4015)"
"$LOAD" voice --url "http://$OH" -n 3 -c 1 -s 1 -d 20 --probes 0 --regions eu \
  --report "$TMP/orphan.json" >/dev/null 2>"$TMP/orphan.err" &
LP=$!
wait_for 40 sh -c "[ \"\$(curl -fs http://$EU/metrics | grep '^lodge_participants ' | cut -d' ' -f2)\" = 3 ]" \
  || fail "3 callers did not reach the eu edge"
# SIGINT: the origin stops at once (SIGTERM would drain it first, and an origin alone ends its
# calls itself with 4014 before its edges lose it).
kill -INT "${PIDS[0]}"; wait "${PIDS[0]}" 2>/dev/null || true
wait_for 10 sh -c "[ \"\$(curl -fs http://$EU/metrics | grep '^lodge_origin_up ' | cut -d' ' -f2)\" = 0 ]" \
  || fail "the eu edge did not notice its origin going away"
wait "$LP" || true  # the run ends with errors: the origin is gone
python3 - "$TMP/orphan.json" <<'PY' || fail "the orphaned edge's callers did not get voice close 4015"
import json, sys
r = json.load(open(sys.argv[1]))
told = [e for e in r["errors"] if "4015" in e]
print(f"   {len(told)} callers got voice close 4015 from the orphaned edge")
assert len(told) == 3, r["errors"]
PY
echo "cluster test: PASS"
