#!/usr/bin/env bash
# Lodge's whole test suite: unit, simulated-network, real-socket and real-browser tests.
# Usage: ./scripts/test.sh          (installs missing apt/npm packages first)
set -euo pipefail
cd "$(dirname "$0")/.."
# Each step prints the time since the start; on exit (pass or fail) every finished step's
# duration is listed, so the suite's time against CI's 90-minute budget can be watched.
STEP_NAME=""
STEP_START=$SECONDS
STEP_TIMES=()
step() {
  if [ -n "$STEP_NAME" ]; then
    STEP_TIMES+=("$(printf '%5ds  %s' "$((SECONDS - STEP_START))" "${STEP_NAME:0:100}")")
  fi
  STEP_NAME="$*"
  STEP_START=$SECONDS
  printf '\n==> [%dm%02ds] %s\n' "$((SECONDS / 60))" "$((SECONDS % 60))" "$*"
}
step_times() {
  local rc=$?
  printf '\n==> step durations (%d s in all, exit %d; the last step listed is the one that was running)\n' "$SECONDS" "$rc"
  printf '%s\n' "${STEP_TIMES[@]}"
  printf '%5ds  %s\n' "$((SECONDS - STEP_START))" "${STEP_NAME:0:100}"
}
trap step_times EXIT

step "setup (apt: chromium, nodejs, python3-venv, coturn, nftables; npm: playwright-core, discord.js + @discordjs/voice; pip: discord.py)"
./scripts/setup.sh

step "formatting (cargo fmt)"
cargo fmt --all -- --check

step "lints (cargo clippy, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings
# lodge-client's optional sound devices (cpal over ALSA), off in the workspace build.
cargo clippy -p lodge-client --features sound-card --all-targets --locked -- -D warnings

step "build (debug, all targets)"
cargo build --workspace --all-targets --locked

step "the sfu core builds without tokio (sans-IO is enforced by the dependency graph)"
cargo build -p lodge-sfu --lib --no-default-features --locked

step "unit, simulated-network and real-socket tests (the Redis-backed shared state against a throwaway redis-server; songbird_mixed drives headless Chromium, which setup installed)"
TEST_REDIS_URL="$(./scripts/redis.sh)"
export TEST_REDIS_URL
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
  cargo test --workspace --doc --locked
else
  cargo test --workspace --locked
fi

step "the storage-facing suites again, on PostgreSQL (a throwaway cluster on 127.0.0.1)"
PG_URL="$(./scripts/postgres.sh)"
if command -v cargo-nextest >/dev/null 2>&1; then
  # --workspace with a filter (not -p): the same feature resolution as the build above, no rebuild.
  TEST_POSTGRES_URL="$PG_URL" cargo nextest run --workspace --locked --no-fail-fast -E 'package(lodge-chat) | package(lodge-signaling)'
else
  TEST_POSTGRES_URL="$PG_URL" cargo test -p lodge-chat -p lodge-signaling --locked
fi

step "fuzzing: every fuzz/ target built once and run ${FUZZ_SECONDS:-60} s from its seed corpus (nightly, cargo-fuzz)"
./scripts/fuzz.sh

step "lodge-client's sound devices: speakers and microphone on ALSA's null device (no sound card needed)"
cargo test -p lodge-client --features sound-card --locked --test sound_card

step "benchmarks compile and run once (criterion test mode)"
cargo test -p lodge-sfu --bench forward --locked
cargo test -p lodge-jitter --bench insert_pull --locked

step "real browsers: three headless Chromium clients in one voice channel"
./tests/browser/run.sh

step "HTTPS origin: Chromium opens the web client at https://lodge.test (a test CA, a name mapped in a private netns), gets the microphone, joins a call"
OUT="$(mktemp -d)" ./tests/https/run.sh

step "TURN: a Chromium caller whose UDP is firewalled joins through coturn over TCP and TLS (namespaces, nftables); fails without the relay"
OUT="$(mktemp -d)" ./tests/turn/run.sh

step "ICE-TCP: a Chromium caller whose UDP is firewalled joins over TCP to the node's media port, no relay (namespaces, nftables); fails without the node's TCP candidate"
OUT="$(mktemp -d)" ./tests/ice-tcp/run.sh

step "real client library: an unmodified discord.py bot (login, events, resume)"
./tests/discordpy/run.sh

step "native voice (Discord UDP mode): unmodified discord.js + @discordjs/voice bots over WSS (a test CA); one plays a tone, the other decodes it; DAVE on (end-to-end encrypted), DAVE off with AES-GCM and with XChaCha"
OUT="$(mktemp -d)" ./tests/native-voice/run.sh

step "C client: client/examples/c/play_wav.c built against lodge_client.h joins a node's voice channel and plays a WAV; lodge-voice hears its tone"
OUT="$(mktemp -d)" ./tests/c-client/run.sh

step "lodge-client in a crowded call: a lodge-load crowd, headless Chromium and lodge-voice in one channel; tones both ways, mute, deafen, a new source port, a clean leave"
OUT="$(mktemp -d)" ./tests/client-crowd/run.sh

step "NetEq side by side, smoke run: the same speech through two impairment profiles to headless Chromium and to lodge-client; report + plot"
OUT="$(mktemp -d)" PROFILES="wired bursty_3" SECONDS_PER_PROFILE=10 ./tests/neteq/run.sh

step "playout evaluation smoke run: real speech, Opus, two profiles, report + plots"
./tests/load/playout_smoke.sh

step "voice load smoke test: 12 WebRTC callers in 2 channels, strict, sane report"
./tests/load/voice_smoke.sh

step "cluster: an origin and two edges in separate processes (trunks, placement, fan-out at the edge, refusals)"
./tests/cluster/run.sh

step "scale: three equal nodes on Redis and PostgreSQL (cross-node fan-out, one room per channel, a media node, a gateway node, Redis and PostgreSQL each failing, measured)"
OUT="$(mktemp -d)" ./tests/scale/run.sh

step "rolling restart: two nodes drained (SIGTERM) and restarted one after the other under 24 lodge-load WebRTC callers; every caller keeps media, per-caller gap p99 < 1 s"
OUT="$(mktemp -d)" ./tests/scale/rolling.sh

step "deployment manifests validate (kubernetes-validate, offline schemas)"
./deploy/k8s/validate.sh

step "Janus baseline smoke run: the same 8 callers against Lodge and a Janus VideoRoom in a private netns"
SMOKE=1 OUT="$(mktemp -d)" ./tests/load/janus_baseline.sh

step "chat load smoke test: every message reaches every session, no errors (SQLite, PostgreSQL)"
./tests/load/chat_smoke.sh
TEST_POSTGRES_URL="$PG_URL" ./tests/load/chat_smoke.sh

step "load generator across nodes: several URLs, voice shards and their exact merge"
./tests/load/cluster_load_smoke.sh

step "cluster measurements run small: chat fan-out alone / through the bus / on three nodes, Redis costs per operation"
PROFILE=debug M=100 R=10 D=5 ACCOUNTS=20 SENDERS=4 OUT="$(mktemp -d)" ./tests/load/cluster_bench.sh
SESSIONS=40 ./tests/load/redis_costs.sh

step "abuse suite: every attack class of the hardening issue against a release node, a legitimate client measured throughout"
OUT="$(mktemp -d)" ./tests/abuse/run.sh

step "Debian package: cargo deb, dpkg -i, the installed binary as its user with its configuration, /healthz, remove, purge"
./tests/package/run.sh

step "all tests passed"
