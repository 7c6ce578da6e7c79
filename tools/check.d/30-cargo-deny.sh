#!/usr/bin/env bash
# Supply-chain check: `cargo deny check licenses bans sources` against deny.toml.
# Installs cargo-deny with `cargo install --locked cargo-deny` when it is missing (once per
# machine; later runs reuse ~/.cargo/bin/cargo-deny).
#
# Not run: `cargo deny check advisories`. It needs the RustSec advisory database from GitHub,
# which this project's build machines cannot reach (see SECURITY.md); run it where GitHub is
# reachable before a release.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! cargo deny --version >/dev/null 2>&1; then
  echo "installing cargo-deny (cargo install --locked cargo-deny; takes a few minutes once)"
  cargo install --locked --quiet cargo-deny
fi
echo "$(cargo deny --version)"
cargo deny --log-level warn check --hide-inclusion-graph licenses bans sources
echo "cargo deny: licenses, bans and sources ok (advisories not checked: no RustSec access)"
