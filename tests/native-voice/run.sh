#!/usr/bin/env bash
# Unmodified discord.js 14 + @discordjs/voice 0.19 bots in a Lodge voice channel over Discord's
# native voice transport (UDP mode), with DAVE on (end-to-end encryption, @snazzah/davey: Lodge
# is the MLS delivery service) and off (`daveEncryption: false`, protocol version 0).
# Bot A plays an Opus tone, bot B receives and decodes it, the test checks its frequency.
#
# @discordjs/voice always opens wss://{endpoint}/?v=8, so the node serves HTTPS/WSS itself
# (--tls-cert/--tls-key) with a certificate for localhost / 127.0.0.1 from a CA made here, which
# node trusts through NODE_EXTRA_CA_CERTS. Everything stays on loopback.
#
# Three runs against one node: DAVE on with the client's default mode choice
# (aead_aes256_gcm_rtpsize, Lodge's first mode), where lodge-voice (Lodge's own client library)
# joins as a third member of the MLS group and is heard by, and hears, the bots; DAVE off with that mode (this run also holds the
# call for the whole 12 s tone and one voice heartbeat); DAVE off with
# aead_xchacha20_poly1305_rtpsize, forced on the client side (see pair.test.mjs, FORCE_XCHACHA).
# ONLY_AES=1 skips the third run; VERBOSE=1 prints @discordjs/voice's debug log (keys elided).
#
# Needs node (>= 20), npm, openssl, curl, python3 and cargo, and a `lodge` binary (LODGE_BIN,
# default target/debug/lodge; built with cargo if missing); builds lodge-voice. OUT=<dir> keeps the logs.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
HERE="$ROOT/tests/native-voice"
BIN="$(realpath -m "${LODGE_BIN:-$ROOT/target/debug/lodge}")" # absolute: the script changes directory
unset LODGE_BIN # lodge refuses LODGE_* variables it does not know
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
rm -rf "$OUT/data" # a fresh node every run (OUT may be reused)
for c in openssl node npm curl python3; do
  command -v "$c" >/dev/null || { echo "tests/native-voice: $c is missing (run scripts/setup.sh)"; exit 1; }
done
if [ ! -x "$BIN" ]; then
  echo "tests/native-voice: building lodge (no binary at $BIN)"
  (cd "$ROOT" && timeout 1800 cargo build -p lodge-signaling --bin lodge --locked)
fi
# lodge-client's CLI joins the DAVE run as a third member; always through cargo (a no-op when
# fresh), so it is never older than the tree.
(cd "$ROOT" && timeout 1800 cargo build -p lodge-client --bin lodge-voice --locked)
VOICE_BIN="$ROOT/target/debug/lodge-voice"

cd "$HERE"
[ -d node_modules/@discordjs/voice ] || timeout 300 npm ci --no-audit --no-fund --loglevel=error

# A CA made now, and a certificate for localhost (DNS) and 127.0.0.1 (IP) from it.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=Lodge native voice test CA" \
  -keyout "$OUT/ca.key" -out "$OUT/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
  -keyout "$OUT/lodge.key" -out "$OUT/lodge.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >"$OUT/lodge.ext"
openssl x509 -req -in "$OUT/lodge.csr" -CA "$OUT/ca.pem" -CAkey "$OUT/ca.key" -CAcreateserial -days 2 \
  -extfile "$OUT/lodge.ext" -out "$OUT/lodge.pem" 2>/dev/null
cat "$OUT/lodge.pem" "$OUT/ca.pem" >"$OUT/fullchain.pem"

# shellcheck source=../lib/ports.sh
. "$ROOT/tests/lib/ports.sh"
HP="$(free_port)"; MP="$(free_media)"
URL="https://localhost:$HP"
"$BIN" serve --data-dir "$OUT/data" --http-listen "127.0.0.1:$HP" --media-listen "127.0.0.1:$MP" \
  --public-url "$URL" --tls-cert "$OUT/fullchain.pem" --tls-key "$OUT/lodge.key" \
  --log "${LODGE_LOG:-info,lodge_signaling::voice=debug}" >"$OUT/lodge.log" 2>&1 &
PID=$!
cleanup() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 1 100); do curl -fs --cacert "$OUT/ca.pem" "$URL/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fsS --cacert "$OUT/ca.pem" "$URL/readyz" >/dev/null

run() { # name, then env for the test
  local name="$1"; shift
  echo "-- native voice: $name"
  if ! env NODE_EXTRA_CA_CERTS="$OUT/ca.pem" LODGE_URL="$URL" "$@" timeout 90 node pair.test.mjs 2>&1 | tee "$OUT/$name.log"; then
    echo "---- lodge log (last 60 lines) ----"; tail -60 "$OUT/lodge.log"; exit 1
  fi
}
set -o pipefail
run dave RUN=d TONE_HZ=550 DAVE=1 EXPECT_MODE=aead_aes256_gcm_rtpsize LODGE_VOICE="$VOICE_BIN" LODGE_CA="$OUT/ca.pem"
run aes-gcm RUN=g TONE_HZ=440 HOLD=1 EXPECT_MODE=aead_aes256_gcm_rtpsize
[ -n "${ONLY_AES:-}" ] || run xchacha RUN=x TONE_HZ=660 EXPECT_MODE=aead_xchacha20_poly1305_rtpsize FORCE_XCHACHA=1
echo "native voice: every run passed (logs in $OUT)"
