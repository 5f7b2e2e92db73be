"""How the DynamoDB backend lays a :class:`store.TableSpec` out as a table: its attribute
definitions and global secondary indexes (also what deploy/aws/generate.py writes for AWS)."""
from __future__ import annotations

from typing import Any

from store import EXPIRES_AT, TableSpec

EXPIRY_INDEX, EXPIRY_SHARD = "expiry", "expiry_shard"


def _attributes(spec: TableSpec, sweep: bool = False) -> list[dict[str, str]]:
    types = {"pk": "S", **{i: "S" for i in spec.indexes}}
    for index in spec.ranges:
        types.update({index.key: "S", index.sort: "N"})
    if sweep:
        types.update({EXPIRY_SHARD: "S", EXPIRES_AT: "N"})
    return [{"AttributeName": name, "AttributeType": kind} for name, kind in types.items()]


def _indexes(spec: TableSpec) -> list[dict[str, Any]]:
    def gsi(name: str, hash_key: str, range_key: str, keys_only: bool = False
            ) -> dict[str, Any]:
        return {"IndexName": name,
                "Projection": {"ProjectionType": "KEYS_ONLY" if keys_only else "ALL"},
                "KeySchema": [{"AttributeName": hash_key, "KeyType": "HASH"},
                              {"AttributeName": range_key, "KeyType": "RANGE"}]}
    return ([gsi(f"by_{i}", i, "pk") for i in spec.indexes]
            + [gsi(f"range_{r.name}", r.key, r.sort, r.keys_only) for r in spec.ranges])


def _expiry_index() -> dict[str, Any]:
    return {"IndexName": EXPIRY_INDEX, "Projection": {"ProjectionType": "KEYS_ONLY"},
            "KeySchema": [{"AttributeName": EXPIRY_SHARD, "KeyType": "HASH"},
                          {"AttributeName": EXPIRES_AT, "KeyType": "RANGE"}]}
