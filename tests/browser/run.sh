#!/usr/bin/env bash
# Start a lodge node on free loopback ports and run the real-browser tests (voice, chat, dashboard)
# against it.
# BROWSER_TESTS="chat" runs a subset.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
# The load generator registers and connects from one address: lift the per-address limits.
export LODGE_REGISTRATIONS_PER_IP_PER_HOUR=1000000 LODGE_MAX_HTTP_CONNECTIONS_PER_IP=0
BIN="${LODGE_BIN:-$ROOT/target/debug/lodge}"
# Lodge refuses unknown LODGE_* variables: this one is the script's, not the node's.
unset LODGE_BIN
TMP="$(mktemp -d)"
# shellcheck source=../lib/ports.sh
. "$ROOT/tests/lib/ports.sh"
HP="$(free_port)"; MP="$(free_media)"
OPERATOR_TOKEN="$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
export OPERATOR_TOKEN LOAD_BIN="${LODGE_LOAD_BIN:-$ROOT/target/debug/lodge-load}"
unset LODGE_LOAD_BIN
"$BIN" serve --data-dir "$TMP/data" --http-listen "127.0.0.1:$HP" --media-listen "127.0.0.1:$MP" --log "info,lodge_sfu=debug" \
  --operator-token "$OPERATOR_TOKEN" >"$TMP/lodge.log" 2>&1 &
PID=$!
cleanup() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$HP/readyz" >/dev/null && break; sleep 0.1; done
cd "$ROOT/tests/browser"
[ -d node_modules/playwright-core ] || npm ci --no-audit --no-fund
for t in ${BROWSER_TESTS:-voice chat dashboard}; do
  echo "-- browser test: $t"
  if ! LODGE_URL="http://127.0.0.1:$HP" node "$t.test.mjs"; then
    echo "---- lodge log (last 80 lines) ----"; tail -80 "$TMP/lodge.log"; exit 1
  fi
done
