#!/usr/bin/env bash
# lodge-client in a crowded call (issue #18): a `lodge-load` crowd (WebRTC callers, two of them
# speaking) fills a voice channel of a real node; then a headless Chromium web client (660 Hz)
# and `lodge-voice` (lodge-client, 440 Hz, driven through --commands) join it.
# tests/browser/crowd-call.mjs checks tones both ways, mute, deafen, a new source port, a clean
# leave and the recording; afterwards the crowd's own report must show every caller joined and
# no errors.
#
# Needs: cargo (builds the debug binaries lodge, lodge-voice and lodge-load), node +
# playwright-core + chromium (tests/browser), python3, curl. OUT=<dir> keeps the logs.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
rm -rf "$OUT/data" "$OUT/heard"
CROWD_N=8
for c in node python3 curl; do
  command -v "$c" >/dev/null || { echo "tests/client-crowd: $c is missing (run scripts/setup.sh)"; exit 1; }
done
T="$ROOT/target/debug"
# Always through cargo (a no-op when fresh): a stale binary would lack today's flags.
(cd "$ROOT" && timeout 1800 cargo build --locked -p lodge-signaling --bin lodge \
  && timeout 1800 cargo build --locked -p lodge-client --bin lodge-voice \
  && timeout 1800 cargo build --locked -p lodge-loadtest --bin lodge-load)
(cd "$ROOT/tests/browser" && { [ -d node_modules/playwright-core ] || timeout 300 npm ci --no-audit --no-fund --loglevel=error; })

# shellcheck source=../lib/api.sh
. "$ROOT/tests/lib/api.sh"
HP="$(free_port)"; MP="$(free_media)"
URL="http://127.0.0.1:$HP"
"$T/lodge" serve --data-dir "$OUT/data" --http-listen "127.0.0.1:$HP" --media-listen "127.0.0.1:$MP" \
  --log info >"$OUT/lodge.log" 2>&1 &
NODE=$!
CROWD=""
cleanup() {
  [ -n "$CROWD" ] && kill "$CROWD" 2>/dev/null || true
  kill "$NODE" 2>/dev/null || true; wait 2>/dev/null || true
}
trap cleanup EXIT
fail() { echo "tests/client-crowd: $*"; tail -30 "$OUT/lodge.log"; exit 1; }
wait_ready

H=$(api POST /auth/register "" '{"username":"host","password":"password-123"}')
V=$(api POST /auth/register "" '{"username":"lodge_voice","password":"password-123"}')
TH=$(js 'd["token"]' <<<"$H"); TV=$(js 'd["token"]' <<<"$V")
guild_with_member "$TH" "$TV" "A crowded call"

echo "== a crowd of $CROWD_N lodge-load callers (2 speaking) joins channel $VOICE"
"$T/lodge-load" voice --url "$URL" --invite "$INVITE" --channel-id "$VOICE" -n "$CROWD_N" -s 2 \
  --duration 300 --join-rate 20 --source-ip 127.0.0.2 --report "$OUT/crowd.json" \
  >"$OUT/crowd.md" 2>"$OUT/crowd.log" &
CROWD=$!
# The crowd is in when the node has CROWD_N connected peers; its speakers are those sending.
SPEAKERS="[]"
for _ in $(seq 1 60); do
  sleep 1
  kill -0 "$CROWD" 2>/dev/null || { cat "$OUT/crowd.log"; fail "lodge-load exited early"; }
  R=$(curl -fsS -H "Authorization: $TH" "$URL/api/v10/voice/stats" || echo '{}')
  N=$(js 'len([p for p in d.get("peers", []) if p["connected"]])' <<<"$R")
  if [ "$N" -ge "$CROWD_N" ]; then
    sleep 3
    R=$(curl -fsS -H "Authorization: $TH" "$URL/api/v10/voice/stats")
    SPEAKERS=$(js 'json.dumps([p["user"] for p in d["peers"] if p["stats"]["packets_in"] > 0])' <<<"$R")
    break
  fi
done
[ "$SPEAKERS" != "[]" ] || fail "the crowd did not connect (or nobody in it speaks): $R"
echo "crowd in the call; its speakers: $SPEAKERS"

echo "== Chromium and lodge-voice join the crowded call"
(cd "$ROOT/tests/browser" && LODGE_URL="$URL" INVITE="$INVITE" TOKEN="$TV" GUILD="$GID" CHANNEL="$VOICE" \
   VOICE_BIN="$T/lodge-voice" CROWD="$SPEAKERS" OUT="$OUT" timeout 150 node crowd-call.mjs) \
  | tee "$OUT/call.log" || fail "the call checks failed (logs in $OUT)"

echo "== the crowd's own report"
# The crowd stays for as long as the checks take (--duration is only a bound); Ctrl-C makes it
# leave and write its report (marked interrupted, hence its exit status 1).
kill -INT "$CROWD"
wait "$CROWD" || true
CROWD=""
[ -s "$OUT/crowd.json" ] || { cat "$OUT/crowd.log"; fail "lodge-load wrote no report"; }
python3 - "$OUT/crowd.json" "$CROWD_N" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
n = int(sys.argv[2])
joined = r["connected"]
errors = r.get("errors", [])
print(f"crowd: {joined}/{n} connected, {len(errors)} error(s), {r['rtp_received']} packets received, loss {r['loss_pct']}%")
assert joined == n, f"only {joined} of {n} crowd callers connected"
assert r["rtp_received"] > 0, "the crowd heard nothing"
assert not errors, errors
PY
echo "tests/client-crowd: passed (logs in $OUT)"
