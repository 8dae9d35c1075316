#!/usr/bin/env bash
# A short `lodge-load playout` run (debug build): espeak-ng speech through real Opus on two
# profiles, every strategy, plus a short bottleneck trace. Checks that the report, the JSON and
# the three plots are written and that the numbers are sane: the wired link plays the clean
# decode, and FEC lowers concealment on 3% bursty loss. The full evaluation is
#   cargo run --release -p lodge-loadtest -- playout --out docs/playout
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
LOAD="${LODGE_LOAD_BIN:-$ROOT/target/debug/lodge-load}"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
"$LOAD" playout --seconds 20 --bottleneck-seconds 60 --profiles wired,bursty_3 --out "$OUT" >/dev/null
for f in report.md report.json delay-vs-concealment.png delay-4g-handover.png bottleneck.png; do
  [ -s "$OUT/$f" ] || [ "$f" = delay-4g-handover.png ] || { echo "playout smoke: $f missing"; exit 1; }
done
python3 - "$OUT/report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
runs = {(x["profile"], x["strategy"]): x for x in r["runs"]}
wired = runs[("wired", "adaptive")]
assert wired["concealment_pct"] == 0 and wired["seg_snr_db"] > 30, wired
plain, fec = runs[("bursty_3", "adaptive")], runs[("bursty_3", "adaptive + FEC")]
assert plain["concealment_pct"] > 1, plain
assert fec["fec_recovered_pct"] > 0.3 and fec["concealment_pct"] < plain["concealment_pct"], (plain, fec)
ad, st = r["bottleneck"]
assert ad["unrecovered_pct"] < st["unrecovered_pct"], (ad, st)
print(f"playout smoke: wired seg. SNR {wired['seg_snr_db']:.1f} dB; bursty_3 concealment "
      f"{plain['concealment_pct']:.2f}% → {fec['concealment_pct']:.2f}% with FEC; bottleneck "
      f"unrecovered {st['unrecovered_pct']:.1f}% static → {ad['unrecovered_pct']:.1f}% adaptive")
PY
