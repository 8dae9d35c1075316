#!/usr/bin/env bash
# Start a lodge node on free loopback ports and run the unmodified discord.py bot against it.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BIN="${LODGE_BIN:-$ROOT/target/debug/lodge}"
# Lodge refuses unknown LODGE_* variables: this one is the script's, not the node's.
unset LODGE_BIN
HERE="$ROOT/tests/discordpy"
TMP="$(mktemp -d)"
[ -x "$HERE/.venv/bin/python" ] || python3 -m venv "$HERE/.venv"
"$HERE/.venv/bin/pip" install -q --disable-pip-version-check -r "$HERE/requirements.txt"
# shellcheck source=../lib/ports.sh
. "$ROOT/tests/lib/ports.sh"
HP="$(free_port)"; MP="$(free_media)"
"$BIN" serve --data-dir "$TMP/data" --http-listen "127.0.0.1:$HP" --media-listen "127.0.0.1:$MP" >"$TMP/lodge.log" 2>&1 &
PID=$!
cleanup() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$HP/readyz" >/dev/null && break; sleep 0.1; done
if ! LODGE_URL="http://127.0.0.1:$HP" "$HERE/.venv/bin/python" "$HERE/bot_test.py"; then
  echo "---- lodge log (last 60 lines) ----"; tail -60 "$TMP/lodge.log"; exit 1
fi
