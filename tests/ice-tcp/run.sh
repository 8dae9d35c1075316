#!/usr/bin/env bash
# ICE-TCP with real browsers: a Chromium caller whose UDP to the node is dropped by a firewall
# joins a call over TCP to the node's media port (the passive ICE-TCP candidate; no TURN relay
# is configured) and hears (and is heard by) a caller on the node's side. First the same caller
# joins with the firewall down (UDP, the baseline of the delay figures); then, with the firewall
# up, it must NOT get media while its page strips the node's TCP candidate from the answer: the
# test cannot pass without that candidate doing the work.
#
# Everything runs in three network namespaces this script creates, on private addresses:
#
#   ns B (browser "alice")        ns R (router)                     ns N (node + browser "bob")
#   10.78.0.2 ── veth ── 10.78.0.1                     10.78.1.1 ── veth ── 10.78.1.2
#                     nftables: UDP between 10.78.0.0/24 and        lodge: HTTP 8080, media 50000
#                     10.78.1.0/24 dropped (both ways)              (UDP, and TCP for ICE-TCP)
#
# Needs root (namespaces, nftables), nftables, chromium, node (scripts/setup.sh installs them),
# and a built `lodge` (LODGE_BIN, default target/debug/lodge).
# OUT=<dir> keeps the logs and the measured figures (figures.json); default a temp dir.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BIN="${LODGE_BIN:-$ROOT/target/debug/lodge}"
# lodge refuses LODGE_* variables it does not know: this one is ours.
unset LODGE_BIN
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
[ "$(id -u)" -eq 0 ] || { echo "tests/ice-tcp: needs root (network namespaces, nftables)"; exit 1; }
for c in nft ip ss chromium node curl; do
  command -v "$c" >/dev/null || { echo "tests/ice-tcp: $c is missing (run scripts/setup.sh)"; exit 1; }
done
[ -x "$BIN" ] || { echo "tests/ice-tcp: no lodge binary at $BIN (cargo build --bin lodge)"; exit 1; }

# B (browser) ── R (router) ── N (node) on 10.78.0.0/24 and 10.78.1.0/24; removed at exit.
. "$ROOT/tests/lib/netns.sh"
netns_three itcp 78

HTTP=10.78.1.2:8080
# ICE-TCP is on by default; said here so the test reads as what it tests. Two media workers
# (ports 50000 and 50001, each with its TCP listener) whatever the machine: the call's room is
# on one of them and the page checks the answer names it.
WORKERS=2
ip netns exec "$N" "$BIN" serve --data-dir "$OUT/data" --http-listen "$HTTP" \
  --media-listen 10.78.1.2:50000 --public-ip 10.78.1.2 --log info,lodge_sfu=debug \
  --registrations-per-ip-per-hour 1000 --ice-tcp true --media-workers $WORKERS >"$OUT/lodge.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do ip netns exec "$B" curl -fs "http://$HTTP/readyz" >/dev/null && break; sleep 0.1; done
ip netns exec "$B" curl -fsS "http://$HTTP/readyz" >/dev/null
# The node listens on TCP at each media worker's port.
for p in 50000 50001; do
  ip netns exec "$N" ss -Hltn "sport = :$p" | grep -q "$p" || { echo "no TCP listener on media port $p"; exit 1; }
done

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
table inet lodge_icetcp {
  chain forward {
    type filter hook forward priority 0; policy accept;
    ip saddr 10.78.0.0/24 ip daddr 10.78.1.0/24 meta l4proto udp counter drop
    ip saddr 10.78.1.0/24 ip daddr 10.78.0.0/24 meta l4proto udp counter drop
  }
}
NFT
SH
cat >"$OUT/firewall-drops" <<SH
#!/bin/sh
# UDP packets dropped so far (both rules).
ip netns exec $R nft list table inet lodge_icetcp | awk '/counter packets/ { for (i = 1; i < NF; i++) if (\$i == "packets") n += \$(i + 1) } END { print n + 0 }'
SH
chmod +x "$OUT/firewall-up" "$OUT/firewall-drops"

cd "$ROOT/tests/browser"
[ -d node_modules/playwright-core ] || npm ci --no-audit --no-fund --loglevel=error
cd "$ROOT/tests/ice-tcp"
if ! ip netns exec "$N" env LODGE_URL="http://$HTTP" CHROMIUM_B="$OUT/chromium-b" \
    FIREWALL_UP="$OUT/firewall-up" FIREWALL_DROPS="$OUT/firewall-drops" FIGURES="$OUT/figures.json" \
    MEDIA_WORKERS="$WORKERS" \
    timeout 180 node ice-tcp.test.mjs; then
  echo "---- lodge log (last 40 lines) ----"; tail -40 "$OUT/lodge.log"
  exit 1
fi
# The node's side of it: TCP connections were accepted on the media port.
grep -Eq 'address learned from STUN.*transport="?tcp' "$OUT/lodge.log" \
  || { echo "the node's log shows no STUN check over TCP"; tail -40 "$OUT/lodge.log"; exit 1; }
echo "tests/ice-tcp: passed; figures in $OUT/figures.json"
