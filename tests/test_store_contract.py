"""One contract, every backend: SQLite and DynamoDB (dynalite on loopback)."""
from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from store import ABSENT, ConflictError, Table, TableSpec
from store.dynamo import DynamoBackend
from store.sqlite import SqliteBackend
from tests.conftest import dynamo_client

SPEC = TableSpec("things", key="id", indexes=("owner", "status"))


@pytest.fixture(params=["sqlite", "dynamodb"])
def table(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Table]:
    if request.param == "sqlite":
        backend = SqliteBackend(str(tmp_path / "store.db"))
    else:
        backend = DynamoBackend(dynamo_client(request.getfixturevalue("dynalite")),
                                prefix=f"t{uuid.uuid4().hex[:8]}_")
    yield backend.table(SPEC)
    backend.close()


def test_put_get_roundtrip_bumps_version(table: Table) -> None:
    stored = table.put({"id": "a", "owner": "o1", "nested": {"x": [1, 2]}, "n": 1.5})
    assert stored["version"] == 1
    assert table.get("a") == {"id": "a", "owner": "o1", "nested": {"x": [1, 2]}, "n": 1.5,
                              "version": 1}
    assert table.put({**stored, "n": 2})["version"] == 2
    assert table.get("missing") is None


def test_conditional_put_on_absent(table: Table) -> None:
    table.put({"id": "a"}, expected_version=ABSENT)
    with pytest.raises(ConflictError) as caught:
        table.put({"id": "a", "other": 1}, expected_version=ABSENT)
    assert caught.value.key == "a"
    assert "other" not in table.get("a")


def test_conditional_put_on_version(table: Table) -> None:
    first = table.put({"id": "a", "n": 0})
    table.put({**first, "n": 1}, expected_version=1)
    with pytest.raises(ConflictError):
        table.put({**first, "n": 99}, expected_version=1)
    assert table.get("a")["n"] == 1
    with pytest.raises(ConflictError):
        table.put({"id": "nope"}, expected_version=3)


def test_only_one_of_racing_writers_wins(table: Table) -> None:
    table.put({"id": "race", "winner": None})
    wins: list[int] = []

    def attempt(n: int) -> None:
        try:
            table.put({"id": "race", "winner": n}, expected_version=1)
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
    table.put({"id": "a"})
    with pytest.raises(ConflictError):
        table.delete("a", expected_version=5)
    assert table.delete("a", expected_version=1) is True
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
    table.put({"id": "c", "owner": "o"})

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
    table.put({"id": "c", "owner": "o", "x": 1}, expected_version=1)
    assert table.get("c")["visits"] == 40, "a put must not reset counters"


def test_counter_alone_does_not_create_item(table: Table) -> None:
    assert table.increment("ghost", "hits", 3) == 3
    assert table.get("ghost") is None
    table.put({"id": "ghost"}, expected_version=ABSENT)


def test_expired_items_are_absent_everywhere(table: Table) -> None:
    table.put({"id": "old", "owner": "o", "expires_at": time.time() - 1})
    table.put({"id": "new", "owner": "o", "expires_at": time.time() + 3600})
    assert table.get("old") is None
    assert [i["id"] for i in table.query("owner", "o").items] == ["new"]
    assert [i["id"] for i in table.scan().items] == ["new"]
    assert table.put({"id": "old"}, expected_version=ABSENT)["version"] == 1
    table.put({"id": "old", "expires_at": time.time() - 1}, expected_version=1)
    with pytest.raises(ConflictError):
        table.put({"id": "old"}, expected_version=2)
