#!/usr/bin/env bash
# Runs every check and test of voxmachina on a fresh Debian machine with a Rust toolchain.
# Installs what it needs itself. Usage: bash tools/test.sh
#
# Feature-specific steps live beside this file:
#   tools/setup.d/*.sh  sourced before the tests: install and start local engines, export their
#                       addresses (e.g. a local DynamoDB engine, nginx);
#   tools/check.d/*.sh  run after the tests: checks with real tools (systemd-analyze, nginx -t, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
export VOXMACHINA_ROOT="$PWD"

step() { printf '\n==> %s\n' "$*"; }
cleanup_hooks=()
on_exit() { for h in "${cleanup_hooks[@]}"; do eval "$h" || true; done; }
trap on_exit EXIT

step "toolchain components"
rustup component add rustfmt clippy >/dev/null 2>&1 || true

step "format"
cargo fmt --all -- --check

step "lint (also type-checks tests and benchmarks)"
cargo clippy --workspace --all-targets --locked -- -D warnings

for f in tools/setup.d/*.sh; do
  [ -e "$f" ] || continue
  step "setup: $f"
  # shellcheck disable=SC1090
  source "$f"
done

step "tests"
mkdir -p target
cargo test --workspace --locked --no-fail-fast 2>&1 | tee target/test-output.log

for f in tools/check.d/*.sh; do
  [ -e "$f" ] || continue
  step "check: $f"
  bash "$f"
done

passed=$(grep -Eo '^test result: ok\. [0-9]+ passed' target/test-output.log | awk '{s+=$4} END {print s+0}')
echo
echo "all checks passed (${passed} tests)"
