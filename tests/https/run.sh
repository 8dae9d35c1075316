#!/usr/bin/env bash
# The web client at an https origin that is not localhost: the node serves HTTPS/WSS itself
# (--tls-cert/--tls-key) with a certificate for "lodge.test" from a CA made here; two headless
# Chromium callers open https://lodge.test:8443/ (the name mapped to the node's test address),
# get the (fake) microphone, join a voice call and hear each other. A third Chromium without the
# certificate pin must refuse the page, so the test cannot pass over an unchecked connection.
#
#   ns B: the browsers and the driver, 10.79.0.2 ── veth ── 10.79.0.1 ns N: lodge (HTTPS 8443, UDP 50000)
#
# Needs root (network namespaces), openssl, chromium, node, curl and a built `lodge`
# (LODGE_BIN, default target/debug/lodge). OUT=<dir> keeps the logs.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BIN="${LODGE_BIN:-$ROOT/target/debug/lodge}"
# Lodge refuses unknown LODGE_* variables: this one is the script's, not the node's.
unset LODGE_BIN
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
[ "$(id -u)" -eq 0 ] || { echo "tests/https: needs root (network namespaces)"; exit 1; }
for c in ip openssl chromium node curl; do
  command -v "$c" >/dev/null || { echo "tests/https: $c is missing (run scripts/setup.sh)"; exit 1; }
done
[ -x "$BIN" ] || { echo "tests/https: no lodge binary at $BIN (cargo build --bin lodge)"; exit 1; }

B="lodge-https-b-$$"; N="lodge-https-n-$$"
PIDS=()
# Namespaces left by a run that was killed with -9 (its pid is gone) are removed first.
for ns in $(ip netns list | awk '{print $1}' | grep -E '^lodge-https-[a-z]-[0-9]+$' || true); do
  kill -0 "${ns##*-}" 2>/dev/null || ip netns del "$ns" 2>/dev/null || true
done
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  for ns in "$B" "$N"; do
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
}
trap cleanup EXIT

for ns in "$B" "$N"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip link add n0 netns "$N" type veth peer name b0 netns "$B"
ip -n "$N" addr add 10.79.0.1/24 dev n0
ip -n "$B" addr add 10.79.0.2/24 dev b0
ip -n "$N" link set n0 up
ip -n "$B" link set b0 up
ip -n "$B" route add default via 10.79.0.1

# A CA made now, and lodge.test's certificate from it.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=Lodge test CA" \
  -keyout "$OUT/ca.key" -out "$OUT/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=lodge.test" \
  -keyout "$OUT/lodge.key" -out "$OUT/lodge.csr" 2>/dev/null
printf 'subjectAltName=DNS:lodge.test\nextendedKeyUsage=serverAuth\n' >"$OUT/lodge.ext"
openssl x509 -req -in "$OUT/lodge.csr" -CA "$OUT/ca.pem" -CAkey "$OUT/ca.key" -CAcreateserial -days 2 \
  -extfile "$OUT/lodge.ext" -out "$OUT/lodge.pem" 2>/dev/null
cat "$OUT/lodge.pem" "$OUT/ca.pem" >"$OUT/fullchain.pem"
# Chromium trusts exactly this key (the CA is not in its store).
CERT_SPKI="$(openssl x509 -in "$OUT/lodge.pem" -pubkey -noout | openssl pkey -pubin -outform der \
  | openssl dgst -sha256 -binary | base64)"


ip netns exec "$N" "$BIN" serve --data-dir "$OUT/data" --http-listen 10.79.0.1:8443 \
  --public-url https://lodge.test:8443 --tls-cert "$OUT/fullchain.pem" --tls-key "$OUT/lodge.key" \
  --media-listen 10.79.0.1:50000 --public-ip 10.79.0.1 --log info >"$OUT/lodge.log" 2>&1 &
PIDS+=($!)
# The chain verifies against the test CA under the name (curl checks it; nothing is skipped).
CURL=(ip netns exec "$B" curl -fsS --cacert "$OUT/ca.pem" --resolve lodge.test:8443:10.79.0.1)
for _ in $(seq 1 100); do "${CURL[@]}" https://lodge.test:8443/readyz >/dev/null 2>&1 && break; sleep 0.1; done
"${CURL[@]}" https://lodge.test:8443/readyz >/dev/null

cd "$ROOT/tests/browser"
[ -d node_modules/playwright-core ] || npm ci --no-audit --no-fund --loglevel=error
cd "$ROOT/tests/https"
if ! ip netns exec "$B" env LODGE_URL=https://lodge.test:8443 LODGE_ADDR=10.79.0.1 CERT_SPKI="$CERT_SPKI" \
    timeout 180 node https.test.mjs; then
  echo "---- lodge log (last 40 lines) ----"; tail -40 "$OUT/lodge.log"
  exit 1
fi
