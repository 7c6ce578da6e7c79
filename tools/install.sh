#!/usr/bin/env bash
# Installs voxmachina on a Debian host: binary, configuration, prompt profiles, credentials,
# the systemd unit and (with --host) the nginx site. Idempotent: never overwrites an existing
# configuration, profile directory, credential or nginx site; always replaces the binary and the
# unit. Starts nothing: it prints the commands that do.
#
# Usage: sudo tools/install.sh [--host voice.example.com] [--binary PATH] [--root DIR]
#   --host    also install nginx/voxmachina.conf as the nginx site for this host name
#   --binary  install this binary instead of building target/release/voxmachina
#   --root    install under DIR instead of / (staging, packaging, tests); systemctl is skipped
#
# Credentials are taken from the environment when the files do not exist yet:
#   OPENAI_API_KEY -> /etc/voxmachina/openai_api_key
#   OPENAI_WEBHOOK_SECRET -> /etc/voxmachina/openai_webhook_secret
#   VOXMACHINA_ADMIN_TOKEN -> /etc/voxmachina/admin_token (generated when unset)
# They are written root-owned with mode 0600; systemd hands the service a private copy
# (LoadCredential=, systemd.exec(5)).
set -euo pipefail
cd "$(dirname "$0")/.."

root=/
host=
binary=
while [ $# -gt 0 ]; do
  case "$1" in
    --root) root=$2; shift 2 ;;
    --host) host=$2; shift 2 ;;
    --binary) binary=$2; shift 2 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
root=${root%/}
etc="$root/etc/voxmachina"

if [ -z "$binary" ]; then
  echo "building target/release/voxmachina"
  cargo build --release --locked
  binary=target/release/voxmachina
fi
[ -x "$binary" ] || { echo "no executable at $binary" >&2; exit 1; }

install -D -m 0755 "$binary" "$root/usr/local/bin/voxmachina"
echo "installed $root/usr/local/bin/voxmachina"

install -d -m 0755 "$etc"
if [ ! -e "$etc/voxmachina.toml" ]; then
  # Profiles from /etc/voxmachina/prompts; the store path comes from the unit's Environment=.
  sed 's|^dir = "prompts"$|dir = "/etc/voxmachina/prompts"|' config/voxmachina.toml >"$etc/voxmachina.toml"
  chmod 0644 "$etc/voxmachina.toml"
  echo "created $etc/voxmachina.toml"
fi
if [ ! -d "$etc/prompts" ]; then
  install -d -m 0755 "$etc/prompts"
  install -m 0644 prompts/*.toml prompts/*.md "$etc/prompts/"
  echo "created $etc/prompts (edit the profiles, then: systemctl reload voxmachina)"
fi

write_secret() { # file value
  (umask 077 && printf '%s\n' "$2" >"$etc/$1")
  chmod 0600 "$etc/$1"
  echo "wrote $etc/$1 (0600)"
}
missing=()
for pair in openai_api_key:OPENAI_API_KEY openai_webhook_secret:OPENAI_WEBHOOK_SECRET; do
  file=${pair%%:*} var=${pair#*:}
  if [ ! -e "$etc/$file" ]; then
    if [ -n "${!var:-}" ]; then
      write_secret "$file" "${!var}"
    else
      missing+=("$etc/$file")
    fi
  fi
done
if [ ! -e "$etc/admin_token" ]; then
  token=${VOXMACHINA_ADMIN_TOKEN:-$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')}
  write_secret admin_token "$token"
fi

install -d -m 0755 "$root/usr/local/share/doc/voxmachina"
install -m 0644 README.md QUICKSTART.md SECURITY.md "$root/usr/local/share/doc/voxmachina/"

install -D -m 0644 systemd/voxmachina.service "$root/etc/systemd/system/voxmachina.service"
echo "installed $root/etc/systemd/system/voxmachina.service"

if [ -n "$host" ]; then
  site="$root/etc/nginx/sites-available/voxmachina"
  if [ ! -e "$site" ]; then
    install -d -m 0755 "$(dirname "$site")" "$root/etc/nginx/sites-enabled"
    sed "s|voice.example.com|$host|g" nginx/voxmachina.conf >"$site"
    chmod 0644 "$site"
    ln -sfn ../sites-available/voxmachina "$root/etc/nginx/sites-enabled/voxmachina"
    echo "installed $site (enabled); certificate expected at /etc/letsencrypt/live/$host/"
  fi
fi

VOXMACHINA_PROMPTS__DIR="$etc/prompts" "$root/usr/local/bin/voxmachina" check --config "$etc/voxmachina.toml"

if [ "$root" = "" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
fi

echo
if [ ${#missing[@]} -gt 0 ]; then
  echo "still missing (create each with mode 0600, one line):"
  printf '  %s\n' "${missing[@]}"
fi
cat <<EOF
next:
  systemctl enable --now voxmachina
  journalctl -u voxmachina -o cat | jq
  nginx -t && systemctl reload nginx
  curl https://${host:-voice.example.com}/healthz
EOF
