"""The Amazon Connect Lambda (`connect-lambda`, built with `--features connect-lambda`) run as
AWS runs it: the binary polls a local implementation of the Lambda Runtime API
(https://docs.aws.amazon.com/lambda/latest/dg/runtimes-api.html) and is invoked with AWS's
documented sample ``ContactFlowEvent``
(https://docs.aws.amazon.com/connect/latest/adminguide/connect-lambda-functions.html), the
caller's number set to the caller of the recorded connect-support call, whose handover token is
in the DynamoDB tables of the recording (read with the same store).

Connect requires a flat JSON object of string keys and string values ("STRING_MAP") under 32 KB.
"""

from __future__ import annotations

import copy
import http.server
import json
import os
import queue
import subprocess
import threading

import pytest

from conftest import ROOT, validated

# AWS's sample event, as published on the page above (only MediaStreams' StreamARN shortened).
SAMPLE_EVENT = {
    "Details": {
        "ContactData": {
            "Attributes": {"exampleAttributeKey1": "exampleAttributeValue1"},
            "Channel": "VOICE",
            "ContactId": "4a573372-1f28-4e26-b97b-XXXXXXXXXXX",
            "CustomerEndpoint": {"Address": "+1234567890", "Type": "TELEPHONE_NUMBER"},
            "CustomerId": "someCustomerId",
            "Description": "someDescription",
            "InitialContactId": "4a573372-1f28-4e26-b97b-XXXXXXXXXXX",
            "InitiationMethod": "INBOUND | OUTBOUND | TRANSFER | CALLBACK",
            "InstanceARN": "arn:aws:connect:aws-region:1234567890:instance/c8c0e68d-2200-4265-82c0-XXXXXXXXXX",
            "LanguageCode": "en-US",
            "MediaStreams": {
                "Customer": {
                    "Audio": {
                        "StreamARN": "arn:aws:kinesisvideo::eu-west-2:111111111111:stream/instance-alias-contact-ddddddd/9999999999999",
                        "StartTimestamp": "1571360125131",
                        "StopTimestamp": "1571360126131",
                        "StartFragmentNumber": "100",
                    }
                }
            },
            "Name": "ContactFlowEvent",
            "PreviousContactId": "4a573372-1f28-4e26-b97b-XXXXXXXXXXX",
            "Queue": {
                "ARN": "arn:aws:connect:eu-west-2:111111111111:instance/cccccccc-bbbb-dddd-eeee-ffffffffffff/queue/aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
                "Name": "PasswordReset",
                "OutboundCallerId": {"Address": "+12345678903", "Type": "TELEPHONE_NUMBER"},
            },
            "References": {"key1": {"Type": "url", "Value": "urlvalue"}},
            "SystemEndpoint": {"Address": "+1234567890", "Type": "TELEPHONE_NUMBER"},
        },
        "Parameters": {"exampleParameterKey1": "exampleParameterValue1"},
    },
    "Name": "ContactFlowEvent",
}

#: The caller of scripts/connect_escalation.toml (the recorded connect-support call).
CONNECT_CALLER = "+14155550188"


class RuntimeApi:
    """The Lambda Runtime API: hands out queued events on `invocation/next` and collects the
    answers posted to `invocation/{id}/response` or `/error`."""

    def __init__(self):
        self.events: queue.Queue = queue.Queue()
        self.answers: queue.Queue = queue.Queue()
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if not self.path.endswith("/runtime/invocation/next"):
                    self.send_response(404)
                    self.end_headers()
                    return
                req_id, event = api.events.get()
                body = json.dumps(event).encode()
                self.send_response(200)
                self.send_header("Lambda-Runtime-Aws-Request-Id", req_id)
                self.send_header("Lambda-Runtime-Deadline-Ms", str(int(__import__("time").time() * 1000) + 8000))
                self.send_header("Lambda-Runtime-Invoked-Function-Arn", "arn:aws:lambda:us-east-1:123456789012:function:voxmachina-connect")
                self.send_header("Lambda-Runtime-Trace-Id", "Root=1-00000000-000000000000000000000000")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                n = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(n)
                api.answers.put((self.path, body))
                self.send_response(202)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def invoke(self, req_id: str, event: dict) -> tuple[str, bytes]:
        self.events.put((req_id, event))
        return self.answers.get(timeout=30)


@pytest.fixture(scope="module")
def lambda_fn(dynamo):
    _, m = dynamo
    binary = ROOT / "target" / "debug" / "connect-lambda"
    if not binary.is_file():
        raise AssertionError(f"{binary} is missing: cargo build --features connect-lambda --bin connect-lambda")
    api = RuntimeApi()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXMACHINA_")}
    env.update(
        {
            "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{api.server.server_address[1]}",
            "AWS_LAMBDA_FUNCTION_NAME": "voxmachina-connect",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128",
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_LOG_STREAM_NAME": "contract",
            "AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/voxmachina-connect",
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "AWS_EC2_METADATA_DISABLED": "true",
            "VOXMACHINA_STORE__BACKEND": "dynamodb",
            "VOXMACHINA_STORE__DYNAMODB__TABLE_PREFIX": m["prefix"],
            "VOXMACHINA_STORE__DYNAMODB__REGION": m["region"],
            "VOXMACHINA_STORE__DYNAMODB__ENDPOINT_URL": m["endpoint"],
        }
    )
    proc = subprocess.Popen([str(binary)], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    yield api
    proc.kill()
    proc.wait()
    api.server.shutdown()


def _flat_string_map(body: bytes) -> dict:
    assert len(body) < 32 * 1024, len(body)
    answer = json.loads(body)
    assert isinstance(answer, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in answer.items()), answer
    return answer


def test_documented_sample_event_redeems_the_handover_once(lambda_fn):
    event = copy.deepcopy(SAMPLE_EVENT)
    event["Details"]["ContactData"]["CustomerEndpoint"]["Address"] = CONNECT_CALLER
    path, body = lambda_fn.invoke("req-1", event)
    assert path.endswith("/runtime/invocation/req-1/response"), (path, body)
    answer = _flat_string_map(body)
    assert answer.get("success") == "true", answer
    assert answer.get("matched_by") and answer.get("conversation_id", "").startswith("rtc_"), answer
    # Values routed on in a contact flow: letters, digits, '-' and '_' only (admin guide).
    for key in ("intent", "priority", "route_to_queue", "matched_by"):
        assert all(c.isascii() and (c.isalnum() or c in "-_") for c in answer[key]), (key, answer[key])
    validated("connect-lambda answer (AWS sample ContactFlowEvent, redeemed)")
    path, body = lambda_fn.invoke("req-2", event)
    assert path.endswith("/runtime/invocation/req-2/response"), (path, body)
    again = _flat_string_map(body)
    assert again.get("success") == "false" and again.get("reason"), again
    validated("connect-lambda answer (second redemption refused)")


def test_documented_sample_event_as_published_is_answered(lambda_fn):
    path, body = lambda_fn.invoke("req-3", copy.deepcopy(SAMPLE_EVENT))
    assert path.endswith("/runtime/invocation/req-3/response"), (path, body)
    answer = _flat_string_map(body)
    assert answer.get("success") == "false" and answer.get("reason"), answer
    validated("connect-lambda answer (AWS sample ContactFlowEvent, no handover)")
