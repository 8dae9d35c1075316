#!/usr/bin/env bash
# Run every cargo-fuzz target of fuzz/ for a bounded time, starting from its committed seed
# corpus (fuzz/corpus/<target>/). Fails on a crash, a leak or a timeout and prints the path of
# the reproducer (fuzz/artifacts/<target>/...).
#
# Usage: ./scripts/fuzz.sh [target ...]        (default: every [[bin]] of fuzz/Cargo.toml)
#   FUZZ_SECONDS   time per target (default 60)
#   FUZZ_JOBS      targets run at once (default 2: one per core of the CI machine)
# Needs the nightly toolchain and cargo-fuzz (./scripts/setup.sh installs both).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${FUZZ_SECONDS:-60}"
jobs="${FUZZ_JOBS:-2}"

if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
[ ${#targets[@]} -gt 0 ] || { echo "fuzz: no targets in fuzz/Cargo.toml" >&2; exit 1; }

t0=$SECONDS
echo "fuzz: building ${#targets[@]} targets (nightly, sanitizer + coverage instrumentation)"
cargo +nightly fuzz build
echo "fuzz: built in $((SECONDS - t0)) s"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
run_one() {
  local t="$1"
  mkdir -p "$work/$t" "corpus/$t" "artifacts/$t"
  # New inputs go to the scratch corpus (first directory); the committed seeds are only read.
  if cargo +nightly fuzz run "$t" "$work/$t" "corpus/$t" -- \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      >"$work/$t.log" 2>&1; then
    local execs
    execs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$work/$t.log" | grep -o '[0-9]*$' || echo '?')"
    echo "fuzz: $t ok ($execs runs in ${secs} s)"
  else
    echo "fuzz: $t FAILED" >&2
    tail -n 40 "$work/$t.log" >&2
    grep -h -o 'Test unit written to [^ ]*' "$work/$t.log" | sed 's|Test unit written to |fuzz: reproducer: fuzz/|' >&2 || true
    echo "fuzz: replay with: cd fuzz && cargo +nightly fuzz run $t <reproducer>" >&2
    return 1
  fi
}

t1=$SECONDS
for t in "${targets[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do
    sleep 1
  done
  ( if run_one "$t"; then echo ok >"$work/$t.status"; else echo failed >"$work/$t.status"; fi ) &
done
wait
failed=0
for t in "${targets[@]}"; do
  [ "$(cat "$work/$t.status" 2>/dev/null)" = ok ] || failed=1
done
echo "fuzz: ran ${#targets[@]} targets for ${secs} s each, $jobs at a time, in $((SECONDS - t1)) s"
exit "$failed"
