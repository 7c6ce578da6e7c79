"""What voxmachina says to and answers Twilio, against the official ``twilio`` Python library.

- Every Twilio REST request recorded during the calls (``twilio.jsonl``: call create, call
  update, SMS) is re-issued for the same intent through ``twilio.rest.Client`` with a capturing
  ``twilio.http.HttpClient``; method, path, content type and every form field (names, values,
  repeats in order) must be what the library sends. A field the library's method has no
  parameter for is a mismatch.
- Every TwiML document the controller answered (``twiml.jsonl``) is rebuilt with
  ``twilio.twiml.voice_response.VoiceResponse`` (each element through the method the library
  offers on its parent, each attribute through a named parameter of that method) and compared
  with ours as an XML tree.
- Our webhook signature check: a served ``voxmachina`` accepts a voice webhook and a status
  callback signed by ``twilio.request_validator.RequestValidator`` and answers 403 when a
  parameter, the URL or the signature is tampered with.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
import xml.etree.ElementTree as ET

import pytest
import requests
from twilio.http import HttpClient
from twilio.http.response import Response
from twilio.request_validator import RequestValidator
from twilio.rest import Client
from twilio.twiml.voice_response import VoiceResponse

from conftest import PUBLIC_URL, TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, read_jsonl, validated


class Capture(HttpClient):
    """Keeps the request the library would send and answers with an empty resource."""

    def __init__(self):
        super().__init__(logger=logging.getLogger("twilio.capture"), is_async=False)
        self.sent: list[dict] = []

    def request(self, method, url, params=None, data=None, headers=None, auth=None, timeout=None, allow_redirects=False):
        self.sent.append({"method": method, "url": url, "data": data or {}, "headers": headers or {}, "auth": auth})
        return Response(201 if method == "POST" else 200, json.dumps({"sid": "CA" + "0" * 32}))


def snake(name: str) -> str:
    s = re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
    return "from_" if s == "from" else s


def pairs(data: dict) -> list[tuple[str, str]]:
    out = []
    for k, v in data.items():
        for x in v if isinstance(v, list) else [v]:
            out.append((k, str(x)))
    return out


def same_form(ours: list[tuple[str, str]], theirs: list[tuple[str, str]]) -> list[str]:
    errs = []
    for name in sorted({k for k, _ in ours} | {k for k, _ in theirs}):
        a = [v for k, v in ours if k == name]
        b = [v for k, v in theirs if k == name]
        if a != b:
            errs.append(f"{name}: ours {a!r}, twilio library {b!r}")
    return errs


def replay(req: dict) -> tuple[dict, list[str]]:
    """Issues the same intent through twilio.rest.Client; returns what it sent and the form
    fields it has no parameter for."""
    cap = Capture()
    client = Client(TWILIO_ACCOUNT_SID, "token", http_client=cap)
    m = re.fullmatch(r"/2010-04-01/Accounts/(AC\w+)/(Calls|Messages)(?:/(CA\w+))?\.json", req["path"])
    assert m, f"unexpected Twilio path {req['path']}"
    _, resource, sid = m.groups()
    if resource == "Messages":
        method = client.api.v2010.accounts(m.group(1)).messages.create
    elif sid:
        method = client.api.v2010.accounts(m.group(1)).calls(sid).update
    else:
        method = client.api.v2010.accounts(m.group(1)).calls.create
    params = inspect.signature(method).parameters
    kwargs: dict = {}
    unknown = []
    for name, value in req["form"]:
        key = snake(name)
        if key not in params:
            unknown.append(name)
            continue
        if key in kwargs:
            kwargs[key] = (kwargs[key] if isinstance(kwargs[key], list) else [kwargs[key]]) + [value]
        elif name == "StatusCallbackEvent":
            kwargs[key] = [value]
        else:
            kwargs[key] = value
    method(**kwargs)
    assert len(cap.sent) == 1
    return cap.sent[0], unknown


TWILIO = read_jsonl("twilio.jsonl")


@pytest.mark.parametrize("req", TWILIO, ids=lambda r: r["path"].rsplit("/", 1)[-1])
def test_rest_request_matches_the_twilio_library(req):
    sent, unknown = replay(req)
    assert not unknown, f"fields the twilio library has no parameter for: {unknown}"
    assert sent["method"] == req["method"]
    assert sent["url"].split("api.twilio.com", 1)[1] == req["path"]
    assert sent["headers"].get("Content-Type") == req["content_type"], (sent["headers"], req["content_type"])
    errs = same_form([tuple(p) for p in req["form"]], pairs(sent["data"]))
    assert not errs, "\n".join(errs)
    kind = {"Messages.json": "SMS create", "Calls.json": "call create"}.get(req["path"].rsplit("/", 1)[-1], "call update")
    validated(f"twilio REST {kind}")
    for name, value in req["form"]:
        if name == "Twiml":
            check_twiml(value)
            validated("TwiML inside a REST request")


def test_every_twilio_request_kind_was_recorded():
    kinds = {re.sub(r"CA\w+", "{sid}", r["path"].rsplit("/", 2)[-1] if "/Calls/" in r["path"] else r["path"].rsplit("/", 1)[-1]) for r in TWILIO}
    assert {"Calls.json", "Messages.json"} <= kinds and any("{sid}" in k for k in kinds), kinds


# --- TwiML ------------------------------------------------------------------------------------


def _method_for(parent, tag: str):
    name = snake(tag).rstrip("_")
    fn = getattr(parent, name, None)
    assert callable(fn), f"<{tag}> is not an element the twilio library nests in <{parent.name}>"
    return fn


def _rebuild(parent, el: ET.Element):
    fn = _method_for(parent, el.tag)
    params = list(inspect.signature(fn).parameters.values())
    named = [p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    kwargs = {}
    for attr, value in el.attrib.items():
        key = snake(attr)
        assert key in named, f"<{el.tag} {attr}=...>: the twilio library's {fn.__qualname__} has no parameter {key}"
        kwargs[key] = value
    text = (el.text or "").strip()
    if text:
        first = named[0]
        assert first not in kwargs, (el.tag, first)
        kwargs[first] = text
    child = fn(**kwargs)
    for sub in el:
        _rebuild(child, sub)


def _tree(el: ET.Element):
    return (el.tag, dict(el.attrib), (el.text or "").strip(), [_tree(c) for c in el])


def check_twiml(ours: str) -> None:
    assert ours.startswith('<?xml version="1.0" encoding="UTF-8"?>'), ours[:60]
    root = ET.fromstring(ours)
    assert root.tag == "Response", root.tag
    vr = VoiceResponse()
    for el in root:
        _rebuild(vr, el)
    theirs = ET.fromstring(vr.to_xml())
    assert _tree(root) == _tree(theirs), f"\nours:   {ours}\ntwilio: {vr.to_xml()}"


@pytest.mark.parametrize("case", read_jsonl("twiml.jsonl"), ids=lambda c: c["case"])
def test_twiml_matches_what_voice_response_builds(case):
    check_twiml(case["twiml"])
    validated(f"TwiML answer ({case['case']})")


@pytest.mark.parametrize(
    "ours",
    [
        '<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url="wss://x" statusCallbak="y"/></Connect></Response>',
        '<?xml version="1.0" encoding="UTF-8"?><Response><Dail><Number>+1</Number></Dail></Response>',
        '<?xml version="1.0" encoding="UTF-8"?><Response><Hangup/><Say>late</Say><Extra/></Response>',
    ],
)
def test_the_twiml_oracle_rejects_what_twilio_does_not_build(ours):
    with pytest.raises(AssertionError):
        check_twiml(ours)


# --- Signatures -------------------------------------------------------------------------------

VOICE_PARAMS = {
    "AccountSid": TWILIO_ACCOUNT_SID,
    "ApiVersion": "2010-04-01",
    "CallSid": "CA" + "1" * 32,
    "CallStatus": "ringing",
    "Called": "+18005550177",
    "Caller": "+14155550123",
    "Direction": "inbound",
    "From": "+14155550123",
    "To": "+18005550177",
}


def _post(served, path: str, params: dict, signature: str):
    return requests.post(
        f"{served.base}{path}",
        data=params,
        headers={"X-Twilio-Signature": signature},
        timeout=15,
    )


def test_voice_webhook_signed_by_request_validator_is_accepted(served):
    v = RequestValidator(TWILIO_AUTH_TOKEN)
    url = f"{PUBLIC_URL}/twilio/voice"
    sig = v.compute_signature(url, VOICE_PARAMS)
    assert v.validate(url, VOICE_PARAMS, sig)
    r = _post(served, "/twilio/voice", VOICE_PARAMS, sig)
    assert r.status_code == 200, f"{r.status_code} {r.text}\n{served.logs()}"
    check_twiml(r.text)
    validated("twilio signature accepted (voice webhook)")
    validated("TwiML answer (served binary)")


@pytest.mark.parametrize("case", ["param", "url", "signature", "missing"])
def test_tampered_voice_webhook_is_refused(served, case):
    v = RequestValidator(TWILIO_AUTH_TOKEN)
    url = f"{PUBLIC_URL}/twilio/voice"
    params = dict(VOICE_PARAMS)
    sig = v.compute_signature(url, params)
    if case == "param":
        params["From"] = "+14155550124"
    elif case == "url":
        sig = v.compute_signature(f"{PUBLIC_URL}/twilio/voice2", params)
    elif case == "signature":
        sig = RequestValidator("another-token").compute_signature(url, params)
    else:
        sig = ""
    r = _post(served, "/twilio/voice", params, sig)
    assert r.status_code == 403, f"{case}: {r.status_code} {r.text}"
    validated(f"twilio signature refused ({case}) -> 403")


def test_status_callback_signed_by_request_validator_is_accepted(served):
    v = RequestValidator(TWILIO_AUTH_TOKEN)
    url = f"{PUBLIC_URL}/twilio/status"
    params = {
        "AccountSid": TWILIO_ACCOUNT_SID,
        "CallSid": "CA" + "2" * 32,
        "CallStatus": "completed",
        "CallDuration": "7",
        "Direction": "outbound-api",
        "From": "+18005550000",
        "To": "+14155550177",
        "Timestamp": "Thu, 03 Dec 2026 08:00:00 +0000",
        "SequenceNumber": "3",
    }
    r = _post(served, "/twilio/status", params, v.compute_signature(url, params))
    assert r.status_code in (200, 204), f"{r.status_code} {r.text}"
    params["CallStatus"] = "busy"
    r2 = _post(served, "/twilio/status", params, v.compute_signature(url, {**params, "CallStatus": "completed"}))
    assert r2.status_code == 403, r2.text
    validated("twilio signature accepted (status callback)")
