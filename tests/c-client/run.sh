#!/usr/bin/env bash
# The C ABI end to end: client/examples/c/play_wav.c is compiled against
# client/include/lodge_client.h and liblodge_client.so, joins a voice channel of a real node,
# and plays a 660 Hz WAV into it; `lodge-voice` (the same library from Rust) listens in the
# channel and records each speaker. The test checks that the C client's track holds the tone
# and that the C example left cleanly.
#
# Needs cc, curl, python3 and cargo; builds (debug) lodge, lodge-voice and liblodge_client.so.
# OUT=<dir> keeps the logs, the WAVs and the compiled example.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
rm -rf "$OUT/data" "$OUT/heard"
for c in cc curl python3; do
  command -v "$c" >/dev/null || { echo "tests/c-client: $c is missing (run scripts/setup.sh)"; exit 1; }
done
T="$ROOT/target/debug"
# Always through cargo (a no-op when fresh): a stale liblodge_client.so against a newer header
# reads its structs wrongly. Two commands, since `--bin lodge` would make lodge-client's
# library a mere dependency, which cargo does not copy to target/debug.
(cd "$ROOT" && timeout 1800 cargo build -p lodge-signaling --bin lodge --locked \
  && timeout 1800 cargo build -p lodge-client --lib --bin lodge-voice --locked)

# The example must build warning-free as C99 against the committed header.
cc -std=c99 -D_POSIX_C_SOURCE=200809L -Wall -Wextra -Werror -o "$OUT/play_wav" \
  "$ROOT/client/examples/c/play_wav.c" -I "$ROOT/client/include" -L "$T" -llodge_client -Wl,-rpath,"$T"

# shellcheck source=../lib/api.sh
. "$ROOT/tests/lib/api.sh"
HP="$(free_port)"; MP="$(free_media)"
URL="http://127.0.0.1:$HP"
"$T/lodge" serve --data-dir "$OUT/data" --http-listen "127.0.0.1:$HP" --media-listen "127.0.0.1:$MP" \
  --log info >"$OUT/lodge.log" 2>&1 &
PID=$!
cleanup() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }
trap cleanup EXIT
wait_ready

# Two accounts in one guild: (token, user id) each, the guild and its voice channel.
A=$(api POST /auth/register "" '{"username":"c_player","password":"password-123"}')
B=$(api POST /auth/register "" '{"username":"listener","password":"password-123"}')
TA=$(js 'd["token"]' <<<"$A"); UA=$(js 'd["user"]["id"]' <<<"$A"); TB=$(js 'd["token"]' <<<"$B")
guild_with_member "$TA" "$TB" "C den"

# Four seconds of 660 Hz, 16 kHz mono: the library converts the rate.
python3 - "$OUT/tone.wav" <<'PY'
import math, struct, sys, wave
with wave.open(sys.argv[1], "wb") as w:
    w.setnchannels(1); w.setsampwidth(2); w.setframerate(16000)
    w.writeframes(b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 660 * i / 16000))) for i in range(4 * 16000)))
PY

"$T/lodge-voice" --url "$URL" --token "$TB" --guild "$GID" --channel "$VOICE" --duration 7 \
  --stats-every 1 --record "$OUT/heard" >"$OUT/listener.log" 2>&1 &
LISTENER=$!
sleep 1
if ! timeout 60 "$OUT/play_wav" "$URL" "$TA" "$GID" "$VOICE" "$OUT/tone.wav" 4 | tee "$OUT/play_wav.log"; then
  echo "tests/c-client: the C example failed"; tail -40 "$OUT/lodge.log"; exit 1
fi
grep -q "left cleanly" "$OUT/play_wav.log" || { echo "tests/c-client: the C example did not leave cleanly"; exit 1; }
# The node answered the C client's sender reports, and LodgeStats carried the figures across.
grep -q "uplink loss 0.0%" "$OUT/play_wav.log" \
  || { echo "tests/c-client: no receiver report reached the C client's stats"; exit 1; }
# Both clients take part in DAVE: the C client's stats show the call end-to-end encrypted.
grep -q "end-to-end encrypted (DAVE), privacy code [0-9]\{30\}" "$OUT/play_wav.log" \
  || { echo "tests/c-client: the C client's call was not end-to-end encrypted"; exit 1; }
wait "$LISTENER" || { echo "tests/c-client: lodge-voice failed"; cat "$OUT/listener.log"; exit 1; }

# The C client's track, as the listener recorded it: 660 Hz well above 1 kHz and loud enough.
python3 - "$OUT/heard/user-$UA.wav" <<'PY'
import math, struct, sys, wave
with wave.open(sys.argv[1]) as w:
    assert w.getframerate() == 48000, w.getframerate()
    pcm = struct.unpack("<%dh" % w.getnframes(), w.readframes(w.getnframes()))
def power(x, hz):
    k = 2 * math.cos(2 * math.pi * hz / 48000); s1 = s2 = 0.0
    for v in x:
        s1, s2 = v + k * s1 - s2, s1
    return (s1 * s1 + s2 * s2 - k * s1 * s2) / len(x) ** 2
loudest = max(range(0, max(1, len(pcm) - 48000), 4800), key=lambda i: sum(v * v for v in pcm[i:i + 48000]))
win = pcm[loudest:loudest + 48000]
at, off = power(win, 660), power(win, 1000)
print(f"c-client: the listener heard the C client's track: {len(pcm) / 48000:.1f} s, 660 Hz power {at:.0f}, 1 kHz {off:.0f}")
assert len(pcm) >= 48000, "under a second recorded"
assert at > 1e5 and at > 100 * off, "the 660 Hz tone is not in the C client's track"
PY
echo "c-client: the C example joined, played its WAV and was heard (logs in $OUT)"
