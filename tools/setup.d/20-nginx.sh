# Sourced by tools/test.sh before the tests: installs nginx and openssl (Debian packages) for
# tests/deploy_nginx.rs and tools/check.d/20-nginx.sh, and exports VOXMACHINA_NGINX with the
# binary's path. Debian's package does not start nginx without a running init system; the test
# starts its own instance on loopback ports.
if ! command -v openssl >/dev/null 2>&1 || { ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; }; then
  echo "installing nginx and openssl"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx openssl >/dev/null 2>&1 || {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx openssl >/dev/null
  }
fi
if command -v nginx >/dev/null 2>&1; then
  VOXMACHINA_NGINX=$(command -v nginx)
else
  VOXMACHINA_NGINX=/usr/sbin/nginx
fi
export VOXMACHINA_NGINX
echo "nginx: $("$VOXMACHINA_NGINX" -v 2>&1)"
