"""Every OpenAI REST body and client event voxmachina sent during the recorded calls
(``tests/contract_calls.rs``) against the official ``openai`` SDK's types.

REST bodies (``openai.types.realtime`` call params, ``openai.types.live`` session params) and
WebSocket client events (``RealtimeClientEventParam`` on the Realtime sideband and model
sessions, ``ConnectClientEventParam`` on the GPT-Live attach sideband) are checked with both
oracles of :mod:`strict`: pydantic's ``TypeAdapter`` and a recursive walk that also rejects keys
the SDK type does not declare.
"""

from __future__ import annotations

import re

import pytest
from openai.types.live.connect_client_event_param import ConnectClientEventParam
from openai.types.live.media_session_config_param import MediaSessionConfigParam
from openai.types.live.session_accept_params import SessionAcceptParams
from openai.types.live.session_refer_params import SessionReferParams
from openai.types.live.session_reject_params import SessionRejectParams
from openai.types.realtime.call_accept_params import CallAcceptParams
from openai.types.realtime.call_refer_params import CallReferParams
from openai.types.realtime.call_reject_params import CallRejectParams
from openai.types.realtime.realtime_client_event_param import RealtimeClientEventParam
from typing_extensions import Literal, Required, TypedDict

import strict
from conftest import read_jsonl, validated

REALTIME_REST = {
    "accept": CallAcceptParams,
    "reject": CallRejectParams,
    "refer": CallReferParams,
}
LIVE_REST = {
    "accept": SessionAcceptParams,
    "reject": SessionRejectParams,
    "refer": SessionReferParams,
}
REALTIME_EVENTS = strict.by_type(RealtimeClientEventParam)
LIVE_EVENTS = strict.by_type(ConnectClientEventParam)


# The SIP transport of `POST /live/sessions` (outbound calls) is documented in OpenAI's
# voice-sip guide (https://developers.openai.com/api/docs/guides/voice-sip?api=live) but not
# typed by the SDK pinned in requirements.txt, whose `LiveCreateParams.transport` is WebRTC
# only. It is checked against this transcription of the guide (README "Verified against").
class _GuideTrunkAuth(TypedDict, total=False):
    type: Required[Literal["digest"]]
    username: Required[str]
    password: Required[str]


class _GuideTrunk(TypedDict, total=False):
    provider_url: Required[str]
    auth: Required[_GuideTrunkAuth]
    caller_number: str


class GuideSipTransport(TypedDict, total=False):
    type: Required[Literal["sip"]]
    destination: Required[str]
    trunk: Required[_GuideTrunk]


def _cases():
    cases = []
    for name in ("openai-realtime.jsonl", "openai-live.jsonl"):
        for n, line in enumerate(read_jsonl(name)):
            body = line["body"]
            kind = body.get("type", "?") if isinstance(body, dict) else "-"
            tail = line["path"].rsplit("/", 1)[-1] if line["channel"] == "rest" else kind
            cases.append(pytest.param(line, id=f"{line['api']}-{line['channel']}-{tail}-{n}"))
    return cases


def _fail(kind: str, line: dict, errors: list[str]) -> None:
    if errors:
        pytest.fail(f"{kind} does not match the SDK:\n  " + "\n  ".join(errors) + f"\nbody: {line['body']}")
    validated(kind)


@pytest.mark.parametrize("line", _cases())
def test_message_matches_the_sdk_types(line):
    body = line["body"]
    api, channel, path = line["api"], line["channel"], line["path"]
    if channel == "rest":
        assert line["method"] == "POST", line
        if api == "live" and path == "/v1/live/sessions":
            assert isinstance(body, dict) and set(body) == {"session", "transport"}, body
            _fail("live POST /live/sessions session", line, strict.validate(body["session"], MediaSessionConfigParam))
            errs = strict.check(body["transport"], GuideSipTransport)
            _fail("live POST /live/sessions transport (guide, not in SDK)", line, errs)
            return
        m = re.fullmatch(
            r"/v1/realtime/calls/[^/]+/(\w+)" if api == "realtime" else r"/v1/live/sessions/[^/]+/(\w+)", path
        )
        assert m, f"unexpected {api} path {path}"
        action = m.group(1)
        kind = f"{api} POST {action}"
        if action == "hangup":
            # The SDK's hangup sends no body.
            _fail(kind, line, [] if body is None else [f"hangup carries a body: {body!r}"])
            return
        table = REALTIME_REST if api == "realtime" else LIVE_REST
        assert action in table, f"{api} action {action} is not a call-control method of the SDK"
        _fail(kind, line, strict.validate(body, table[action]))
        return
    assert isinstance(body, dict), f"client event is not a JSON object: {body!r}"
    events = LIVE_EVENTS if channel == "attach" else REALTIME_EVENTS
    kind = body.get("type")
    assert kind in events, f"{channel} event type {kind!r} is not a client event of the SDK ({sorted(events)})"
    _fail(f"{api} {channel} {kind}", line, strict.validate(body, events[kind]))


def test_every_call_control_action_was_recorded():
    """Both APIs' accept/reject/refer/hangup and the Live outbound create were exercised."""
    seen = set()
    for name in ("openai-realtime.jsonl", "openai-live.jsonl"):
        for line in read_jsonl(name):
            if line["channel"] == "rest":
                seen.add((line["api"], line["path"].rsplit("/", 1)[-1]))
    want = {(api, a) for api in ("realtime", "live") for a in ("accept", "reject", "refer", "hangup")}
    want.add(("live", "sessions"))
    assert want <= seen, f"not exercised: {sorted(want - seen)}"


@pytest.mark.parametrize(
    "tp,value",
    [
        (SessionAcceptParams, {"session": {"type": "live", "model": "gpt-live-1", "extra": 1}}),
        (SessionAcceptParams, {"session": {"type": "realtime", "model": "gpt-live-1"}}),
        (SessionAcceptParams, {"session": {"type": "live"}}),
        (
            SessionAcceptParams,
            {"session": {"type": "live", "model": "m", "delegation": {"type": "responses", "responses": {}}}},
        ),
        (CallAcceptParams, {"type": "realtime", "audio": {"output": {"voice": "marin", "sped": 1.0}}}),
        (RealtimeClientEventParam, {"type": "response.create", "response": {"modalities": ["audio"]}}),
    ],
)
def test_the_checker_rejects_what_the_sdk_does_not_know(tp, value):
    """The oracle itself: an unknown key at any depth, a wrong literal, a missing required key."""
    assert strict.validate(value, tp), value
