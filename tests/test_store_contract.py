"""One contract, every backend: SQLite and DynamoDB (dynalite on loopback)."""
from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from store import (ABSENT, FIRST_VERSIONS, Backend, ConflictError, RangeIndex, StoreError, Table,
                   TableSpec, Throttled, every)
from kit.settings import Settings
from store.dynamo import DynamoBackend
from tests.conftest import dynamo_client, opened_backend, wait_until
from tests.dynamo_nemesis import Nemesis

DUE = RangeIndex("due", key="status", sort="next_at")
SPEC = TableSpec("things", key="id", indexes=("owner", "status"), ranges=(DUE,))
OLD_SPEC = TableSpec("things", key="id", indexes=("owner", "status"))
"""The same table as an earlier version defined it, before its range index."""


@pytest.fixture
def table(backend: Backend) -> Table:
    return backend.table(SPEC)


def test_put_get_roundtrip_bumps_version(table: Table) -> None:
    stored = table.put({"id": "a", "owner": "o1", "nested": {"x": [1, 2]}, "n": 1.5})
    first = stored["version"]
    assert FIRST_VERSIONS[0] <= first < FIRST_VERSIONS[1]
    assert table.get("a") == {"id": "a", "owner": "o1", "nested": {"x": [1, 2]}, "n": 1.5,
                              "version": first}
    assert table.put({**stored, "n": 2})["version"] == first + 1
    assert table.get("missing") is None


def test_an_item_made_again_never_repeats_the_versions_of_the_one_deleted(table: Table) -> None:
    """Else a write conditional on a copy read before the delete lands on the new item (ABA):
    a stale copy of a removed domain written over the next owner's claim."""
    for expected in (ABSENT, None):  # a create, and an unconditional put where none lives
        stale = table.put({"id": "aba", "owner": "before"}, expected_version=expected)
        assert table.delete("aba", expected_version=stale["version"])
        again = table.put({"id": "aba", "owner": "after"}, expected_version=expected)
        again = table.put({**again, "n": 1}, expected_version=again["version"])
        assert again["version"] not in (stale["version"], stale["version"] + 1)
        with pytest.raises(ConflictError):
            table.put({**stale, "owner": "stale"}, expected_version=stale["version"])
        assert (table.get("aba") or {})["owner"] == "after"
        table.delete("aba")


def test_conditional_put_on_absent(table: Table) -> None:
    table.put({"id": "a"}, expected_version=ABSENT)
    with pytest.raises(ConflictError) as caught:
        table.put({"id": "a", "other": 1}, expected_version=ABSENT)
    assert caught.value.key == "a"
    assert "other" not in table.get("a")


def test_conditional_put_on_version(table: Table) -> None:
    first = table.put({"id": "a", "n": 0})
    table.put({**first, "n": 1}, expected_version=first["version"])
    with pytest.raises(ConflictError):
        table.put({**first, "n": 99}, expected_version=first["version"])
    assert table.get("a")["n"] == 1
    with pytest.raises(ConflictError):
        table.put({"id": "nope"}, expected_version=3)


def test_only_one_of_racing_writers_wins(table: Table) -> None:
    version = table.put({"id": "race", "winner": None})["version"]
    wins: list[int] = []

    def attempt(n: int) -> None:
        try:
            table.put({"id": "race", "winner": n}, expected_version=version)
            wins.append(n)
        except ConflictError:
            pass

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(wins) == 1
    assert table.get("race")["winner"] == wins[0]


def test_delete_plain_and_conditional(table: Table) -> None:
    version = table.put({"id": "a"})["version"]
    with pytest.raises(ConflictError):
        table.delete("a", expected_version=version + 4)
    assert table.delete("a", expected_version=version) is True
    assert table.get("a") is None
    assert table.delete("a") is False


def test_query_by_index_pages_and_follows_updates(table: Table) -> None:
    for n in range(7):
        table.put({"id": f"k{n}", "owner": "o1" if n % 2 == 0 else "o2", "status": "new"})
    first = table.query("owner", "o1", limit=3)
    assert len(first.items) == 3 and first.next_cursor
    rest = table.query("owner", "o1", limit=3, cursor=first.next_cursor)
    assert sorted(i["id"] for i in first.items + rest.items) == ["k0", "k2", "k4", "k6"]
    assert rest.next_cursor is None or not table.query("owner", "o1", cursor=rest.next_cursor).items
    table.put({"id": "k0", "owner": "o2"})
    assert "k0" not in [i["id"] for i in table.query("owner", "o1").items]
    assert [i["id"] for i in table.query("status", "new").items if i["id"] == "k0"] == []
    with pytest.raises(ValueError):
        table.query("colour", "red")


def test_scan_lists_everything(table: Table) -> None:
    for n in range(5):
        table.put({"id": f"s{n}"})
    seen, cursor = [], None
    while True:
        page = table.scan(limit=2, cursor=cursor)
        seen += [item["id"] for item in page.items]
        cursor = page.next_cursor
        if not cursor:
            break
    assert sorted(seen) == [f"s{n}" for n in range(5)]


def test_atomic_counter_under_concurrency(table: Table) -> None:
    version = table.put({"id": "c", "owner": "o"})["version"]

    def bump() -> None:
        for _ in range(10):
            table.increment("c", "visits")

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert table.increment("c", "visits", 0) == 40
    assert table.get("c")["visits"] == 40
    table.put({"id": "c", "owner": "o", "x": 1}, expected_version=version)
    assert table.get("c")["visits"] == 40, "a put must not reset counters"


def test_counter_alone_does_not_create_item(table: Table) -> None:
    assert table.increment("ghost", "hits", 3) == 3
    assert table.get("ghost") is None
    table.put({"id": "ghost"}, expected_version=ABSENT)


def test_a_counter_of_existing_items_only_leaves_no_orphan(table: Table) -> None:
    assert table.increment("gone", "hits", 3, existing_only=True) is None
    table.put({"id": "gone"}, expected_version=ABSENT)
    assert table.increment("gone", "hits", 2, existing_only=True) == 2, "nothing was kept"
    table.delete("gone")
    assert table.increment("gone", "hits", 1, existing_only=True) is None


def test_expired_items_are_absent_everywhere(table: Table) -> None:
    table.put({"id": "old", "owner": "o", "expires_at": time.time() - 1})
    table.put({"id": "new", "owner": "o", "expires_at": time.time() + 3600})
    assert table.get("old") is None
    assert [i["id"] for i in table.query("owner", "o").items] == ["new"]
    assert [i["id"] for i in table.scan().items] == ["new"]
    made = table.put({"id": "old"}, expected_version=ABSENT)["version"]
    table.put({"id": "old", "expires_at": time.time() - 1}, expected_version=made)
    with pytest.raises(ConflictError):
        table.put({"id": "old"}, expected_version=made + 1)


def test_get_many_reads_live_items_in_one_request_per_hundred_keys(backend: Backend) -> None:
    table = backend.table(SPEC)
    keys = [f"b{n:03}" for n in range(230)]
    for key in keys:
        table.put({"id": key, "owner": "o"})
    table.put({"id": "b007", "expires_at": time.time() - 1})
    table.increment("b001", "hits", 2)
    before = backend.requests
    found = table.get_many([*keys, "b001", "absent"])  # a key twice is read once
    assert backend.requests - before == 3, "ceil(231 keys / 100) requests"
    assert sorted(found) == [key for key in keys if key != "b007"]
    assert found["b001"] == {**table.get("b001"), "hits": 2} and found["b000"]["version"] >= FIRST_VERSIONS[0]
    assert table.get_many([]) == {}


def test_a_keys_only_range_index_answers_keys_in_order(backend: Backend) -> None:
    table = backend.table(TableSpec("keyed", key="id", ranges=(
        RangeIndex("by_place", key="place", sort="at", keys_only=True),)))
    for n in (3, 1, 2):
        table.put({"id": f"k{n}", "place": "p1", "at": n, "other": "x" * 50})
    table.put({"id": "k9", "place": "p2", "at": 9})
    table.increment("k1", "hits")
    first = table.query_range("by_place", "p1", limit=2)
    rest = table.query_range("by_place", "p1", cursor=first.next_cursor)
    assert first.items + rest.items == [{"id": f"k{n}", "place": "p1", "at": n}
                                        for n in (1, 2, 3)]
    table.put({"id": "k2", "place": "p2", "at": 2})
    assert [item["id"] for item in table.query_range("by_place", "p1").items] == ["k1", "k3"]


def test_a_batch_read_asks_again_for_the_keys_it_was_left(
        dynamo_nemesis: Nemesis, nemesis: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """DynamoDB answers part of a batch read under throttling (``UnprocessedKeys``): the rest
    is asked again, and a batch that stays unanswered is :class:`store.Throttled`."""
    backend = DynamoBackend(dynamo_client(nemesis), prefix=f"t{uuid.uuid4().hex[:8]}_")
    try:
        table = backend.table(SPEC)
        for n in range(150):
            table.put({"id": f"u{n}"})
        # Each key but the first left out with this chance a request: a chunk of 100 keys is
        # still not read after 8 rounds 2e-9 of the time (0.5 failed 0.8% of runs, CI once).
        dynamo_nemesis.unprocessed_rate = 0.3
        before = backend.requests
        assert sorted(table.get_many([f"u{n}" for n in range(150)])) \
            == sorted(f"u{n}" for n in range(150))
        assert dynamo_nemesis.injected["unprocessed"] > 0 and backend.requests - before > 2
        monkeypatch.setattr("store.dynamo_table.BATCH_BACKOFF", 0.001)
        dynamo_nemesis.unprocessed_rate = 1.0  # one key a request: more rounds than allowed
        with pytest.raises(Throttled):
            table.get_many([f"u{n}" for n in range(20)])
    finally:
        backend.close()


def _due(table: Table, status: str, **bounds: float) -> list[str]:
    return [item["id"] for item in every(
        lambda cursor: table.query_range("due", status, limit=2, cursor=cursor, **bounds))]


def test_range_query_orders_bounds_and_pages(table: Table) -> None:
    for n, at in enumerate([50.0, 10.0, 30.0, 30.0, 70.0, 20.5]):
        table.put({"id": f"d{n}", "status": "pending", "next_at": at})
    table.put({"id": "other", "status": "active", "next_at": 1.0})
    table.put({"id": "idle", "status": "pending", "next_at": None})  # not queued
    table.put({"id": "flag", "status": "pending", "next_at": True})  # not a number
    assert _due(table, "pending") == ["d1", "d5", "d2", "d3", "d0", "d4"]
    assert _due(table, "pending", upper=30.0) == ["d1", "d5", "d2", "d3"]
    assert _due(table, "pending", lower=20.5, upper=50.0) == ["d5", "d2", "d3", "d0"]
    assert _due(table, "pending", lower=60.0) == ["d4"]
    assert _due(table, "pending", lower=40.5, upper=40.0) == [], "an empty range, no error"
    page = table.query_range("due", "pending", upper=30.0, limit=1)
    assert [i["id"] for i in page.items] == ["d1"] and page.next_cursor
    assert page.items[0]["next_at"] == 10.0 and page.items[0]["version"] >= FIRST_VERSIONS[0]
    with pytest.raises(ValueError):
        table.query_range("nope", "pending")


def test_range_query_follows_updates_deletes_and_expiry(table: Table) -> None:
    stored = table.put({"id": "a", "status": "pending", "next_at": 5})
    table.put({"id": "b", "status": "pending", "next_at": 6, "expires_at": time.time() - 1})
    assert _due(table, "pending") == ["a"]
    moved = table.put({**stored, "next_at": 500}, expected_version=stored["version"])
    assert _due(table, "pending", upper=100) == []
    table.put({**moved, "status": "active"})
    assert _due(table, "pending") == [] and _due(table, "active") == ["a"]
    table.put({**moved, "status": "active", "next_at": None})
    assert _due(table, "active") == [], "clearing the sort attribute dequeues it"
    table.put({"id": "a", "status": "active", "next_at": 1})
    table.delete("a")
    assert _due(table, "active") == []


@pytest.fixture(params=["sqlite", "moto_server"])
def upgraded(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """A backend that can add an index to an existing table (dynalite ignores UpdateTable's
    index creation; real DynamoDB and moto_server do it)."""
    yield from opened_backend(request, tmp_path)


def test_a_table_from_before_its_range_index_is_migrated_on_open(upgraded: Backend) -> None:
    backend = upgraded
    old = backend.table(OLD_SPEC)
    for n in range(3):
        old.put({"id": f"m{n}", "status": "pending", "next_at": 30 - n})
    old.put({"id": "none", "status": "pending"})
    migrated = backend.table(SPEC)
    assert _due(migrated, "pending") == ["m2", "m1", "m0"]
    assert migrated.get("m0") is not None and migrated.get("none") is not None
    migrated.put({"id": "m3", "status": "pending", "next_at": 1})
    assert _due(backend.table(SPEC), "pending") == ["m3", "m2", "m1", "m0"]


def test_a_server_that_cannot_add_the_index_is_refused_with_a_reason(dynalite: str) -> None:
    backend = DynamoBackend(dynamo_client(dynalite), prefix=f"t{uuid.uuid4().hex[:8]}_")
    try:
        backend.table(OLD_SPEC).put({"id": "x", "status": "pending", "next_at": 1})
        with pytest.raises(StoreError, match="range_due"):
            backend.table(SPEC)
    finally:
        backend.close()


EXPIRING = TableSpec("expiring_things", key="id", indexes=("owner",), expiring=True)


def test_purge_expired_deletes_only_what_is_due_soonest_first(backend: Backend) -> None:
    table = backend.table(EXPIRING)
    base = time.time() + 1000  # an injected clock ahead of the wall clock: all live to reads
    for n in range(5):
        table.put({"id": f"a{n}", "owner": "o", "expires_at": base + 10 * n})
    table.put({"id": "forever", "owner": "o"})
    table.increment("a0", "visits", 3)
    assert table.purge_expired(now=base - 1) == 0
    before = backend.requests
    assert table.purge_expired(now=base - 1) == 0
    assert backend.requests - before == 1, "nothing due: one request, whatever the table holds"
    assert table.purge_expired(now=base + 25, limit=2) == 2
    assert table.get("a0") is None and table.get("a1") is None
    assert table.purge_expired(now=base + 25) == 1
    assert [item["id"] for item in every(lambda c: table.query("owner", "o", cursor=c))] == [
        "a3", "a4", "forever"]
    table.put({**table.get("a3"), "expires_at": base + 100})  # renewed: no longer due
    assert table.purge_expired(now=base + 45) == 1
    assert table.get("a3") is not None and table.get("a4") is None
    table.put({"id": "a0", "owner": "o"})
    assert "visits" not in table.get("a0"), "its counters went with it"
    assert table.get("forever") is not None


def test_purge_is_only_for_expiring_tables(backend: Backend) -> None:
    with pytest.raises(ValueError):
        backend.table(SPEC).purge_expired()


def test_a_server_with_ttl_deletes_expired_items_itself(moto_server: str) -> None:
    backend = DynamoBackend(dynamo_client(moto_server), prefix=f"t{uuid.uuid4().hex[:8]}_")
    try:
        assert backend.supports_ttl()
        table = backend.table(EXPIRING)
        table.put({"id": "x", "expires_at": time.time() - 1})
        assert table.get("x") is None, "filtered on read until the server deletes it"
        ttl = dynamo_client(moto_server).describe_time_to_live(TableName=table.name)
        assert ttl["TimeToLiveDescription"]["TimeToLiveStatus"] == "ENABLED"
        before = backend.requests
        assert table.purge_expired() == 0 and backend.requests == before
    finally:
        backend.close()


@pytest.mark.slow
def test_on_dynamodb_an_index_lags_its_table_and_a_hot_key_shows(
        dynamo_nemesis: Nemesis, nemesis: str) -> None:
    """What the design tolerates (docs/dynamodb.md): a single item is read consistently at
    once, an index shows the write later; and the writes under one index key are counted."""
    backend = DynamoBackend(dynamo_client(nemesis), prefix=f"t{uuid.uuid4().hex[:8]}_")
    try:
        table = backend.table(SPEC)
        dynamo_nemesis.lag = 600.0  # longer than any load can stretch these writes
        for n in range(20):
            table.put({"id": f"i{n}", "owner": "o1", "status": f"s{n % 10}"})
        assert table.get("i19") is not None, "a consistent read of the item sees it"
        assert table.query("owner", "o1").items == [], "the index does not yet"
        assert len(table.scan(limit=100).items) == 20, "a scan of the table reads consistently"
        dynamo_nemesis.lag = 0.0  # the index catches up
        wait_until(lambda: len(table.query("owner", "o1").items) == 20, 5, "the index")
        hot = dynamo_nemesis.hot_keys(table.name)
        assert hot[0][0] == (table.name, "owner", "o1") and hot[0][1] >= 20
    finally:
        backend.close()
