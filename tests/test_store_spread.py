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
from cryptography.fernet import Fernet

from certs.store import CERTIFICATES, EXPIRY_SET
from control import migrations
from domains.repository import DOMAINS
from edge.state import EdgeConfig, Redirect
from edge.state_store import (EDGE_CERTS, EDGE_NODES, EDGE_REDIRECTS, EDGE_ROUTES, EDGE_STATE,
                              EDGE_VISIT_REPORTS, EdgeStateStore)
from kit.vault import KeyVault
from kit.x509 import self_signed
from store import SPREAD, Backend, RangeIndex, Table, TableSpec, every
from store.dynamo import DynamoBackend, DynamoTable
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
    versions = {key: (table.get(key) or {})["version"] for key in times}
    first = table.respread()
    assert first == (0 if _sqlite(backend) else 30), "the items written before the switch"
    assert table.respread() == 0, "a second run finds nothing to do"
    assert in_order(ids(lambda c: table.query_range("due", "pending", cursor=c)), times, before)
    assert {key: (table.get(key) or {})["version"] for key in times} == versions, \
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


# --- the migration to schema 3 ---------------------------------------------------------------


class Crash(Exception):
    """The migrating process dies here."""


def edge(backend: Backend) -> EdgeStateStore:
    return EdgeStateStore(backend.table(EDGE_STATE), backend.table(EDGE_ROUTES),
                          backend.table(EDGE_CERTS), backend.table(EDGE_NODES),
                          KeyVault([Fernet.generate_key().decode()]),
                          backend.table(EDGE_VISIT_REPORTS),
                          redirects=backend.table(EDGE_REDIRECTS))


def schema_2_store(backend: Backend) -> EdgeStateStore:
    """A store at schema 2 as this release (or v0.1.0) writes it before the migration: every
    index key under its one value. Domains on each queue, certificates, routes and links (some
    expiring, some removed) in the edge feed."""
    migrations._record(backend, 2)
    domains, certs = backend.table(DOMAINS), backend.table(CERTIFICATES)
    for n in range(30):
        domains.put({"hostname": f"d{n}.example.test", "status": ("pending_dns", "active")[n % 2],
                     "next_attempt_at": 1000 + n % 7, "claim": f"c{n}",
                     **({"outbox_state": "pending", "outbox_at": n} if n % 3 == 0 else {}),
                     **({"failing_set": "failing", "failing_since_ts": n} if n % 4 == 0 else {})})
    for n in range(10):
        certs.put({"hostname": f"d{n}.example.test", "expiry_set": EXPIRY_SET,
                   "not_after_ts": 2000 + n % 3})
    store = edge(backend)
    config = EdgeConfig(("127.0.0.1:9",), ("127.0.0.1:9",))
    store.change({f"d{n}.example.test": ("pub_1", self_signed(f"d{n}.example.test")[1])
                  for n in range(4)}, config)
    store.change({}, redirects={f"go.example.test/l{n}": Redirect(
        "go.example.test", f"l{n}", 302, f"https://example.com/{n}", expires=3000 * (n % 2))
        for n in range(12)})
    store.change({"d0.example.test": None}, redirects={"go.example.test/l0": None})
    return store


def seen(backend: Backend, store: EdgeStateStore) -> dict[str, object]:
    """What every reader of a spread key reads (each list sorted: ties come in any order)."""
    domains, certs = backend.table(DOMAINS), backend.table(CERTIFICATES)

    def keys(read: Callable[[str | None], object], field: str = "hostname") -> list[str]:
        return sorted(str(item[field]) for item in every(read))  # type: ignore[arg-type]

    delta = store.changes_since(0)
    assert delta is not None
    return {
        "due": {s: keys(lambda c: domains.query_range("due", s, upper=1003, limit=8, cursor=c))
                for s in ("pending_dns", "active")},
        "status": keys(lambda c: domains.query("status", "active", limit=10, cursor=c)),
        "outbox": keys(lambda c: domains.query_range("outbox", "pending", limit=6, cursor=c)),
        "failing": keys(lambda c: domains.query_range("failing", "failing", cursor=c)),
        "expiry": keys(lambda c: certs.query_range("expiry", EXPIRY_SET, limit=3, cursor=c)),
        "routes": sorted(str(change) for change in delta["changes"]),
        "links": sorted(str(change) for change in delta["redirect_changes"]),
        "expiring": sorted(store.due_redirects(now=5000)),
    }


def unspread(backend: Backend) -> int:
    """Items whose stored index keys are still the one value (DynamoDB's raw items)."""
    if _sqlite(backend):
        return 0
    client, found = backend._client, 0  # type: ignore[attr-defined]
    for spec in migrations.SPREAD_TABLES:
        name = backend._prefix + spec.name  # type: ignore[attr-defined]
        for raw in client.scan(TableName=name, ConsistentRead=True)["Items"]:
            found += any("#" not in raw[attr]["S"] for attr in spec.spread if attr in raw)
    return found


def test_the_migration_to_schema_3_spreads_every_key_resumes_after_a_crash_and_loses_nothing(
        backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    store = schema_2_store(backend)
    before = seen(backend, store)
    assert all(before.values()) and all(before["due"].values())  # type: ignore[attr-defined]
    total = unspread(backend)
    assert total == (0 if _sqlite(backend) else 30 + 10 + 4 + 12), "nothing spread before"
    # The process dies mid-way: on DynamoDB in the middle of the rewrite, on SQLite (nothing
    # to rewrite) after the step, before its number is recorded.
    rewrites: list[object] = []
    respread_item = DynamoTable._respread_item

    def dying(table: DynamoTable, raw: dict[str, object]) -> int:
        if len(rewrites) == 25:
            raise Crash()
        changed = respread_item(table, raw)
        rewrites.extend([raw] * changed)
        return changed

    monkeypatch.setattr(DynamoTable, "_respread_item", dying)
    record = migrations._record

    def dying_before_recording(store: Backend, number: int) -> None:
        if number == 3:
            raise Crash()
        record(store, number)

    monkeypatch.setattr(migrations, "_record", dying_before_recording)
    with pytest.raises(Crash):
        migrations.apply(backend)
    assert migrations.schema_version(backend) == 2
    assert unspread(backend) == (0 if _sqlite(backend) else total - 25), "half-way"
    assert seen(backend, store) == before, "a half-spread store reads the same"
    monkeypatch.undo()
    done = migrations.apply(backend)
    assert [(m.number, n) for m, n in done][0] == (3, 0 if _sqlite(backend) else total - 25)
    assert migrations.schema_version(backend) == migrations.SCHEMA and unspread(backend) == 0
    assert seen(backend, store) == before
    assert migrations.spread_index_keys(backend) == 0, "run again: nothing to do"
    # Written from now on: spread, also by a process that starts after the migration.
    later = backend if _sqlite(backend) else DynamoBackend(
        backend._sdk, backend._prefix)  # type: ignore[attr-defined]
    later.table(DOMAINS).put({"hostname": "new.example.test", "status": "active",
                              "next_attempt_at": 1001, "claim": "c"})
    assert unspread(backend) == 0
    assert "new.example.test" in seen(backend, store)["due"]["active"]  # type: ignore[index]


@pytest.mark.slow
def test_the_edge_feed_spreads_its_writes_and_reads_every_change(
        dynamo_nemesis: Nemesis, nemesis: str) -> None:
    """The feed's index keys (``feed#n``), written by commits of many links: each takes its
    share, and a delta read through them all (the index lagging) names every change."""
    backend = DynamoBackend(dynamo_client(nemesis), prefix=f"t{uuid.uuid4().hex[:8]}_")
    try:
        backend.spread_keys()
        store = edge(backend)
        store.change({}, redirects={f"go.example.test/l{n}": Redirect(
            "go.example.test", f"l{n}", 302, f"https://example.com/{n}") for n in range(4)})
        since = int(store.meta()["revision"])  # type: ignore[index]
        dynamo_nemesis.lag = 0.2
        links = 400
        store.change({}, redirects={f"go.example.test/m{n}": Redirect(
            "go.example.test", f"m{n}", 302, f"https://example.com/{n}") for n in range(links)})
        delta = store.changes_since(since)
        assert delta is not None and len(delta["redirect_changes"]) == links
        counts = {value: n for (name, attr, value), n in dynamo_nemesis.consumed.items()
                  if name.endswith("edge_redirects") and attr == "feed"
                  and n and value != "routes"}
        writes = sum(n for value, n in counts.items() if "#" in value)
        assert set(counts) == {f"routes#{n}" for n in range(SPREAD)}, counts
        assert max(counts.values()) <= writes / SPREAD * 1.4, counts
        print(f"{writes} feed writes over {SPREAD} values: the busiest took "
              f"{max(counts.values())}")
    finally:
        backend.close()
