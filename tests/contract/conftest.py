"""Shared fixtures of the SDK contract checks (issue 14): where the recordings are, the
per-type count printed at the end, and a served `voxmachina` instance for the webhook and
Twilio signature checks.

The recordings under ``target/contract/`` are written by ``cargo test --test contract_calls``
(``tests/contract_calls.rs``); ``tools/check.d/50-contract.sh`` runs it right before pytest.
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import socket
import subprocess
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = pathlib.Path(os.environ.get("VOXMACHINA_CONTRACT_DIR", ROOT / "target" / "contract"))

#: Messages validated, by kind (printed at the end of the run).
VALIDATED: collections.Counter = collections.Counter()


def validated(kind: str, n: int = 1) -> None:
    """Counts ``n`` messages of ``kind`` that passed their check."""
    VALIDATED[kind] += n


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    tr = terminalreporter
    tr.section("messages validated against the vendors' SDKs, per type")
    width = max((len(k) for k in VALIDATED), default=10)
    for kind in sorted(VALIDATED):
        tr.write_line(f"{kind:<{width}}  {VALIDATED[kind]:>5}")
    tr.write_line(f"{'total':<{width}}  {sum(VALIDATED.values()):>5}")


def read_jsonl(name: str) -> list[dict]:
    path = OUT / name
    if not path.is_file():
        raise AssertionError(
            f"{path} is missing: run `cargo test --test contract_calls` first "
            "(tools/check.d/50-contract.sh does)"
        )
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    assert lines, f"{path} is empty"
    return lines


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def binary() -> pathlib.Path:
    """The `voxmachina` binary `cargo test` built."""
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    path = target / "debug" / "voxmachina"
    if not path.is_file():
        raise AssertionError(f"{path} is missing: run `cargo build` (or cargo test) first")
    return path


class Served:
    """A `voxmachina serve` child on 127.0.0.1 with the given config text and environment."""

    def __init__(self, tmp: pathlib.Path, config: str, env: dict[str, str]):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        cfg = tmp / "voxmachina.toml"
        cfg.write_text(config.replace("{port}", str(self.port)).replace("{tmp}", str(tmp)))
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("VOXMACHINA_")}
        for k in ("CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET", "RUST_LOG", "AWS_PROFILE"):
            full_env.pop(k, None)
        full_env.update(env)
        self.log = open(tmp / "serve.log", "wb")
        self.proc = subprocess.Popen(
            [str(binary()), "serve", "--config", str(cfg)],
            env=full_env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self.tmp = tmp
        deadline = time.time() + 60
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"voxmachina serve exited: {self.logs()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                if time.time() > deadline:
                    raise AssertionError(f"voxmachina serve did not listen: {self.logs()}")
                time.sleep(0.1)

    def logs(self) -> str:
        self.log.flush()
        return (self.tmp / "serve.log").read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# --- A served instance against a local stand-in for OpenAI ----------------------------------

import http.server
import threading

WEBHOOK_SECRET = "whsec_" + __import__("base64").b64encode(b"voxmachina-contract-webhook-secret").decode()
API_KEY = "sk-contract-test"
TWILIO_ACCOUNT_SID = "AC00000000000000000000000000000042"
TWILIO_AUTH_TOKEN = "contract-auth-token-0123456789ab"
PUBLIC_URL = "https://voice.test"


class OpenAIStub:
    """Answers OpenAI call control (`POST .../accept|reject|refer|hangup`) with 200 and an
    empty body, as OpenAI does, and keeps every request; anything else is 404 (so sideband
    upgrades fail and the controller's monitor gives up, which the webhook answer does not wait
    for)."""

    def __init__(self):
        self.requests: list[tuple[str, str, bytes]] = []
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(n) if n else b""
                stub.requests.append(("POST", self.path, body))
                ok = self.path.rsplit("/", 1)[-1] in ("accept", "reject", "refer", "hangup")
                self.send_response(200 if ok else 404)
                self.send_header("content-length", "0")
                self.end_headers()

            def do_GET(self):
                stub.requests.append(("GET", self.path, b""))
                self.send_response(404)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()


SERVE_CONFIG = """
[server]
listen = "127.0.0.1:{port}"
shutdown_grace_secs = 0
[openai]
base_url = "http://127.0.0.1:{stub}/v1"
sideband_url = "ws://127.0.0.1:{stub}/v1/realtime"
live_base_url = "http://127.0.0.1:{stub}/v1"
live_sideband_url = "ws://127.0.0.1:{stub}/v1"
request_timeout_ms = 2000
accept_retry_budget_ms = 2000
[prompts]
dir = "{prompts}"
[store]
backend = "sqlite"
sqlite_path = "{tmp}/voxmachina.db"
[monitor]
reconnect_max_attempts = 1
reconnect_initial_delay_ms = 20
reconnect_max_delay_ms = 50
[logging]
format = "json"
level = "info"
[twilio]
api_base_url = "http://127.0.0.1:{stub}"
account_sid = "{sid}"
public_url = "{public}"
from_number = "+18005550000"
voice_mode = "stream"
[after_call]
sms_opt_out_file = "{tmp}/sms_opt_out.txt"
[tools]
secrets_dir = "{tmp}"
"""


@pytest.fixture(scope="session")
def openai_stub():
    stub = OpenAIStub()
    yield stub
    stub.stop()


@pytest.fixture(scope="session")
def served(tmp_path_factory, openai_stub):
    """`voxmachina serve` on the shipped profiles, OpenAI replaced by :class:`OpenAIStub`,
    Twilio configured (signatures checked against ``TWILIO_AUTH_TOKEN``)."""
    tmp = tmp_path_factory.mktemp("served")
    (tmp / "shopkart_api_token").write_text("contract-shop-token")
    config = (
        SERVE_CONFIG.replace("{stub}", str(openai_stub.port))
        .replace("{prompts}", str(ROOT / "prompts"))
        .replace("{sid}", TWILIO_ACCOUNT_SID)
        .replace("{public}", PUBLIC_URL)
    )
    s = Served(
        tmp,
        config,
        {
            "OPENAI_API_KEY": API_KEY,
            "OPENAI_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "TWILIO_AUTH_TOKEN": TWILIO_AUTH_TOKEN,
            "VOXMACHINA_ADMIN_TOKEN": "contract-admin-token",
        },
    )
    yield s
    s.stop()


# --- The DynamoDB tables the recorded calls wrote ---------------------------------------------

#: Table suffixes of the DynamoDB store (README "DynamoDB tables").
DYNAMODB_TABLES = ("calls", "transcripts", "events", "webhooks", "tokens", "leases")


@pytest.fixture(scope="session")
def dynamo():
    """``(boto3 client, manifest)`` for the tables of ``tests/contract_calls.rs`` (manifest
    ``dynamodb.json``: endpoint, region, prefix, number of calls); deleted after the session.
    Skips when the run had no DynamoDB engine (tools/setup.d/10-dynamodb.sh starts one)."""
    import boto3

    path = OUT / "dynamodb.json"
    if not path.is_file():
        if os.environ.get("VOXMACHINA_TEST_DYNAMODB_ENDPOINT"):
            raise AssertionError(f"{path} is missing although a DynamoDB engine is configured")
        pytest.skip("no DynamoDB engine for this run (tools/setup.d/10-dynamodb.sh starts one)")
    m = json.loads(path.read_text())
    client = boto3.client(
        "dynamodb",
        endpoint_url=m["endpoint"],
        region_name=m["region"],
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )
    yield client, m
    for t in DYNAMODB_TABLES:
        try:
            client.delete_table(TableName=f"{m['prefix']}_{t}")
        except client.exceptions.ResourceNotFoundException:
            pass
