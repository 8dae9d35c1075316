#!/usr/bin/env bash
# A small `lodge-load voice` run against a fresh node: 12 WebRTC callers (str0m) in 2 voice
# channels, 2 speakers each sending Opus speech in talk spurts, half the listeners probing with
# the jitter buffer and Opus decode; strict (every caller connects and hears, no errors). Then the
# report must show what a clean loopback gives: no loss, low delay, a good MOS estimate. It also
# runs the same crowd as native UDP-mode callers (`--transport udp-xchacha`), and
# checks that bad options are refused with the limit named and that Ctrl-C stops a run with a
# partial report. The full-size run is a benchmark (docs/BENCHMARKS.md):
#   lodge-load voice -n 500 -c 10 -s 2 -d 30 --join-rate 100 --server-pid <pid> --out DIR
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
"$BIN" serve --data-dir "$TMP/data" --http-listen "127.0.0.1:$HP" --media-listen "127.0.0.1:$MP" >"$TMP/lodge.log" 2>&1 &
PID=$!
cleanup() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$HP/readyz" >/dev/null && break; sleep 0.1; done
if ! "$LOAD" voice --url "http://127.0.0.1:$HP" -n 12 -c 2 -s 2 -d 8 --probes 0.5 --strict \
    --server-pid "$PID" --report "$TMP/voice.json" --out "$TMP/report"; then
  echo "---- lodge log (last 40 lines) ----"; tail -40 "$TMP/lodge.log"; exit 1
fi
# The same crowd as native callers (Discord's UDP mode; XChaCha for a change of mode).
if ! "$LOAD" voice --url "http://127.0.0.1:$HP" --transport udp-xchacha -n 12 -c 2 -s 2 -d 6 --probes 0.5 --strict \
    --server-pid "$PID" --report "$TMP/udp.json" >"$TMP/udp.md"; then
  echo "---- lodge log (last 40 lines) ----"; tail -40 "$TMP/lodge.log"; exit 1
fi
grep -q "native UDP callers (aead_xchacha20_poly1305_rtpsize)" "$TMP/udp.md" || { echo "voice smoke: the udp report does not say its transport"; exit 1; }
if out="$("$LOAD" voice --url "http://127.0.0.1:$HP" --transport udp --profile wired -n 2 -c 1 -s 1 2>&1)"; then
  echo "voice smoke: --profile with --transport udp was accepted"; exit 1
fi
# Bad options are refused with the limit named, before anything is set up.
if out="$("$LOAD" voice --url "http://127.0.0.1:$HP" -n 4 -c 8 2>&1)"; then
  echo "voice smoke: more channels than callers was accepted"; exit 1
fi
echo "$out" | grep -q "cannot exceed --callers" || { echo "voice smoke: unclear error: $out"; exit 1; }
# Ctrl-C (SIGINT) mid-run stops the callers and still writes a report, marked partial.
"$LOAD" voice --url "http://127.0.0.1:$HP" -n 4 -s 2 -d 60 --report "$TMP/partial.json" >/dev/null 2>"$TMP/partial.err" &
LP=$!
for _ in $(seq 1 60); do  # until all four have media (at most 30 s), then interrupt
  curl -fs "http://127.0.0.1:$HP/metrics" | grep -q '^lodge_participants 4$' && break; sleep 0.5
done
sleep 1; kill -INT "$LP"
if wait "$LP"; then echo "voice smoke: an interrupted run must not exit 0"; exit 1; fi
python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); assert r["interrupted"] and r["connected"]==4, r' "$TMP/partial.json"
for f in report.md report.json m2e-cdf.png pps.png join.png mos.png; do
  [ -s "$TMP/report/$f" ] || { echo "voice smoke: $f missing"; exit 1; }
done
python3 - "$TMP/udp.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
assert r["scenario_params"]["transport"] == "udp-xchacha", r["scenario_params"]
assert r["connected"] == 12, r["connected"]
assert r["loss_pct"] < 1.0, r["loss_pct"]
m2e = r["mouth_to_ear_ms"]
assert m2e["count"] > 300 and m2e["p99"] < 200, m2e
assert min(p["mos_estimate"] for p in r["probes"]) >= 4.0, r["probes"]
print(f"voice smoke (native UDP): loss {r['loss_pct']:.2f}%, mouth-to-ear p50/p99 {m2e['p50']:.1f}/{m2e['p99']:.1f} ms, "
      f"{r['server']['cpu_us_per_forwarded_packet']:.1f} µs CPU per forwarded packet (debug build)")
PY
python3 - "$TMP/voice.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
assert r["connected"] == 12, r["connected"]
assert r["loss_pct"] < 1.0, r["loss_pct"]
m2e = r["mouth_to_ear_ms"]
assert m2e["count"] > 500 and m2e["p99"] < 200, m2e
probes = r["probes"]
assert len(probes) >= 3 and min(p["mos_estimate"] for p in probes) >= 4.0, probes
assert r["server"]["rtp_forwarded"] > 0 and r["server"]["cpu_seconds"] is not None, r["server"]
fwd = r["node_forward_delay_ms"]
assert fwd and 0 < fwd["p50"] <= fwd["p99"] <= fwd["max"], fwd
print(f"voice smoke: loss {r['loss_pct']:.2f}%, mouth-to-ear p50/p99 {m2e['p50']:.1f}/{m2e['p99']:.1f} ms, "
      f"probe MOS ≥ {min(p['mos_estimate'] for p in probes):.2f}, "
      f"{r['server']['cpu_us_per_forwarded_packet']:.1f} µs CPU per forwarded packet, "
      f"inside the node p99 {fwd['p99']:.2f} ms (debug build)")
PY
