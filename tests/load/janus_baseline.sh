#!/usr/bin/env bash
# Lodge against Janus, side by side, under identical load: the same `lodge-load voice` scenario
# (N callers in C channels, one speaker per channel so neither server's slot policy matters, real
# Opus speech in talk spurts) runs first against a Lodge node, then against a Janus VideoRoom
# (Debian's `janus`, audio-only rooms, HTTP API). Both servers and the generator run inside a
# private network namespace this script creates (`unshare -n`) with a veth pair whose addresses
# (10.77.0.0/24) exist only inside it: Janus will not carry media over 127.0.0.1. Each server's
# CPU seconds come from /proc/<pid>/stat over the same measurement window, divided by the RTP
# packets the generator's callers received in that window (counted the same way for both).
#
#   tests/load/janus_baseline.sh                      # 200 callers, 20 channels, 30 s, release
#   CALLERS=500 CHANNELS=50 DURATION=60 tests/load/janus_baseline.sh
#   SMOKE=1 tests/load/janus_baseline.sh              # CI: 8 callers, debug build, strict
#
# Debugging Janus: JANUS_DEBUG_LEVEL=7 JANUS_ARGS=-l (libnice too); its log is $OUT/janus.log.
# Output: a Markdown comparison on stdout and in $OUT/baseline.md (default target/janus-baseline),
# with each run's full report in $OUT/lodge and $OUT/janus.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
# The load generator registers and connects from one address: lift the per-address limits.
export LODGE_REGISTRATIONS_PER_IP_PER_HOUR=1000000 LODGE_MAX_HTTP_CONNECTIONS_PER_IP=0

if [ "${JANUS_BASELINE_NETNS:-}" != "1" ]; then
  command -v janus >/dev/null || {
    echo "janus is not installed: apt-get install -y janus (scripts/setup.sh does it)"; exit 1; }
  command -v unshare >/dev/null && command -v ip >/dev/null || {
    echo "needs unshare (util-linux) and ip (iproute2)"; exit 1; }
  if [ "${SMOKE:-}" = "1" ]; then PROFILE=debug; else PROFILE="${PROFILE:-release}"; fi
  if [ -z "${NODE_BIN:-}" ] || [ -z "${LOAD_BIN:-}" ]; then
    if [ "$PROFILE" = release ]; then
      (cd "$ROOT" && cargo build -q --release -p lodge-signaling -p lodge-loadtest)
    else
      (cd "$ROOT" && cargo build -q -p lodge-signaling -p lodge-loadtest)
    fi
  fi
  export NODE_BIN="${NODE_BIN:-$ROOT/target/$PROFILE/lodge}"
  export LOAD_BIN="${LOAD_BIN:-$ROOT/target/$PROFILE/lodge-load}"
  export JANUS_BASELINE_NETNS=1
  exec unshare -n "$0" "$@"
fi

# ---- inside the private network namespace ----
SMOKE="${SMOKE:-}"
if [ "$SMOKE" = "1" ]; then
  CALLERS="${CALLERS:-8}" CHANNELS="${CHANNELS:-2}" DURATION="${DURATION:-6}" JOIN_RATE="${JOIN_RATE:-20}"
else
  CALLERS="${CALLERS:-200}" CHANNELS="${CHANNELS:-20}" DURATION="${DURATION:-30}" JOIN_RATE="${JOIN_RATE:-50}"
fi
OUT="${OUT:-$ROOT/target/janus-baseline}"
SERVER=10.77.0.1
CALLER=10.77.0.2
TMP="$(mktemp -d)"
mkdir -p "$OUT"
ip link set lo up
ip link add lodge-s type veth peer name lodge-c
ip addr add "$SERVER/24" dev lodge-s
ip addr add "$CALLER/24" dev lodge-c
ip link set lodge-s up
ip link set lodge-c up
# Both ends live in this one namespace. Janus sends from its veth end, so the packet arrives on
# the other end with a source address that is local here: Linux refuses such ARP requests and
# datagrams by default. Static neighbours and accept_local let them through.
ip neigh replace "$CALLER" lladdr "$(ip -br link show lodge-c | awk '{print $3}')" dev lodge-s nud permanent
ip neigh replace "$SERVER" lladdr "$(ip -br link show lodge-s | awk '{print $3}')" dev lodge-c nud permanent
for dev in all lodge-s lodge-c; do
  echo 1 >"/proc/sys/net/ipv4/conf/$dev/accept_local"
  echo 0 >"/proc/sys/net/ipv4/conf/$dev/rp_filter"
done

PID=""
stop_server() {
  if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=""; fi
}
trap 'stop_server; rm -rf "$TMP"' EXIT

load() {  # load <target> <url> <out dir>
  local strict=()
  [ "$SMOKE" = "1" ] && strict=(--strict)
  "$LOAD_BIN" voice --target "$1" --url "$2" -n "$CALLERS" -c "$CHANNELS" -s 1 --slots 1 \
    -d "$DURATION" --join-rate "$JOIN_RATE" --probes 0.05 --source-ip "$CALLER" \
    --server-pid "$PID" "${strict[@]}" --out "$3"
}

TARGETS="${TARGETS:-lodge janus}"  # e.g. TARGETS=lodge to profile one side alone

# 1. Lodge.
if [[ " $TARGETS " == *" lodge "* ]]; then
"$NODE_BIN" serve --data-dir "$TMP/lodge" --http-listen "$SERVER:8080" \
  --media-listen "$SERVER:3478" --public-ip "$SERVER" --log warn \
  --rate-limit-route 100000 --rate-limit-global 100000 >"$OUT/lodge.log" 2>&1 &
PID=$!
for _ in $(seq 1 100); do curl -fs "http://$SERVER:8080/readyz" >/dev/null && break; sleep 0.1; done
echo "== Lodge: $CALLERS callers, $CHANNELS channels, 1 speaker each, $DURATION s"
if ! load lodge "http://$SERVER:8080" "$OUT/lodge" >"$TMP/lodge.md"; then
  tail -30 "$OUT/lodge.log"; exit 1
fi
stop_server
fi

if [[ " $TARGETS " == *" janus "* ]]; then
# 2. Janus: only the VideoRoom plugin and the HTTP transport, ICE on the veth only.
J="$TMP/janus"
mkdir -p "$J/plugins" "$J/transports"
ln -s /usr/lib/x86_64-linux-gnu/janus/plugins/libjanus_videoroom.so "$J/plugins/"
ln -s /usr/lib/x86_64-linux-gnu/janus/transports/libjanus_http.so "$J/transports/"
cat >"$J/janus.jcfg" <<EOF
general: {
  configs_folder = "$J"
  plugins_folder = "$J/plugins"
  transports_folder = "$J/transports"
  debug_level = ${JANUS_DEBUG_LEVEL:-3}
}
media: { rtp_port_range = "20000-60000" }
nat: { ice_enforce_list = "lodge-s" }
EOF
cat >"$J/janus.transport.http.jcfg" <<EOF
general: { base_path = "/janus", http = true, port = 8088, https = false, ip = "$SERVER" }
admin: { admin_http = false }
EOF
echo 'general: { }' >"$J/janus.plugin.videoroom.jcfg"
janus -C "$J/janus.jcfg" -F "$J" -i "$SERVER" -o ${JANUS_ARGS:-} >"$OUT/janus.log" 2>&1 &
PID=$!
for _ in $(seq 1 100); do
  curl -fs -X POST -d '{"janus":"info","transaction":"ready"}' "http://$SERVER:8088/janus" >/dev/null && break
  sleep 0.1
done
echo "== Janus $(janus --version 2>/dev/null | head -1 | sed 's/^Janus version: //'): same load"
if ! load janus "http://$SERVER:8088/janus" "$OUT/janus" >"$TMP/janus.md"; then
  tail -30 "$OUT/janus.log"; exit 1
fi
stop_server
fi
[ "$TARGETS" = "lodge janus" ] || exit 0

python3 - "$OUT" "$CALLERS" "$CHANNELS" "$DURATION" "${SMOKE:-0}" <<'PY'
import json, sys
out, callers, channels, duration, smoke = sys.argv[1:]
runs = {t: json.load(open(f"{out}/{t}/report.json")) for t in ("lodge", "janus")}
def row(name, f):
    return f"| {name} | " + " | ".join(f(runs[t]) for t in ("lodge", "janus")) + " |"
def num(v, fmt):
    return "–" if v is None else format(v, fmt)
srv = {t: r["server"] or {} for t, r in runs.items()}
lines = [
    f"# Lodge vs Janus VideoRoom: {callers} callers, {channels} channels, 1 speaker each, {duration} s",
    "",
    "| measure | Lodge | Janus |", "|---|---|---|",
    row("callers with media", lambda r: f"{r['connected']} / {r['callers']}"),
    row("RTP delivered to callers in the window", lambda r: str((r['server'] or {}).get('rtp_delivered'))),
    row("server CPU seconds in the window", lambda r: num((r['server'] or {}).get('cpu_seconds'), '.2f')),
    row("server CPU µs per delivered packet", lambda r: num((r['server'] or {}).get('cpu_us_per_delivered_packet'), '.2f')),
    row("loss seen by listeners, %", lambda r: f"{r['loss_pct']:.3f}"),
    row("mouth-to-ear p50 / p99, ms", lambda r: "–" if not r['mouth_to_ear_ms'] else f"{r['mouth_to_ear_ms']['p50']:.1f} / {r['mouth_to_ear_ms']['p99']:.1f}"),
    row("errors", lambda r: str(len(r['errors']))),
]
l, j = (srv[t].get("cpu_us_per_delivered_packet") for t in ("lodge", "janus"))
ratio = l / j if l and j else None
lines += ["", f"**Lodge / Janus CPU per delivered packet: {num(ratio, '.2f')}** (goal ≤ 0.33)"]
md = "\n".join(lines)
print(md)
open(f"{out}/baseline.md", "w").write(md + "\n")
json.dump({"lodge": srv["lodge"], "janus": srv["janus"], "ratio": ratio}, open(f"{out}/baseline.json", "w"), indent=2)
if smoke == "1":
    for t, r in runs.items():
        assert r["connected"] == r["callers"], (t, r["connected"])
        assert r["loss_pct"] < 1.0, (t, r["loss_pct"])
        assert srv[t].get("rtp_delivered", 0) > 0 and srv[t].get("cpu_seconds") is not None, (t, srv[t])
    assert ratio is not None and ratio > 0
PY
