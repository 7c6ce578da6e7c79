#!/usr/bin/env bash
# tools/install.sh into a throw-away root with the debug binary: files land where the unit
# expects them, credentials are 0600, the config reads /etc/voxmachina/prompts, `voxmachina
# check` passes on the installed profiles, and a second run changes no credential.
set -euo pipefail
cd "$(dirname "$0")/../.."

bin="${VOXMACHINA_BIN:-$PWD/target/debug/voxmachina}"
[ -x "$bin" ] || cargo build --locked --quiet
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
fail() { echo "install check: $*" >&2; exit 1; }

OPENAI_API_KEY=sk-install-check OPENAI_WEBHOOK_SECRET=whsec_aW5zdGFsbC1jaGVjaw== \
  bash tools/install.sh --root "$root" --binary "$bin" --host voice.test.invalid >/dev/null
for f in usr/local/bin/voxmachina usr/local/share/doc/voxmachina/QUICKSTART.md etc/voxmachina/voxmachina.toml etc/voxmachina/prompts/default.toml \
         etc/systemd/system/voxmachina.service etc/nginx/sites-available/voxmachina \
         etc/nginx/sites-enabled/voxmachina; do
  [ -e "$root/$f" ] || fail "missing /$f"
done
for f in openai_api_key openai_webhook_secret admin_token; do
  [ "$(stat -c %a "$root/etc/voxmachina/$f")" = 600 ] || fail "/etc/voxmachina/$f is not 0600"
done
grep -qx 'dir = "/etc/voxmachina/prompts"' "$root/etc/voxmachina/voxmachina.toml" \
  || fail "prompts.dir is not /etc/voxmachina/prompts"
grep -q 'server_name voice.test.invalid;' "$root/etc/nginx/sites-available/voxmachina" \
  || fail "host name not substituted in the nginx site"
grep -q 'voice.example.com' "$root/etc/nginx/sites-available/voxmachina" \
  && fail "placeholder host left in the nginx site"
for f in $(grep -v '^\s*#' systemd/voxmachina.service | grep -o '/etc/voxmachina/[a-z_.]*' | sort -u); do
  [ -e "$root$f" ] || fail "the unit names $f, which install.sh did not create"
done
token=$(cat "$root/etc/voxmachina/admin_token")
OPENAI_API_KEY=sk-other VOXMACHINA_ADMIN_TOKEN=other \
  bash tools/install.sh --root "$root" --binary "$bin" >/dev/null
[ "$(cat "$root/etc/voxmachina/openai_api_key")" = sk-install-check ] || fail "rerun overwrote a credential"
[ "$(cat "$root/etc/voxmachina/admin_token")" = "$token" ] || fail "rerun overwrote the admin token"
echo "tools/install.sh: layout, modes and idempotence ok"
