#!/usr/bin/env bash
# Fuzz smoke run: builds every cargo-fuzz target of fuzz/ (one build) and runs each for a few
# seconds on its committed seed corpus (fuzz/seeds/TARGET), so a regression (a panic or a broken
# property) fails the test command. The long runs (>= 10 million executions per target) and
# their figures are in docs/security.md, "Fuzzing".
#
# Needs the nightly toolchain (cargo-fuzz builds with -Z flags; `rustup toolchain list`) and
# cargo-fuzz, which is installed with `cargo install --locked cargo-fuzz` when missing (once per
# machine). Later runs reuse ~/.cargo/bin/cargo-fuzz and fuzz/target.
# FUZZ_SECONDS (default 5) is the time per target.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "fuzz: no nightly toolchain (rustup toolchain list); cargo-fuzz needs one" >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz (cargo install --locked cargo-fuzz; a few minutes, once)"
  cargo install --locked --quiet cargo-fuzz
fi
echo "$(cargo fuzz --version), $(cargo +nightly --version)"

# The same flags as the long runs (docs/security.md), so this build is the one they reuse.
# The smoke runs use an unoptimised build (`--dev`, no optimiser passes to pay for on a fresh
# machine): 5 s per target only needs to replay the seeds and explore a little. The long runs
# in docs/security.md use the release build.
flags=(-s none --dev)
secs="${FUZZ_SECONDS:-5}"
started=$SECONDS
cargo +nightly fuzz build "${flags[@]}"
echo "fuzz: built in $((SECONDS - started)) s"

for target in $(cargo +nightly fuzz list); do
  # New inputs go to a scratch corpus; the seeds are only read.
  scratch="fuzz/target/smoke-corpus/$target"
  mkdir -p "$scratch"
  log="fuzz/target/smoke-$target.log"
  if ! cargo +nightly fuzz run "${flags[@]}" "$target" "$scratch" "fuzz/seeds/$target" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "fuzz: $target FAILED; the input is in fuzz/artifacts/$target/ (reproduce with" \
      "cargo +nightly fuzz run ${flags[*]} $target fuzz/artifacts/$target/<file>)" >&2
    exit 1
  fi
  runs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' || echo '?')
  echo "fuzz: $target ok ($runs executions in ${secs} s)"
done
echo "fuzz: all targets ok in $((SECONDS - started)) s"
