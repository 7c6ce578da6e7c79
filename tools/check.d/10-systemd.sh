#!/usr/bin/env bash
# Checks systemd/voxmachina.service with the real systemd tools (no running systemd needed):
#   systemd-analyze verify                  must print nothing and exit 0;
#   systemd-analyze security --offline=yes  overall exposure must be <= 1.5 (printed).
# Installs Debian's `systemd` package when systemd-analyze is missing.
# ExecStart= must name an executable for `verify`, so the unit is checked as a copy whose
# ExecStart points at the freshly built target/debug/voxmachina (or /bin/true without a build).
set -euo pipefail
cd "$(dirname "$0")/../.."

MAX_EXPOSURE=1.5

if ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "installing systemd (for systemd-analyze)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq systemd >/dev/null 2>&1 || {
    apt-get update -qq
    apt-get install -y -qq systemd >/dev/null
  }
fi

bin="${VOXMACHINA_BIN:-$PWD/target/debug/voxmachina}"
if [ ! -x "$bin" ]; then
  echo "note: $bin not built; verifying with ExecStart=/bin/true"
  bin=/bin/true
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sed "s|/usr/local/bin/voxmachina|$bin|" systemd/voxmachina.service >"$work/voxmachina.service"

out=$(systemd-analyze verify "$work/voxmachina.service" 2>&1) || {
  echo "systemd-analyze verify failed:"
  echo "$out"
  exit 1
}
if [ -n "$out" ]; then
  echo "systemd-analyze verify printed warnings:"
  echo "$out"
  exit 1
fi
echo "systemd-analyze verify: clean"

report=$(systemd-analyze security --offline=yes "$work/voxmachina.service" 2>&1 || true)
exposure=$(printf '%s\n' "$report" | sed -n 's/.*Overall exposure level for voxmachina.service: \([0-9.]*\).*/\1/p')
if [ -z "$exposure" ]; then
  echo "could not read the exposure level:"
  echo "$report"
  exit 1
fi
echo "systemd-analyze security exposure: $exposure (limit $MAX_EXPOSURE)"
if awk -v e="$exposure" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(e > m) }'; then
  printf '%s\n' "$report" | grep '✗' || true
  echo "exposure $exposure is above $MAX_EXPOSURE"
  exit 1
fi
