"""The store bench's write units (bench/store_requests.py, bench/write_units.py) count what
DynamoDB bills for each global secondary index, not only the table's write: writes through the
real backend on dynalite, metered as the bench meters them."""
from __future__ import annotations

import uuid
from typing import Iterator

import boto3
import pytest

from bench.store_requests import Meter
from store import RangeIndex, TableSpec
from store.dynamo import DynamoBackend
from tests.conftest import dynamo_client

SPEC = TableSpec("metered", key="id", indexes=("owner", "status"),
                 ranges=(RangeIndex("due", key="status", sort="next_at"),))


@pytest.fixture
def metered(dynalite: str) -> Iterator[tuple[DynamoBackend, Meter]]:
    prefix = f"w{uuid.uuid4().hex[:8]}_"
    backend = DynamoBackend(dynamo_client(dynalite), prefix=prefix)
    reader = boto3.client("dynamodb", endpoint_url=dynalite, region_name="us-east-1")
    try:
        yield backend, Meter(backend, reader, prefix)
    finally:
        backend.close()


def test_each_index_write_is_counted_and_a_moved_index_key_twice(
        metered: tuple[DynamoBackend, Meter]) -> None:
    backend, meter = metered
    table = backend.table(SPEC)
    item = {"id": "a", "owner": "o1", "status": "active", "next_at": 10}
    created = meter.measure(lambda: table.put(item))
    assert (created.writes, dict(created.indexes)) == (
        1, {"metered.by_owner": 1, "metered.by_status": 1, "metered.range_due": 1})
    moved = meter.measure(lambda: table.put({**item, "next_at": 20}))
    assert (moved.writes, dict(moved.indexes)) == (
        1, {"metered.by_owner": 1, "metered.by_status": 1, "metered.range_due": 2}), \
        "a moved sort key is a delete and a put; the other entries are rewritten (ALL)"
    left = meter.measure(lambda: table.put({"id": "a", "owner": "o1"}))
    assert dict(left.indexes) == {"metered.by_owner": 1, "metered.by_status": 1,
                                  "metered.range_due": 1}, "leaving an index deletes its entry"
    plain = meter.measure(lambda: table.increment("a", "hits"))
    assert (plain.writes, plain.index_writes) == (1, 1), "a counter is projected too"
    big = meter.measure(lambda: table.put({"id": "b", "owner": "o1", "blob": "x" * 1500}))
    assert (big.writes, big.index_writes, big.write_units) == (2, 2, 4), "a unit per KB"
    gone = meter.measure(lambda: table.delete("b"))
    assert (gone.writes, dict(gone.indexes)) == (2, {"metered.by_owner": 2})
