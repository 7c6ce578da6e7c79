#!/usr/bin/env bash
# Runs every check and test of voxmachina on a fresh Debian machine with a Rust toolchain.
# Installs what it needs itself. Usage: bash tools/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "toolchain components"
rustup component add rustfmt clippy >/dev/null 2>&1 || true

step "format"
cargo fmt --all -- --check

step "lint"
cargo clippy --all-targets --locked -- -D warnings

step "tests"
if [ ! -d ../shared/fixtures ]; then
  echo "warning: ../shared/fixtures not found; the media fixture tests will fail" >&2
fi
cargo test --locked --no-fail-fast 2>&1 | tee target/test-output.log
step "benchmarks compile"
cargo bench --locked --no-run >/dev/null

passed=$(grep -Eo '^test result: ok\. [0-9]+ passed' target/test-output.log | awk '{s+=$4} END {print s+0}')
echo
echo "all checks passed (${passed} tests)"
