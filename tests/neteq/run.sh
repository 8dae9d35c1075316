#!/usr/bin/env bash
# Lodge's playout against Chromium's NetEq, side by side (issue #18): the same speech, through the
# same impairment profile, to two listeners in one voice channel of a real node:
#   - headless Chromium (the web client; its NetEq, Opus PLC and time stretching), its media
#     through a `lodge-load relay` (tests/browser/neteq-listener.mjs rewrites the node's ICE
#     candidate to the relay);
#   - `lodge-voice` (lodge-client: Lodge's adaptive buffer, Opus FEC/PLC, time stretching on the
#     decoded audio), its media through another relay with the same profile and seed.
# The relays impair RTP only (--rtp-only), so both listeners' speech meets the same losses and
# delays whatever else each path carries (DTLS, STUN, RTCP, keepalives). The packet sizes differ
# (SRTP with header extensions against the native transport), which matters only on a profile
# with a bandwidth cap.
# The speaker is a third client (`lodge-voice --play speech.wav`, espeak-ng speech with pauses,
# every frame sent). Each listener's final figures (getStats names) are kept per profile and
# `lodge-load neteq-report` scores both by one formula into report.md and neteq.png.
#
# Usage: OUT=dir [PROFILES="wired good_wifi ..."] [SECONDS_PER_PROFILE=30] [SEED=7] \
#          [PROFILE=debug|release] tests/neteq/run.sh
# Default: all seven profiles, 30 s each (about 6 minutes). CI runs a short smoke run.
# Needs: the binaries lodge, lodge-voice, lodge-load of PROFILE (built here if missing), node +
# playwright-core + chromium (tests/browser), espeak-ng, python3, curl.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
OUT="${OUT:?set OUT to a directory for the results}"
PROFILES="${PROFILES:-wired good_wifi busy_wifi 4g_handover congested_3g bursty_10 bursty_3}"
SECS="${SECONDS_PER_PROFILE:-30}"
SEED="${SEED:-7}"
BUILD="${PROFILE:-debug}"
T="$ROOT/target/$BUILD"
mkdir -p "$OUT"
for c in node espeak-ng python3 curl; do
  command -v "$c" >/dev/null || { echo "tests/neteq: $c is missing (run scripts/setup.sh)"; exit 1; }
done
if [ ! -x "$T/lodge" ] || [ ! -x "$T/lodge-voice" ] || [ ! -x "$T/lodge-load" ]; then
  flag=(); [ "$BUILD" = release ] && flag=(--release)
  (cd "$ROOT" && timeout 1800 cargo build "${flag[@]}" --locked -p lodge-signaling --bin lodge -p lodge-client --bin lodge-voice -p lodge-loadtest --bin lodge-load)
fi
(cd "$ROOT/tests/browser" && { [ -d node_modules/playwright-core ] || timeout 300 npm ci --no-audit --no-fund --loglevel=error; })

# shellcheck source=../lib/api.sh
. "$ROOT/tests/lib/api.sh"
HP="$(free_port)"; MP="$(free_media)"
URL="http://127.0.0.1:$HP"
rm -rf "$OUT/data"
# One media worker: the relays forward to the one media port.
"$T/lodge" serve --data-dir "$OUT/data" --http-listen "127.0.0.1:$HP" --media-listen "127.0.0.1:$MP" \
  --media-workers 1 --log info >"$OUT/lodge.log" 2>&1 &
NODE=$!
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  kill "$NODE" 2>/dev/null || true; wait 2>/dev/null || true
}
trap cleanup EXIT
wait_ready

S=$(api POST /auth/register "" '{"username":"speaker","password":"password-123"}')
L=$(api POST /auth/register "" '{"username":"lodge_listener","password":"password-123"}')
TS=$(js 'd["token"]' <<<"$S"); TL=$(js 'd["token"]' <<<"$L")
guild_with_member "$TS" "$TL" "NetEq comparison"

# Speech with pauses: six sentences, each followed by 0.4-1.2 s of silence.
SPEECH="$OUT/speech.wav"
python3 - "$OUT" "$SPEECH" <<'PY'
import subprocess, sys, wave
out, dest = sys.argv[1], sys.argv[2]
sentences = [
    "Can everyone hear me now? I think my microphone was muted a minute ago.",
    "The build server was slow again this morning, so we started late.",
    "Let us look at the second node in the east region first.",
    "It restarted twice overnight and ran out of file handles.",
    "Raise the limit today, and keep looking for the leak.",
    "Next item: the voice channel for the tournament on Saturday.",
]
pauses = [0.6, 1.0, 0.4, 1.2, 0.8, 0.7]
frames, params = b"", None
for i, s in enumerate(sentences):
    f = f"{out}/s{i}.wav"
    subprocess.run(["espeak-ng", "-s", "165", "-w", f, s], check=True)
    with wave.open(f) as w:
        params = w.getparams()
        frames += w.readframes(w.getnframes())
        frames += b"\0\0" * int(w.getframerate() * pauses[i])
with wave.open(dest, "wb") as w:
    w.setparams(params)
    w.writeframes(frames)
PY

wait_for() { # file, pattern, seconds
  for _ in $(seq 1 $(( $3 * 10 ))); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "tests/neteq: no '$2' in $1 after $3 s"; cat "$1" || true; return 1
}

i=0
for P in $PROFILES; do
  i=$((i + 1))
  D="$OUT/$P"; mkdir -p "$D"
  echo "== $P: $SECS s of speech to Chromium and to lodge-client, each through a relay (seed $SEED)"
  "$T/lodge-load" relay --listen 127.0.0.1:0 --to "127.0.0.1:$MP" --profile "$P" --seed "$SEED" --rtp-only >"$D/relay-chromium.txt" 2>&1 &
  PIDS+=($!)
  "$T/lodge-load" relay --listen 127.0.0.1:0 --to "127.0.0.1:$MP" --profile "$P" --seed "$SEED" --rtp-only >"$D/relay-lodge.txt" 2>&1 &
  PIDS+=($!)
  wait_for "$D/relay-chromium.txt" '^relay ' 10; wait_for "$D/relay-lodge.txt" '^relay ' 10
  RC=$(awk '/^relay /{print $2; exit}' "$D/relay-chromium.txt"); RL=$(awk '/^relay /{print $2; exit}' "$D/relay-lodge.txt")

  (cd "$ROOT/tests/browser" && LODGE_URL="$URL" INVITE="$INVITE" RELAY="$RC" NAME="neteq$i" \
     exec node neteq-listener.mjs >"$D/chromium.out" 2>"$D/chromium.log") &
  BROWSER=$!; PIDS+=($BROWSER)
  "$T/lodge-voice" --url "$URL" --token "$TL" --guild "$GID" --channel "$VOICE" --via "$RL" \
    --stats-every 0 --stats-json "$D/lodge.json" >"$D/lodge.out" 2>&1 &
  LISTENER=$!; PIDS+=($LISTENER)
  wait_for "$D/chromium.out" '"event":"joined"' 60
  wait_for "$D/lodge.out" 'joined as user' 30

  # The speaker sends every frame (pauses as Opus silence, as a browser does without DTX), so
  # both buffers see one continuous stream; both listeners report before it stops, so neither
  # counts the end of the call. At a fixed 32 kbps: its own path is clean, so an adaptive rate
  # would climb to 64 kbps and meet the listeners' bandwidth caps, which this comparison of
  # playout is not about.
  "$T/lodge-voice" --url "$URL" --token "$TS" --guild "$GID" --channel "$VOICE" --play "$SPEECH" --loop \
    --fixed-bitrate --bitrate 32000 --stats-every 0 >"$D/speaker.out" 2>&1 &
  SPEAKER=$!; PIDS+=($SPEAKER)
  wait_for "$D/speaker.out" 'joined as user' 30
  sleep "$SECS"
  kill -INT "$LISTENER" 2>/dev/null || true
  kill -USR2 "$BROWSER" 2>/dev/null || true
  wait "$LISTENER" || { echo "tests/neteq: lodge-voice (listener) failed"; cat "$D/lodge.out"; exit 1; }
  wait "$BROWSER" || true
  kill -INT "$SPEAKER" 2>/dev/null || true
  wait "$SPEAKER" || true
  grep '"event":"stats"' "$D/chromium.out" | head -1 | sed 's/^@@ //' >"$D/chromium.json"
  [ -s "$D/chromium.json" ] || { echo "tests/neteq: no stats from Chromium"; cat "$D/chromium.log"; exit 1; }
  [ -s "$D/lodge.json" ] || { echo "tests/neteq: no stats from lodge-voice"; cat "$D/lodge.out"; exit 1; }
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait "${PIDS[@]}" 2>/dev/null || true
  PIDS=()
done

"$T/lodge-load" neteq-report --dir "$OUT" --expect-seconds "$SECS"
