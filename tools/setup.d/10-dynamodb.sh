# shellcheck shell=bash
# Sourced by tools/test.sh before `cargo test`: a local DynamoDB engine (moto server) for
# tests/store_dynamodb.rs and benches/tokens.rs.
#
# - installs moto into target/moto-venv (once; skipped when target/moto-venv/bin/moto_server
#   exists), installing python3-venv from Debian first when the interpreter lacks venv;
# - starts `moto_server -H 127.0.0.1 -p <free port>` in the background, logs to
#   target/moto-server.log, and waits until it accepts connections;
# - registers its kill in cleanup_hooks (tools/test.sh runs them on exit);
# - exports VOXMACHINA_TEST_DYNAMODB_ENDPOINT=http://127.0.0.1:<port>.
#
# Standalone use (e.g. before `cargo test --test store_dynamodb`):
#   cleanup_hooks=(); source tools/setup.d/10-dynamodb.sh    # then kill the PID it prints

VOXMACHINA_MOTO_VERSION="5.2.5"
vm_moto_venv="$PWD/target/moto-venv"

if [ ! -x "$vm_moto_venv/bin/moto_server" ]; then
  if ! command -v python3 >/dev/null 2>&1 || ! python3 -m venv --help >/dev/null 2>&1; then
    echo "installing python3 and python3-venv (Debian)"
    apt-get update -qq && apt-get install -y -qq python3 python3-venv >/dev/null
  fi
  rm -rf "$vm_moto_venv"
  if ! python3 -m venv "$vm_moto_venv"; then
    # Debian's python3 without ensurepip: the venv package provides it.
    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
    rm -rf "$vm_moto_venv"
    python3 -m venv "$vm_moto_venv"
  fi
  echo "installing moto[server]==$VOXMACHINA_MOTO_VERSION into $vm_moto_venv"
  "$vm_moto_venv/bin/pip" install --quiet --disable-pip-version-check \
    "moto[server]==$VOXMACHINA_MOTO_VERSION"
fi

vm_moto_port=$("$vm_moto_venv/bin/python" -c \
  'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$vm_moto_venv/bin/moto_server" -H 127.0.0.1 -p "$vm_moto_port" \
  >"$PWD/target/moto-server.log" 2>&1 &
vm_moto_pid=$!
cleanup_hooks+=("kill $vm_moto_pid")

vm_moto_ready=0
for _ in $(seq 1 150); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$vm_moto_port") 2>/dev/null; then
    vm_moto_ready=1
    break
  fi
  if ! kill -0 "$vm_moto_pid" 2>/dev/null; then
    break
  fi
  sleep 0.1
done
if [ "$vm_moto_ready" != 1 ]; then
  echo "moto_server did not start on 127.0.0.1:$vm_moto_port; its log:" >&2
  cat "$PWD/target/moto-server.log" >&2 || true
  return 1
fi

export VOXMACHINA_TEST_DYNAMODB_ENDPOINT="http://127.0.0.1:$vm_moto_port"
echo "moto_server $VOXMACHINA_MOTO_VERSION (pid $vm_moto_pid) at $VOXMACHINA_TEST_DYNAMODB_ENDPOINT"
