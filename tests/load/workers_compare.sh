#!/usr/bin/env bash
# The same voice crowd against a node with 1 media worker, then with 2 (or WORKERS="1 2 4"):
# node CPU per forwarded packet (its user/kernel split, and the media worker threads' share apart
# from signaling's), node-added delay, loss, mouth-to-ear,
# one table row per run.
#
# Usage: OUT=dir [N=2000] [C=100] [D=30] [WORKERS="1 2"] [PROFILE=release] [NODE_FLAGS=...] \
#          [PERF=1] tests/load/workers_compare.sh
# PERF=1 (needs `perf` and the right to profile the node) samples the media threads' stacks and
# adds how much of their time is the loopback delivery into the callers' sockets: on loopback
# the kernel runs the receiver's side inside the sender's sendmmsg, which a real NIC would not
# charge to the node.
# Builds nothing: run `cargo build --release --bin lodge --bin lodge-load` first (PROFILE=debug
# for a quick look). Node and generator share this machine; the table says how busy it was.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
OUT="${OUT:?set OUT to a directory for the reports}"
N="${N:-2000}"; C="${C:-100}"; D="${D:-30}"; WORKERS="${WORKERS:-1 2}"
PROFILE="${PROFILE:-release}"
BIN="$ROOT/target/$PROFILE"
for b in lodge lodge-load; do
  [ -x "$BIN/$b" ] || { echo "workers_compare: no $BIN/$b (cargo build --profile $PROFILE --bin $b)"; exit 1; }
done
mkdir -p "$OUT"
# shellcheck source=../lib/ports.sh
. "$ROOT/tests/lib/ports.sh"
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT

ROWS="$OUT/rows.md"
: >"$ROWS"
for w in $WORKERS; do
  HP=$(free_port); MP=$(free_media 127.0.0.1 "$w")
  DATA="$(mktemp -d)"
  # shellcheck disable=SC2086
  "$BIN/lodge" serve --data-dir "$DATA" --http-listen "127.0.0.1:$HP" --media-listen "127.0.0.1:$MP" \
    --media-workers "$w" --rate-limit-route 100000 --rate-limit-global 100000 \
    --registrations-per-ip-per-hour 1000000 --max-http-connections-per-ip 0 --log warn \
    ${NODE_FLAGS:-} >"$OUT/lodge-w$w.log" 2>&1 &
  PID=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$HP/readyz" >/dev/null && break; sleep 0.1; done
  echo "== $w media worker(s): $N callers in $C channels, $D s"
  # The node's user and kernel CPU ticks every 2 s, to split its CPU over the last D seconds:
  # the whole process, and its media worker threads (lodge-media-*) apart from the rest.
  CPU="$OUT/cpu-w$w.txt"; : >"$CPU"
  ( while [ -e "/proc/$PID/stat" ]; do
      media=$(cat /proc/"$PID"/task/*/stat 2>/dev/null | awk '/\(lodge-media-/ {u += $14; k += $15} END {print u + 0, k + 0}')
      echo "$(date +%s.%N) $(awk '{print $14, $15}' "/proc/$PID/stat") $media" >>"$CPU"; sleep 2
    done ) &
  SAMPLER=$!
  PERFPID=
  if [ "${PERF:-0}" = 1 ]; then
    TIDS=$(for t in /proc/"$PID"/task/*; do grep -q '^lodge-media' "$t/comm" && basename "$t"; done | paste -sd, -)
    perf record -q -g -F 499 -t "$TIDS" -o "$OUT/perf-w$w.data" >/dev/null 2>&1 &
    PERFPID=$!
  fi
  "$BIN/lodge-load" voice --url "http://127.0.0.1:$HP" -n "$N" -c "$C" -s 1 -d "$D" --join-rate 100 \
    --probes 0.02 --server-pid "$PID" --out "$OUT/w$w"
  kill "$SAMPLER" 2>/dev/null || true
  LOOP=-
  if [ -n "$PERFPID" ]; then
    kill -INT "$PERFPID" 2>/dev/null || true; wait "$PERFPID" 2>/dev/null || true
    # Share of the window's media-thread samples spent delivering to the receivers (the kernel's
    # receive path, run from the node's sends on loopback).
    LOOP=$(perf script -i "$OUT/perf-w$w.data" -F time,ip,sym 2>/dev/null | python3 -c '
import sys
d = float(sys.argv[1]); samples = []; t = None; rx = False
for line in sys.stdin:
    if not line.strip():
        if t is not None: samples.append((t, rx))
        t = None; rx = False
    elif t is None:
        t = float(line.split()[0].rstrip(":"))
    elif "net_rx_action" in line or "__netif_receive_skb" in line:
        rx = True
if t is not None: samples.append((t, rx))
end = samples[-1][0]; win = [r for (x, r) in samples if x >= end - d]
print(f"{sum(win) / len(win):.3f}" if win else "-")' "$D")
  fi
  kill -INT "$PID"; wait "$PID" 2>/dev/null || true; PID=
  rm -rf "$DATA"
  python3 - "$OUT/w$w/report.json" "$w" "$CPU" "$D" "$LOOP" >>"$ROWS" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); s = r["server"]; fd = s["forward_delay_window"]
m2e = r["mouth_to_ear_ms"]
# User share of the node's CPU over the last D seconds of the run (the measurement window).
rows = [tuple(map(float, l.split())) for l in open(sys.argv[3]) if len(l.split()) == 5]
end = rows[-1][0]
win = [x for x in rows if x[0] >= end - float(sys.argv[4])]
du, ds = win[-1][1] - win[0][1], win[-1][2] - win[0][2]
mu, ms = win[-1][3] - win[0][3], win[-1][4] - win[0][4]
user = du / (du + ds) if du + ds else float("nan")
per = s["cpu_us_per_forwarded_packet"]
# The media threads' share of the process's CPU (ticks), as µs per forwarded packet.
media = (mu + ms) / (du + ds) if du + ds else float("nan")
muser = mu / (mu + ms) if mu + ms else float("nan")
loop = f"{per * media * float(sys.argv[5]):.1f} µs" if sys.argv[5] != "-" else "-"
print(f"| {sys.argv[2]} | {r['connected']} / {r['callers']} | {r['loss_pct']:.3f}% "
      f"| {s['rtp_forwarded'] / s['window_s'] / 1000:.1f} k | {per:.1f} µs "
      f"({100 * s['cpu_seconds'] / s['window_s']:.0f}% of a core) | {per * user:.1f} / {per * (1 - user):.1f} µs "
      f"| {per * media:.1f} µs ({per * media * muser:.1f} / {per * media * (1 - muser):.1f}) | {loop} "
      f"| {s['machine_busy_pct']:.0f}% "
      f"| {fd['p50_ms']:.2f} / {fd['p99_ms']:.2f} ms ({fd['within_1ms_pct']:.1f}% ≤ 1 ms) "
      f"| {m2e['p50']:.1f} / {m2e['p99']:.1f} ms |")
PY
done
{
  echo "| media workers | connected | listener loss | forwarded pps | node CPU / fwd packet | of which user / kernel | media threads' share (user / kernel) | of which loopback delivery (PERF=1) | machine busy | node-added delay p50 / p99 | mouth-to-ear p50 / p99 |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|"
  cat "$ROWS"
} | tee "$OUT/table.md"
