"""Every webhook event type of the official ``openai`` SDK, built from its models
(``openai.types.webhooks.UnwrapWebhookEvent``), signed with ``standardwebhooks`` (the scheme
OpenAI documents, https://developers.openai.com/api/docs/guides/webhooks), cross-checked with
the SDK's own ``client.webhooks.unwrap``, and POSTed to a served ``voxmachina``.

README ("Webhook answers") promises: 200 for every authentic event, with ``{"status":
"accepted"}`` for an incoming call we answer and ``{"status": "ignored"}`` for event types we do
not handle; 401 for a bad signature or a stale timestamp; 400 for missing signature headers.
The accept bodies the served binary sent for those calls are validated too.
"""

from __future__ import annotations

import datetime
import json
import re
import secrets
import time
import types
import typing

import requests
import openai
import pydantic
import pytest
import standardwebhooks
import typing_extensions
from openai.types.live.session_accept_params import SessionAcceptParams
from openai.types.realtime.call_accept_params import CallAcceptParams
from openai.types.webhooks.unwrap_webhook_event import UnwrapWebhookEvent

import strict
from conftest import API_KEY, WEBHOOK_SECRET, validated

CALL_EVENTS = {"realtime.call.incoming", "live.transport.incoming", "live.call.incoming"}


def _event_models() -> list[type[pydantic.BaseModel]]:
    union = typing_extensions.get_args(UnwrapWebhookEvent)[0]
    return list(typing_extensions.get_args(union))


def _sample(tp, name: str):
    """A value of annotation ``tp`` (first literal, first union member, one list item)."""
    origin = typing_extensions.get_origin(tp)
    args = typing_extensions.get_args(tp)
    if origin in (typing.Literal, typing_extensions.Literal):
        return args[0]
    if origin is typing.Union or origin is getattr(types, "UnionType", None):
        return _sample(next(a for a in args if a is not type(None)), name)
    if origin in (list, typing.List):
        return [_sample(args[0], name)]
    if origin in (dict, typing.Dict):
        return {}
    if isinstance(tp, type) and issubclass(tp, pydantic.BaseModel):
        return {k: _sample(f.annotation, k) for k, f in tp.model_fields.items()}
    if tp is str:
        return f"{name}_{secrets.token_hex(8)}"
    if tp is bool:
        return True
    if tp is int:
        return int(time.time())
    if tp is float:
        return 1.0
    return None


def _headers(to: str) -> list[dict]:
    return [
        {"name": "From", "value": '"Contract" <sip:+14155550123@pstn.example.com>;tag=c1'},
        {"name": "To", "value": f"<sip:{to}@sip.api.openai.com>"},
        {"name": "Call-ID", "value": f"{secrets.token_hex(16)}@contract"},
    ]


def build(model: type[pydantic.BaseModel]) -> pydantic.BaseModel:
    """An instance of the SDK's event model; call events get ids and SIP headers routed to a
    shipped profile of their API (default for Realtime, live-frontdesk for GPT-Live)."""
    data = _sample(model, "evt")
    kind = data["type"]
    data["id"] = f"evt_{secrets.token_hex(16)}"
    data["created_at"] = int(time.time())
    if kind == "realtime.call.incoming":
        data["data"] = {"call_id": f"rtc_{secrets.token_hex(16)}", "sip_headers": _headers("+18005550000")}
    elif kind in ("live.transport.incoming", "live.call.incoming"):
        data["data"].update(session_id=f"live_{secrets.token_hex(16)}", sip_headers=_headers("+18005550112"))
        data["data"].pop("sip_media_security", None)
    return model.model_validate(data)


def sign(payload: str, msg_id: str, at: datetime.datetime) -> dict:
    sig = standardwebhooks.Webhook(WEBHOOK_SECRET).sign(msg_id, at, payload)
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": sig,
    }


MODELS = _event_models()


def test_the_sdk_knows_the_events_we_handle():
    kinds = {typing_extensions.get_args(m.model_fields["type"].annotation)[0] for m in MODELS}
    assert CALL_EVENTS <= kinds, sorted(kinds)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_every_sdk_event_type_gets_the_promised_answer(served, openai_stub, model):
    event = build(model)
    payload = event.model_dump_json(exclude_none=True)
    kind = json.loads(payload)["type"]
    msg_id = f"wh_{secrets.token_hex(16)}"
    headers = sign(payload, msg_id, datetime.datetime.now(tz=datetime.timezone.utc))
    # The SDK accepts our signing and parses the payload back into the same type.
    client = openai.OpenAI(api_key=API_KEY, webhook_secret=WEBHOOK_SECRET)
    assert type(client.webhooks.unwrap(payload, headers)) is model

    r = requests.post(f"{served.base}/openai/webhook", data=payload, headers=headers, timeout=15)
    want = "accepted" if kind in CALL_EVENTS else "ignored"
    assert (r.status_code, r.json().get("status")) == (200, want), f"{kind}: {r.status_code} {r.text}\n{served.logs()}"
    validated(f"webhook {kind} -> 200 {want}")

    if kind in CALL_EVENTS:
        # The accept the served binary sent for this call, against the SDK's types.
        cid = event.data.call_id if kind == "realtime.call.incoming" else event.data.session_id
        accepts = [b for (_, p, b) in openai_stub.requests if p.endswith(f"/{cid}/accept")]
        assert len(accepts) == 1, f"{kind}: {len(accepts)} accepts"
        body = json.loads(accepts[0])
        tp = CallAcceptParams if kind == "realtime.call.incoming" else SessionAcceptParams
        errs = strict.validate(body, tp)
        assert not errs, f"{kind} accept body: {errs}\n{body}"
        validated(f"served accept body for {kind}")

    # A redelivery (same webhook-id) is answered 200 again and decided only once.
    r = requests.post(f"{served.base}/openai/webhook", data=payload, headers=headers, timeout=15)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "case,status",
    [("bad_signature", 401), ("tampered_body", 401), ("stale_timestamp", 401), ("no_signature_headers", 400)],
)
def test_inauthentic_deliveries_are_refused(served, case, status):
    event = build(next(m for m in MODELS if m.__name__ == "RealtimeCallIncomingWebhookEvent"))
    payload = event.model_dump_json(exclude_none=True)
    now = datetime.datetime.now(tz=datetime.timezone.utc)
    headers = sign(payload, f"wh_{secrets.token_hex(16)}", now)
    body = payload
    if case == "bad_signature":
        headers["webhook-signature"] = standardwebhooks.Webhook(
            "whsec_" + __import__("base64").b64encode(b"another-secret-entirely-32-bytes").decode()
        ).sign(headers["webhook-id"], now, payload)
    elif case == "tampered_body":
        body = re.sub(r'"call_id":"rtc_', '"call_id":"rtc_0', payload)
    elif case == "stale_timestamp":
        old = now - datetime.timedelta(minutes=10)
        headers = sign(payload, headers["webhook-id"], old)
    else:
        headers = {"content-type": "application/json"}
    r = requests.post(f"{served.base}/openai/webhook", data=body, headers=headers, timeout=15)
    assert r.status_code == status, f"{case}: {r.status_code} {r.text}"
    validated(f"webhook refused ({case}) -> {status}")
