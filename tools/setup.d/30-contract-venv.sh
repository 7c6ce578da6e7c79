# shellcheck shell=bash
# Sourced by tools/test.sh before `cargo test`: the Python virtualenv of the SDK contract checks
# (tests/contract/, run by tools/check.d/50-contract.sh) and of any other Python test tool.
#
# - creates target/contract-venv and installs tests/contract/requirements.txt (pinned) into it,
#   installing python3-venv from Debian first when the interpreter lacks venv;
# - idempotent: skipped when target/contract-venv/.requirements matches the requirements file;
# - exports VOXMACHINA_CONTRACT_PYTHON=<venv>/bin/python.
#
# Standalone: source tools/setup.d/30-contract-venv.sh

vm_contract_venv="$PWD/target/contract-venv"
vm_contract_reqs="$PWD/tests/contract/requirements.txt"

if ! cmp -s "$vm_contract_reqs" "$vm_contract_venv/.requirements" 2>/dev/null; then
  if ! command -v python3 >/dev/null 2>&1 || ! python3 -m venv --help >/dev/null 2>&1; then
    echo "installing python3 and python3-venv (Debian)"
    apt-get update -qq && apt-get install -y -qq python3 python3-venv >/dev/null
  fi
  rm -rf "$vm_contract_venv"
  if ! python3 -m venv "$vm_contract_venv"; then
    # Debian's python3 without ensurepip: the venv package provides it.
    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
    rm -rf "$vm_contract_venv"
    python3 -m venv "$vm_contract_venv"
  fi
  echo "installing tests/contract/requirements.txt into $vm_contract_venv"
  "$vm_contract_venv/bin/pip" install --quiet --disable-pip-version-check -r "$vm_contract_reqs"
  cp "$vm_contract_reqs" "$vm_contract_venv/.requirements"
fi

export VOXMACHINA_CONTRACT_PYTHON="$vm_contract_venv/bin/python"
echo "contract venv: $("$VOXMACHINA_CONTRACT_PYTHON" -c 'import openai, twilio, boto3; print("openai", openai.__version__, "twilio", twilio.__version__, "boto3", boto3.__version__)')"
