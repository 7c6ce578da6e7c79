#!/usr/bin/env bash
# The Amazon Connect Lambda binary is behind the `connect-lambda` cargo feature (so the controller
# does not pull in lambda_runtime); build-check it here so it cannot rot. Its handler logic is
# tested in the library (tests/connect.rs).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo clippy --locked --quiet --features connect-lambda --bin connect-lambda -- -D warnings
echo "connect-lambda: builds with --features connect-lambda, clippy clean"
