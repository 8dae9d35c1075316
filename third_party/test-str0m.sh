#!/usr/bin/env bash
# Run str0m's own unit tests (`cargo test --lib`, 879 of them) on the patched sources in
# third_party/str0m. The vendored manifest has no dev-dependencies, so this builds a scratch copy
# with the crates.io manifest, minus what the lib tests do not use and this registry lacks
# (the openssl/rust-crypto/apple/windows backends, the netem, pcap and rouille dev-dependencies).
# Not part of CI: it compiles str0m and aws-lc a second time (about 5 minutes on 2 cores).
#
# Usage: third_party/test-str0m.sh [test-name-filter]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cargo fetch --manifest-path "$ROOT/Cargo.toml" >/dev/null
find_crate() {
  find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -maxdepth 2 -type d -name 'str0m-0.25.0' | head -1
}
CRATE="$(find_crate)"
if [ -z "$CRATE" ]; then
  # The workspace uses the vendored copy, so the crates.io release (its manifest and docs) is
  # fetched once through a scratch manifest.
  FETCH="$(mktemp -d)"
  mkdir -p "$FETCH/src" && : > "$FETCH/src/lib.rs"
  printf '[package]\nname = "fetch-str0m"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\nstr0m = "=0.25.0"\n[workspace]\n' > "$FETCH/Cargo.toml"
  (cd "$FETCH" && cargo fetch >/dev/null) && (cd "$FETCH" && cargo metadata --format-version 1 >/dev/null)
  rm -rf "$FETCH"
  CRATE="$(find_crate)"
fi
[ -n "$CRATE" ] || { echo "str0m 0.25.0 is not in cargo's registry cache"; exit 1; }
WORK="${STR0M_TEST_DIR:-/tmp/lodge-str0m-test}"
rm -rf "$WORK/crate"; mkdir -p "$WORK/crate"
cp -r "$ROOT/third_party/str0m/src" "$WORK/crate/"
cp -r "$CRATE/Cargo.toml" "$CRATE/README.md" "$CRATE/docs" "$WORK/crate/"
python3 - "$WORK/crate/Cargo.toml" <<'PY'
import re, sys
p = sys.argv[1]
drop = ['str0m-openssl', 'str0m-rust-crypto', 'str0m-apple-crypto', 'str0m-wincrypto',
        'netem', 'pcap-file', 'rouille', '[[example]]', '[[test]]']
blocks = re.split(r'\n(?=\[)', open(p).read())
s = '\n'.join(b for b in blocks if not any(d in b.split('\n', 1)[0] for d in drop))
for feat in ['openssl', 'openssl-dimpl', 'rust-crypto', 'apple-crypto', 'wincrypto',
             'wincrypto-dimpl', 'vendored']:
    s = re.sub(r'\n%s = \[[^\]]*\]' % re.escape(feat), '', s)
s = s.replace('examples = ["rouille/rustls"]', 'examples = []') + '\n[workspace]\n'
open(p, 'w').write(s)
PY
cd "$WORK/crate"
CARGO_TARGET_DIR="$WORK/target" cargo test --lib -- "${1:-}"
