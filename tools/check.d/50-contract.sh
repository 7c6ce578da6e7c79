#!/usr/bin/env bash
# The vendors' SDKs as test oracles (issue 14): re-records whole calls through the controller
# (`cargo test --test contract_calls`, tests/contract_calls.rs, writes target/contract/) and
# validates every recorded message with the official openai, twilio and boto3 Python packages
# (tests/contract/, pytest), and runs the connect-lambda binary on AWS's sample ContactFlowEvent. Prints the number of messages validated per type; fails when pytest
# fails or collects no tests (exit code 5).
#
# Uses the virtualenv of tools/setup.d/30-contract-venv.sh (sourced here when tools/test.sh did
# not) and, when tools/setup.d/10-dynamodb.sh exported VOXMACHINA_TEST_DYNAMODB_ENDPOINT, reads
# the DynamoDB items back from that engine.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -z "${VOXMACHINA_CONTRACT_PYTHON:-}" ] || [ ! -x "$VOXMACHINA_CONTRACT_PYTHON" ]; then
  # shellcheck disable=SC1091
  source tools/setup.d/30-contract-venv.sh
fi
cargo build --locked --quiet --bin voxmachina
# The Amazon Connect Lambda, run by tests/contract/test_connect_lambda.py.
cargo build --locked --quiet --features connect-lambda --bin connect-lambda
cargo test --locked --quiet --test contract_calls
set +e
"$VOXMACHINA_CONTRACT_PYTHON" -m pytest -p no:cacheprovider -q -rfE tests/contract
rc=$?
set -e
if [ "$rc" = 5 ]; then
  echo "contract: pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
