#!/usr/bin/env bash
# `nginx -t` on nginx/voxmachina.conf exactly as shipped, except the certificate paths, which
# point at a throw-away self-signed pair. The site is included in a minimal http{} the way
# Debian's /etc/nginx/nginx.conf includes sites-enabled/*. Needs nginx and openssl
# (tools/setup.d/20-nginx.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/../.."

nginx_bin="${VOXMACHINA_NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}"
if [ ! -x "$nginx_bin" ]; then
  echo "nginx is not installed (tools/setup.d/20-nginx.sh installs it)"
  exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=voice.example.com" \
  -keyout "$work/privkey.pem" -out "$work/fullchain.pem" >/dev/null 2>&1

sed -e "s|/etc/letsencrypt/live/voice.example.com/fullchain.pem|$work/fullchain.pem|" \
    -e "s|/etc/letsencrypt/live/voice.example.com/privkey.pem|$work/privkey.pem|" \
    nginx/voxmachina.conf >"$work/voxmachina.conf"
cat >"$work/nginx.conf" <<CONF
pid $work/nginx.pid;
error_log $work/error.log;
events { worker_connections 64; }
http {
    access_log off;
    client_body_temp_path $work/client_body;
    proxy_temp_path $work/proxy;
    fastcgi_temp_path $work/fastcgi;
    uwsgi_temp_path $work/uwsgi;
    scgi_temp_path $work/scgi;
    include $work/voxmachina.conf;
}
CONF
if ! out=$("$nginx_bin" -t -q -p "$work" -c "$work/nginx.conf" -e "$work/error.log" 2>&1); then
  echo "nginx -t failed:"
  echo "$out"
  cat "$work/error.log" 2>/dev/null || true
  exit 1
fi
if [ -n "$out" ]; then
  echo "nginx -t printed warnings:"
  echo "$out"
  exit 1
fi
echo "nginx -t: nginx/voxmachina.conf is valid ($("$nginx_bin" -v 2>&1))"
