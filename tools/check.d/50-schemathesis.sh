#!/usr/bin/env bash
# The admin API against its own OpenAPI document (docs/openapi.json, which tests/admin_api.rs
# keeps equal to what the binary serves at /v1/openapi.json), with schemathesis from PyPI:
#   - a served instance (`voxmachina serve`, SQLite in a temp dir, no Twilio, no GPT-Live trunk,
#     OpenAI never reached: no operation of /v1 calls it without a trunk), loopback only; the
#     store is empty, so call-id operations answer their documented 404s and bodies/queries
#     their 400s (schemathesis warns about that; the record shapes are covered by
#     tests/admin_api.rs and the response checks of GET /v1/calls);
#   - checks: no 5xx (not_a_server_error), every response documented and matching its schema
#     (status_code_, content_type_, response_headers_, response_schema_conformance), and auth
#     enforced on every operation (ignored_auth: each operation is replayed without and with a
#     wrong token and must answer 401);
#   - bounded run time: --max-examples 25, a fixed seed, 2 workers: about 30 s on 2 busy cores
#     (~600 generated requests); the elapsed seconds are printed.
# schemathesis is pinned and installed once into target/schemathesis-venv.
set -euo pipefail
cd "$(dirname "$0")/../.."

SCHEMATHESIS_VERSION="4.32.5"
venv="$PWD/target/schemathesis-venv"
if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  if ! python3 -m venv --help >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq python3 python3-venv >/dev/null
  fi
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

cargo build --locked --quiet --bin voxmachina
work="$(mktemp -d)"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
token="schemathesis-admin-token"
cat > "$work/voxmachina.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
[prompts]
dir = "$PWD/tests/fixtures/prompts"
[store]
sqlite_path = "$work/state/voxmachina.db"
[logging]
format = "json"
level = "warn"
TOML

OPENAI_API_KEY="sk-schemathesis" \
OPENAI_WEBHOOK_SECRET="whsec_$(printf 'schemathesis-webhook-secret-32by' | base64)" \
VOXMACHINA_ADMIN_TOKEN="$token" \
  target/debug/voxmachina --config "$work/voxmachina.toml" serve 2> "$work/serve.log" &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null || { cat "$work/serve.log"; exit 1; }

start=$(date +%s)
"$venv/bin/schemathesis" run docs/openapi.json \
  --url "http://127.0.0.1:$port" \
  --header "Authorization: Bearer $token" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,ignored_auth \
  --max-examples 25 \
  --seed 1 \
  --workers 2 \
  --no-color
echo "schemathesis: $(( $(date +%s) - start )) s"
