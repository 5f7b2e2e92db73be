"""Spread index keys (``TableSpec.spread``, store/dynamo_spread.py): a key whose one value
would carry writes that grow with the fleet is written as ``SPREAD`` partition key values on
DynamoDB, and a query merges them in order, pages included, whatever mix of the release
before's layout and the spread one the table holds. Run on every backend (SQLite does not
spread: the same answers from one index); the nemesis counts the writes under each key."""
from __future__ import annotations

import random
import uuid
from typing import Callable

import pytest

from domains.repository import DOMAINS
from store import SPREAD, Backend, RangeIndex, Table, TableSpec, every
from store.dynamo import DynamoBackend
from tests.conftest import dynamo_client
from tests.dynamo_nemesis import Nemesis

SPEC = TableSpec("spread_things", key="id", indexes=("owner", "status"),
                 ranges=(RangeIndex("due", key="status", sort="next_at"),), spread=("status",))


def ids(read: Callable[[str | None], object]) -> list[str]:
    return [item["id"] for item in every(read)]  # type: ignore[arg-type]


def fill(backend: Backend, table: Table) -> dict[str, float]:
    """Items of status ``pending`` with a time each (ties among them), the first 30 written as
    the release before writes them, the rest spread; and some that are not due or elsewhere."""
    rng = random.Random(7)
    times = {}
    for n in range(70):
        if n == 30:
            backend.spread_keys()
        key = f"h{rng.randrange(10**6):06d}.example.test"
        times[key] = float(rng.randrange(25))
        table.put({"id": key, "status": "pending", "next_at": times[key], "owner": "o"})
    table.put({"id": "waiting.example.test", "status": "pending", "owner": "o"})  # not queued
    table.put({"id": "done.example.test", "status": "active", "next_at": 1.0, "owner": "o"})
    return times


def in_order(found: list[str], times: dict[str, float], wanted: list[str]) -> bool:
    """``found`` is ``wanted`` (each once) by time; items of one time come in the server's
    own order, on DynamoDB as on one value."""
    return sorted(found) == sorted(wanted) and len(found) == len(set(found)) \
        and [times[key] for key in found] == sorted(times[key] for key in wanted)


def test_a_spread_key_reads_in_order_across_its_values_and_pages(backend: Backend) -> None:
    table = backend.table(SPEC)
    times = fill(backend, table)
    due = list(times)
    for limit in (25, 500):
        found = ids(lambda c: table.query_range("due", "pending", limit=limit, cursor=c))
        assert in_order(found, times, due), (limit, found)
    first = table.query_range("due", "pending", limit=3)
    rest = ids(lambda c: table.query_range("due", "pending", limit=20, cursor=c or
                                           first.next_cursor))
    assert first.next_cursor and in_order([i["id"] for i in first.items] + rest, times, due)
    bounded = [key for key in due if 5.0 <= times[key] <= 12.0]
    found = ids(lambda c: table.query_range("due", "pending", lower=5.0, upper=12.0, limit=8,
                                            cursor=c))
    assert in_order(found, times, bounded)
    assert ids(lambda c: table.query_range("due", "active", cursor=c)) == ["done.example.test"]
    # The plain index on the same attribute: by key, every value merged.
    every_pending = sorted([*times, "waiting.example.test"])
    assert ids(lambda c: table.query("status", "pending", limit=30, cursor=c)) == every_pending
    # A rewrite moves an item of the release before's layout to the spread one: still once.
    moved = min(due[:30], key=lambda key: times[key])
    table.put({**table.get(moved), "next_at": 100.0})  # type: ignore[dict-item]
    times[moved] = 100.0
    found = ids(lambda c: table.query_range("due", "pending", limit=40, cursor=c))
    assert in_order(found, times, due) and found[-1] == moved
    table.delete(moved)
    assert moved not in ids(lambda c: table.query("status", "pending", cursor=c))
    with pytest.raises(ValueError):
        table.query_range("due", "pending", cursor="not json")


def test_the_rewrite_of_unspread_keys_is_idempotent_and_loses_nothing(backend: Backend) -> None:
    table = backend.table(SPEC)
    times = fill(backend, table)
    before = ids(lambda c: table.query_range("due", "pending", cursor=c))
    versions = {key: table.get(key)["version"] for key in times}  # type: ignore[index]
    first = table.respread()
    assert first == (0 if _sqlite(backend) else 30), "the items written before the switch"
    assert table.respread() == 0, "a second run finds nothing to do"
    assert in_order(ids(lambda c: table.query_range("due", "pending", cursor=c)), times, before)
    assert {key: table.get(key)["version"] for key in times} == versions, \
        "the data and the version stay: no writer's conditional write is disturbed"


def _sqlite(backend: Backend) -> bool:
    return not isinstance(backend, DynamoBackend)


@pytest.mark.slow
def test_writes_under_a_spread_key_take_each_value_an_even_share(
        dynamo_nemesis: Nemesis, nemesis: str) -> None:
    """The domains' hot keys (a status every domain has, the work queues' flags) on DynamoDB:
    one value takes every write before the store is migrated; after, no value of the
    ``SPREAD`` takes more than its share and a slack."""
    backend = DynamoBackend(dynamo_client(nemesis), prefix=f"t{uuid.uuid4().hex[:8]}_")
    writes, slack = 640, 0.35
    try:
        table = backend.table(DOMAINS)

        def domain(n: int) -> dict[str, object]:
            return {"hostname": f"d{n}.news{n % 7}.example.test", "status": "pending_dns",
                    "next_attempt_at": n, "outbox_state": "pending", "outbox_at": n,
                    "failing_set": "failing", "failing_since_ts": n, "claim": f"c{n}"}

        for n in range(20):  # as the release before (and this one before the migration) writes
            table.put(domain(n))
        assert _keys(dynamo_nemesis, table.name, "status") == {"pending_dns": 20}
        dynamo_nemesis.consumed.clear()
        backend.spread_keys()
        for n in range(20, 20 + writes):
            table.put(domain(n))
        for attr, value in (("status", "pending_dns"), ("outbox_state", "pending"),
                            ("failing_set", "failing")):
            counts = _keys(dynamo_nemesis, table.name, attr)
            assert set(counts) == {f"{value}#{n}" for n in range(SPREAD)}, counts
            assert sum(counts.values()) >= writes
            assert max(counts.values()) <= writes / SPREAD * (1 + slack), counts
        assert len(table.query_range("due", "pending_dns", limit=1000).items) == 20 + writes
        print(f"{writes} writes over {SPREAD} values: the busiest took "
              f"{max(_keys(dynamo_nemesis, table.name, 'status').values())}")
    finally:
        backend.close()


def _keys(nemesis: Nemesis, table: str, attr: str) -> dict[str, int]:
    return {value: n for (name, key, value), n in nemesis.consumed.items()
            if name == table and key == attr}
