"""Every DynamoDB table and item the recorded calls wrote (``tests/contract_calls.rs`` with the
DynamoDB store, ``dynamodb.json``), read back with ``boto3``: key schemas, indexes and TTL as
README's table documents them, every item's key attributes with the declared types, and every
TTL attribute a Number of whole epoch seconds in the future (DynamoDB TTL ignores anything else:
https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/time-to-live-ttl-before-you-start.html).

Needs the local engine of ``tools/setup.d/10-dynamodb.sh`` (``VOXMACHINA_TEST_DYNAMODB_ENDPOINT``);
without it the recording has no ``dynamodb.json`` and these checks are skipped with a reason.
The tables are deleted at the end of the session (``dynamo`` fixture in ``conftest.py``).
"""

from __future__ import annotations

import decimal
import time

import pytest

from conftest import validated

# README "DynamoDB tables": (partition key, sort key or None, TTL attribute or None,
# {index: (hash, range)}), attribute types.
TABLES = {
    "calls": (("call_id", "S"), None, None, {"by_created": ("list_pk", "created_key"), "by_state": ("state", "created_key")}),
    "transcripts": (("call_id", "S"), ("sk", "S"), None, {"by_seq": ("call_id", "seq")}),
    "events": (("call_id", "S"), ("seq", "N"), None, {}),
    "webhooks": (("webhook_id", "S"), None, "expires_at", {}),
    "tokens": (("pk", "S"), None, "expires_at", {"by_caller": ("caller_key", "minted_at")}),
    "leases": (("call_id", "S"), None, "expires_at", {}),
}
ATTR_TYPES = {"list_pk": "S", "created_key": "S", "state": "S", "seq": "N", "caller_key": "S", "minted_at": "N"}


def _type_of(av: dict) -> str:
    (t,) = av.keys()
    return t


def _scan(client, table):
    items, kw = [], {}
    while True:
        page = client.scan(TableName=table, **kw)
        items += page["Items"]
        if "LastEvaluatedKey" not in page:
            return items
        kw["ExclusiveStartKey"] = page["LastEvaluatedKey"]


@pytest.mark.parametrize("name", sorted(TABLES))
def test_table_and_items_as_documented(dynamo, name):
    client, m = dynamo
    table = f"{m['prefix']}_{name}"
    pk, sk, ttl, indexes = TABLES[name]
    desc = client.describe_table(TableName=table)["Table"]
    schema = {k["KeyType"]: k["AttributeName"] for k in desc["KeySchema"]}
    assert schema.get("HASH") == pk[0] and schema.get("RANGE") == (sk[0] if sk else None), schema
    types = {a["AttributeName"]: a["AttributeType"] for a in desc["AttributeDefinitions"]}
    want_types = {pk[0]: pk[1], **({sk[0]: sk[1]} if sk else {})}
    for h, r in indexes.values():
        want_types.setdefault(h, ATTR_TYPES.get(h, "S"))
        want_types.setdefault(r, ATTR_TYPES.get(r, "S"))
    assert types == want_types, types
    got_indexes = {
        i["IndexName"]: tuple(k["AttributeName"] for k in i["KeySchema"])
        for i in desc.get("GlobalSecondaryIndexes", []) + desc.get("LocalSecondaryIndexes", [])
    }
    assert got_indexes == indexes, got_indexes
    for i in desc.get("GlobalSecondaryIndexes", []) + desc.get("LocalSecondaryIndexes", []):
        assert i["Projection"]["ProjectionType"] == "ALL", i
    ttl_desc = client.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
    if ttl:
        assert ttl_desc.get("TimeToLiveStatus") in ("ENABLED", "ENABLING"), ttl_desc
        assert ttl_desc.get("AttributeName") == ttl, ttl_desc
    else:
        assert ttl_desc.get("TimeToLiveStatus", "DISABLED") == "DISABLED", ttl_desc
    validated(f"dynamodb table {name} (keys, indexes, TTL)")

    items = _scan(client, table)
    if name in ("calls", "events", "transcripts", "webhooks"):
        assert items, f"{table} has no items after the recorded calls"
    now = time.time()
    for item in items:
        for attr, t in want_types.items():
            if attr in item:
                assert _type_of(item[attr]) == t, f"{table} {attr}: {item[attr]} is not {t}"
        assert _type_of(item[pk[0]]) == pk[1] and (not sk or _type_of(item[sk[0]]) == sk[1]), item
        if ttl and ttl in item:
            assert _type_of(item[ttl]) == "N", f"{table} {ttl} is not a Number: {item[ttl]}"
            v = decimal.Decimal(item[ttl]["N"])
            assert v == v.to_integral_value(), f"{table} {ttl} {v} is not whole seconds"
            # Epoch seconds, not milliseconds: in the future, within a year.
            assert now - 60 < v < now + 366 * 86400, f"{table} {ttl} {v} is not epoch seconds ahead"
        validated(f"dynamodb item {name}")
    if name == "calls":
        assert len(items) == m["calls"], (len(items), m["calls"])
