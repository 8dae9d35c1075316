#!/usr/bin/env bash
# TURN through coturn, with real browsers: a Chromium caller whose UDP to the node is dropped by
# a firewall still joins a call through coturn, over TCP and over TLS, and hears (and is heard
# by) a caller on the node's side. Before that, the same caller joins directly (the baseline of
# the delay figures) and then, with the firewall up and no relay, must NOT get media: the test
# cannot pass without the relay doing the work.
#
# Everything runs in three network namespaces this script creates, on private addresses:
#
#   ns B (browser "alice")        ns R (router + coturn)              ns N (node + browser "bob")
#   10.77.0.2 ── veth ── 10.77.0.1   coturn: TCP 3478, TLS 5349 on .0.1   10.77.1.2 ── veth ── 10.77.1.1
#                                  relays from 10.77.1.1                lodge: HTTP 8080, UDP media 50000
#                                  nftables: UDP from 10.77.0.0/24 dropped (forwarded and to coturn)
#
# Needs root (namespaces, nftables), coturn, nftables, chromium, node (scripts/setup.sh installs
# them), and a built `lodge` (LODGE_BIN, default target/debug/lodge).
# OUT=<dir> keeps the logs and the measured figures (figures.json); default a temp dir.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BIN="${LODGE_BIN:-$ROOT/target/debug/lodge}"
# lodge refuses LODGE_* variables it does not know: this one is ours.
unset LODGE_BIN
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
[ "$(id -u)" -eq 0 ] || { echo "tests/turn: needs root (network namespaces, nftables)"; exit 1; }
for c in turnserver nft ip openssl chromium node; do
  command -v "$c" >/dev/null || { echo "tests/turn: $c is missing (run scripts/setup.sh)"; exit 1; }
done
[ -x "$BIN" ] || { echo "tests/turn: no lodge binary at $BIN (cargo build --bin lodge)"; exit 1; }

# B (browser) ── R (router) ── N (node) on 10.77.0.0/24 and 10.77.1.0/24; removed at exit.
. "$ROOT/tests/lib/netns.sh"
netns_three turn 77

# coturn's TLS certificate, from a CA made here (Chromium pins the certificate's key instead of
# trusting the CA: --ignore-certificate-errors-spki-list).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=Lodge test CA" \
  -keyout "$OUT/ca.key" -out "$OUT/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=10.77.0.1" \
  -keyout "$OUT/turn.key" -out "$OUT/turn.csr" 2>/dev/null
printf 'subjectAltName=IP:10.77.0.1\nextendedKeyUsage=serverAuth\n' >"$OUT/turn.ext"
openssl x509 -req -in "$OUT/turn.csr" -CA "$OUT/ca.pem" -CAkey "$OUT/ca.key" -CAcreateserial -days 2 \
  -extfile "$OUT/turn.ext" -out "$OUT/turn.pem" 2>/dev/null
TURN_SPKI="$(openssl x509 -in "$OUT/turn.pem" -pubkey -noout | openssl pkey -pubin -outform der \
  | openssl dgst -sha256 -binary | base64)"
export TURN_SPKI

SECRET="$(openssl rand -hex 24)"
cat >"$OUT/turnserver.conf" <<CONF
listening-ip=10.77.0.1
relay-ip=10.77.1.1
listening-port=3478
tls-listening-port=5349
cert=$OUT/turn.pem
pkey=$OUT/turn.key
use-auth-secret
static-auth-secret=$SECRET
realm=lodge.test
fingerprint
no-dtls
no-cli
no-multicast-peers
pidfile=$OUT/turnserver.pid
log-file=stdout
simple-log
userdb=$OUT/turndb
CONF
ip netns exec "$R" turnserver -c "$OUT/turnserver.conf" >"$OUT/coturn.log" 2>&1 &
PIDS+=($!)

HTTP=10.77.1.2:8080
# ICE-TCP off: with it on, a caller whose UDP is blocked reaches the node over TCP directly and
# never needs the relay this suite proves (tests/ice-tcp covers that path).
ip netns exec "$N" "$BIN" serve --data-dir "$OUT/data" --http-listen "$HTTP" \
  --media-listen 10.77.1.2:50000 --public-ip 10.77.1.2 --log info \
  --registrations-per-ip-per-hour 1000 --ice-tcp false \
  --turn-url "turn:10.77.0.1:3478?transport=tcp,turns:10.77.0.1:5349?transport=tcp" \
  --turn-secret "$SECRET" >"$OUT/lodge.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do ip netns exec "$B" curl -fs "http://$HTTP/readyz" >/dev/null && break; sleep 0.1; done
ip netns exec "$B" curl -fsS "http://$HTTP/readyz" >/dev/null
for _ in $(seq 1 50); do grep -q "Listening" "$OUT/coturn.log" 2>/dev/null && break; sleep 0.1; done

# Chromium for alice runs in ns B; the driver and bob's Chromium in ns N.
cat >"$OUT/chromium-b" <<SH
#!/bin/sh
exec ip netns exec $B /usr/bin/chromium "\$@"
SH
chmod +x "$OUT/chromium-b"

# The firewall: applied between the phases by the driver (it calls these two files).
cat >"$OUT/firewall-up" <<SH
#!/bin/sh
ip netns exec $R nft -f - <<NFT
table inet lodge_turn {
  chain forward {
    type filter hook forward priority 0; policy accept;
    ip saddr 10.77.0.0/24 ip daddr 10.77.1.0/24 meta l4proto udp counter drop
    ip saddr 10.77.1.0/24 ip daddr 10.77.0.0/24 meta l4proto udp counter drop
  }
  chain input {
    type filter hook input priority 0; policy accept;
    ip saddr 10.77.0.0/24 meta l4proto udp counter drop
  }
}
NFT
SH
cat >"$OUT/firewall-drops" <<SH
#!/bin/sh
# Packets dropped so far (all three rules).
ip netns exec $R nft list table inet lodge_turn | awk '/counter packets/ { for (i = 1; i < NF; i++) if (\$i == "packets") n += \$(i + 1) } END { print n + 0 }'
SH
chmod +x "$OUT/firewall-up" "$OUT/firewall-drops"

cd "$ROOT/tests/browser"
[ -d node_modules/playwright-core ] || npm ci --no-audit --no-fund --loglevel=error
cd "$ROOT/tests/turn"
if ! ip netns exec "$N" env LODGE_URL="http://$HTTP" CHROMIUM_B="$OUT/chromium-b" \
    FIREWALL_UP="$OUT/firewall-up" FIREWALL_DROPS="$OUT/firewall-drops" FIGURES="$OUT/figures.json" \
    timeout 300 node turn.test.mjs; then
  echo "---- lodge log (last 40 lines) ----"; tail -40 "$OUT/lodge.log"
  echo "---- coturn log (last 40 lines) ----"; tail -40 "$OUT/coturn.log"
  exit 1
fi
echo "tests/turn: passed; figures in $OUT/figures.json"
