#!/usr/bin/env bash
# Install what Lodge's tests need on a fresh Debian machine (idempotent).
#   chromium         real-browser voice tests (headless)
#   nodejs, npm      drive Chromium with playwright-core; run the discord.js voice bots
#   curl, python3    the test runners; python3-venv for the discord.py test (pip: discord.py)
#   postgresql       the storage suites run a second time on PostgreSQL (scripts/postgres.sh)
#   redis-server     the shared state and bus of a cluster (scripts/redis.sh, TEST_REDIS_URL)
#   libopus-dev, pkg-config   the codec crate links the system libopus
#   espeak-ng        synthesises the speech sample of `lodge-load playout`
#   fonts-dejavu-core  the font of the playout report's PNG plots
#   janus, iproute2  the Janus VideoRoom baseline (tests/load/janus_baseline.sh) in a private netns
#   coturn, nftables, openssl  the TURN test (tests/turn/run.sh): a relay, a firewall, a test CA
#   libasound2-dev   ALSA headers for lodge-client's sound-card feature (cpal), linted and tested in CI
#   gcc (cc)         compiles the C client example against lodge_client.h (tests/c-client/run.sh)
# and, from the Rust registry/toolchain servers, what scripts/fuzz.sh needs:
#   the nightly toolchain (minimal profile) and cargo-fuzz
set -euo pipefail
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v python3 >/dev/null 2>&1 || need+=(python3)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1 || need+=(postgresql)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
pkg-config --exists opus 2>/dev/null || need+=(libopus-dev)
command -v espeak-ng >/dev/null 2>&1 || need+=(espeak-ng)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)
command -v janus >/dev/null 2>&1 || need+=(janus)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v turnserver >/dev/null 2>&1 || need+=(coturn)
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v cc >/dev/null 2>&1 || need+=(gcc libc6-dev)
pkg-config --exists alsa 2>/dev/null || need+=(libasound2-dev)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]} (apt)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y --no-install-recommends "${need[@]}" >/dev/null 2>&1 || {
    $SUDO apt-get update >/dev/null && $SUDO apt-get install -y --no-install-recommends "${need[@]}"
  }
fi
# Lints: CI runs clippy with warnings as errors.
if ! cargo clippy --version >/dev/null 2>&1; then
  echo "setup: installing clippy (rustup component)"
  rustup component add clippy
fi
# Fuzzing: cargo-fuzz builds with nightly-only sanitizer flags.
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "setup: installing the nightly toolchain (rustup, minimal profile)"
  rustup toolchain install nightly --profile minimal
fi
# The Debian package (tests/package/run.sh) is built with cargo-deb.
if ! command -v cargo-deb >/dev/null 2>&1; then
  echo "setup: installing cargo-deb (cargo install --locked)"
  cargo install --locked cargo-deb
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "setup: installing cargo-fuzz (cargo install --locked)"
  cargo install --locked cargo-fuzz
fi
cd "$(dirname "$0")/../tests/browser"
[ -d node_modules/playwright-core ] || npm ci --no-audit --no-fund --loglevel=error
cd ../native-voice
[ -d node_modules/@discordjs/voice ] || npm ci --no-audit --no-fund --loglevel=error
cd ../discordpy
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
