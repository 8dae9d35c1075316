#!/usr/bin/env bash
# The abuse suite (issue #13's attack classes) against a release `lodge serve` on loopback.
#   tests/abuse/run.sh                 builds the release binary, runs every attack
#   LODGE_BIN=path tests/abuse/run.sh  uses that binary
#   ONLY="identify loop;registration flood" tests/abuse/run.sh   some attack classes (";" between names)
# Writes abuse-report.{md,json} to $OUT (default: a temporary directory) and prints a table.
# Needs the addresses 127.0.0.1, 127.0.0.2 (the trusted proxy) and 127.0.0.66 (the attacker),
# which Linux routes on loopback without any setup.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
HERE="$ROOT/tests/abuse"
BIN="${LODGE_BIN:-}"
# The node rejects LODGE_* variables it does not know: do not hand it this script's own.
unset LODGE_BIN
if [ -z "$BIN" ]; then
  (cd "$ROOT" && cargo build -q --release --locked -p lodge-signaling --bin lodge)
  BIN="$ROOT/target/release/lodge"
fi
OUT="${OUT:-$(mktemp -d)}"
TMP="$(mktemp -d)"
[ -x "$HERE/.venv/bin/python" ] || python3 -m venv "$HERE/.venv"
"$HERE/.venv/bin/pip" install -q --disable-pip-version-check -r "$HERE/requirements.txt"
# shellcheck source=../lib/ports.sh
. "$ROOT/tests/lib/ports.sh"
HP="$(free_port)"; MP="$(free_media)"
# Defaults throughout, except: the suite's own proxy address is trusted, and the two waits an
# attack must sit out (identify and heartbeat timeouts, header timeout) are shortened so the
# suite stays within five minutes.
"$BIN" serve --data-dir "$TMP/data" --http-listen "127.0.0.1:$HP" --media-listen "127.0.0.1:$MP" \
  --trusted-proxy 127.0.0.2/32 --identify-timeout-secs 5 --heartbeat-interval-ms 4000 \
  --http-header-timeout-secs 5 >"$TMP/lodge.log" 2>&1 &
PID=$!
cleanup() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$HP/readyz" >/dev/null && break; sleep 0.1; done
START=$(date +%s)
if ! "$HERE/.venv/bin/python" "$HERE/abuse.py" --url "http://127.0.0.1:$HP" --pid "$PID" --out "$OUT" --only "${ONLY:-}"; then
  echo "---- lodge log (last 60 lines) ----"; tail -60 "$TMP/lodge.log"; exit 1
fi
echo "abuse suite: $(( $(date +%s) - START )) s; report: $OUT/abuse-report.md"
kill -0 "$PID" || { echo "the node died"; exit 1; }
