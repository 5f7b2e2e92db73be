"""A restore into DynamoDB writes whole items, 25 to a BatchWriteItem and several at once:
every item comes back laid out exactly as the table's own writes lay it out (index and range
attributes, spread values, expiry, versions, counters, counters without an item), and a batch
the server leaves unwritten is asked again or reported, never dropped."""
from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import pytest
from cryptography.fernet import Fernet

from store import (META, SCHEMA_ITEM, SPREAD_SCHEMA, RangeIndex, StoreError, Table,
                   TableSpec, every)
from store.backup import BackupError, Stored, check_backup, restore_backup, take_backup
from store.backup_stores import DynamoSource, DynamoTarget, SqliteSource
from store.dynamo import DynamoBackend, client_config
from store.dynamo_table import WRITE_ID
from store.sqlite import SqliteBackend
from tests.dynamo_nemesis import Nemesis

DOMAINS = TableSpec("rb_domains", key="hostname", indexes=("status", "owner"),
                    ranges=(RangeIndex("due", "status", "due_at"),), spread=("status",))
SESSIONS = TableSpec("rb_sessions", key="id", indexes=("user",), expiring=True,
                     ranges=(RangeIndex("seen", "user", "seen_at", keys_only=True),))
LINKS = TableSpec("rb_links", key="slug", indexes=("domain",))
SPECS = (DOMAINS, SESSIONS, LINKS)
SCHEMA = TableSpec(META, key="name")
STATUSES = ("active", "pending", "failed")
KEY = Fernet.generate_key().decode()


def _fill(backend: Any, domains: int, sessions: int, links: int) -> None:
    """Items of every kind: in indexes and out (None), written twice (version 2), expiring
    (and expired: not backed up), with counters, and counters kept without an item."""
    tables = {spec.name: backend.table(spec) for spec in SPECS}
    now = time.time()

    def domain(n: int) -> None:
        table = tables[DOMAINS.name]
        item = {"hostname": f"d{n}.test", "owner": f"pub_{n % 13}", "n": n,
                "status": None if n % 7 == 0 else STATUSES[n % 3],
                **({"due_at": now + n} if n % 2 else {})}
        for _ in range(1 + (n % 3 == 0)):
            table.put(item)
        if n % 5 == 0:
            table.increment(f"d{n}.test", "visits", n + 1)

    def session(n: int) -> None:
        expiry = {} if n % 4 == 0 else {"expires_at": now + (-60 if n % 9 == 0 else 3600 + n)}
        tables[SESSIONS.name].put({"id": f"s{n}", "user": f"u{n % 17}", "seen_at": n * 1.5,
                                   "text": "é\u2028\"x\"", **expiry})

    def link(n: int) -> None:
        if n % 4 == 0:  # counters alone (a count racing a delete)
            tables[LINKS.name].increment(f"gone{n}", "visits", n + 1)
            return
        tables[LINKS.name].put({"slug": f"l{n}", "domain": f"go{n % 3}.test",
                                **({} if n % 2 else {"kind": "plain"})})
        tables[LINKS.name].increment(f"l{n}", "visits", 2)
    with ThreadPoolExecutor(8) as pool:
        for write, count in ((domain, domains), (session, sessions), (link, links)):
            list(pool.map(write, range(count)))


def _raw(backend: DynamoBackend, spec: TableSpec) -> dict[str, dict[str, Any]]:
    """Every stored item of the table as DynamoDB holds it, by key."""
    found: dict[str, dict[str, Any]] = {}
    start: dict[str, Any] | None = None
    while True:
        page = backend._client.scan(TableName=backend._prefix + spec.name, ConsistentRead=True,
                                    **({"ExclusiveStartKey": start} if start else {}))
        for raw in page["Items"]:
            raw.pop(WRITE_ID, None)  # a write's own mark, not data: a restore leaves it
        found.update({raw["pk"]["S"]: raw for raw in page["Items"]})
        start = page.get("LastEvaluatedKey")
        if not start:
            return found


def _reads(table: Table, keys: list[str]) -> dict[str, Any]:
    """What the product's reads answer of these keys and of every index value."""
    answers: dict[str, Any] = {"get": {key: table.get(key) for key in keys},
                               "get_many": table.get_many(keys)}
    values = {"status": STATUSES, "owner": [f"pub_{n}" for n in range(13)],
              "user": [f"u{n}" for n in range(17)], "domain": [f"go{n}.test" for n in range(3)]}
    for index in table.spec.indexes:
        answers[index] = {value: list(every(lambda cursor, v=value: table.query(
            index, v, limit=97, cursor=cursor))) for value in values[index]}
    for found in table.spec.ranges:
        answers[found.name] = {value: list(every(lambda cursor, v=value: table.query_range(
            found.name, v, limit=89, cursor=cursor))) for value in values[found.key]}
    return answers


def _client(endpoint: str) -> Any:
    """A client as the product's (its retries, a connection for each thread)."""
    return boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1",
                        config=client_config())


def _dynamo(endpoint: str) -> DynamoBackend:
    backend = DynamoBackend(_client(endpoint), prefix=f"b{uuid.uuid4().hex[:8]}_")
    backend.spread_keys()  # as a store after the migration to SPREAD_SCHEMA
    return backend


@pytest.mark.slow
def test_a_restore_lays_out_every_item_as_the_tables_own_writes(
        dynalite: str, tmp_path: Path) -> None:
    source, target = _dynamo(dynalite), _dynamo(dynalite)
    try:
        _fill(source, domains=1500, sessions=700, links=800)
        path = tmp_path / "many.backup"
        reader = DynamoSource(DynamoBackend(_client(dynalite), source._prefix), SPECS)
        try:
            manifest = take_backup(reader, SPECS, path, "test", encryption_keys=[KEY])
        finally:
            reader.close()
        assert check_backup(path, SPECS, [KEY]).items == manifest.items > 2500
        restore_backup(DynamoTarget(target), SPECS, path)
        sessions = source.table(SESSIONS)  # expired: left out of the backup (a keys-only
        for key, raw in _raw(source, SESSIONS).items():  # index still answers them)
            if float(raw.get("expires_at", {"N": "inf"})["N"]) <= time.time():
                sessions.delete(key)
        for spec in SPECS:
            existing, restored = _raw(source, spec), _raw(target, spec)
            assert restored == existing, f"{spec.name}: every attribute as put lays it out"
            keys = sorted(existing)
            assert _reads(target.table(spec), keys) == _reads(source.table(spec), keys)
        assert any("#" in raw["status"]["S"] for raw in _raw(target, DOMAINS).values()
                   if "status" in raw), "the status index keys are spread"
        links = target.table(LINKS)
        assert [links.increment(f"gone{n}", "visits", 0) for n in (0, 4, 796)] == [1, 5, 797]
        assert links.get("gone4") is None, "counters alone make no item"
    finally:
        source.close()
        target.close()


def test_a_key_loaded_twice_is_never_in_one_batch(dynalite: str) -> None:
    """DynamoDB refuses a batch naming one key twice: the second waits for the first and
    replaces the whole item, as a put would."""
    backend = _dynamo(dynalite)
    try:
        target = DynamoTarget(backend)
        target.load(LINKS, Stored("l1", 3, '{"domain": "a.test", "slug": "l1"}', {"visits": 4}))
        target.load(LINKS, Stored("l2", 1, '{"slug": "l2"}', {}))
        target.load(LINKS, Stored("l1", 5, '{"domain": "b.test", "slug": "l1"}', {}))
        target.flush()
        table = backend.table(LINKS)
        assert table.get("l1") == {"domain": "b.test", "slug": "l1", "version": 5}
        assert [item["slug"] for item in table.query("domain", "b.test").items] == ["l1"]
        assert table.get("l2") == {"slug": "l2", "version": 1}
    finally:
        backend.close()


@pytest.mark.parametrize("schema", [SPREAD_SCHEMA - 1, SPREAD_SCHEMA])
def test_index_keys_are_spread_as_the_restored_schema_says(
        dynalite: str, tmp_path: Path, schema: int) -> None:
    """The schema is restored first: a store whose schema spreads gets its index keys spread
    (not 1,500 statuses on one partition key); one whose schema does not, a replica of the
    release before may read beside, gets them as that release wrote them."""
    store = SqliteBackend(str(tmp_path / "schema.db"))
    try:
        _fill(store, domains=50, sessions=0, links=0)
        store.table(SCHEMA).put({"name": SCHEMA_ITEM, "schema_version": schema})
    finally:
        store.close()
    source = SqliteSource(str(tmp_path / "schema.db"))
    try:
        take_backup(source, (DOMAINS, SCHEMA), tmp_path / "schema.backup", "test")
    finally:
        source.close()
    backend = DynamoBackend(_client(dynalite), prefix=f"b{uuid.uuid4().hex[:8]}_")
    try:
        restore_backup(DynamoTarget(backend), (DOMAINS, SCHEMA), tmp_path / "schema.backup")
        stored = [raw["status"]["S"] for raw in _raw(backend, DOMAINS).values()
                  if "status" in raw]
        assert len(stored) == 42 and all(("#" in value) == (schema >= SPREAD_SCHEMA)
                                         for value in stored)
    finally:
        backend.close()


def _sqlite_backup(tmp_path: Path) -> Path:
    store = SqliteBackend(str(tmp_path / "source.db"))
    try:
        _fill(store, domains=300, sessions=100, links=100)
    finally:
        store.close()
    source = SqliteSource(str(tmp_path / "source.db"))
    try:
        take_backup(source, SPECS, tmp_path / "small.backup", "test")
    finally:
        source.close()
    return tmp_path / "small.backup"


def _items(backend: Any) -> dict[str, list[dict[str, Any]]]:
    return {spec.name: sorted(every(lambda cursor, s=spec: backend.table(s).scan(
        limit=500, cursor=cursor)), key=lambda item: str(item[spec.key])) for spec in SPECS}


@pytest.mark.slow
def test_batches_left_unprocessed_are_written_again_or_reported(
        dynamo_nemesis: Nemesis, nemesis: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Under the nemesis' weather (throttling, 500s, slowness) and with half the writes of
    each batch left unprocessed, every item arrives; a batch that stays unprocessed, or
    whose requests keep failing, fails the restore with its sentence, never a silent loss.
    The deletes of ``--force`` go the same way."""
    path = _sqlite_backup(tmp_path)
    source = SqliteBackend(str(tmp_path / "source.db"))
    backend = _dynamo(nemesis)
    try:
        dynamo_nemesis.unprocessed_rate = 0.5
        restore_backup(DynamoTarget(backend), SPECS, path)
        assert dynamo_nemesis.injected["unprocessed"] > 100
        assert _items(backend) == _items(source)
        backend.table(LINKS).put({"slug": "extra"})
        restore_backup(DynamoTarget(backend), SPECS, path, force=True)  # deletes in batches
        assert _items(backend) == _items(source)

        monkeypatch.setattr("store.backup_stores.WRITE_BACKOFF", 0.001)
        dynamo_nemesis.unprocessed_rate = 1.0  # one write a request: more rounds than allowed
        with pytest.raises(BackupError, match="unprocessed after .* restore again with --force"):
            restore_backup(DynamoTarget(backend), SPECS, path, force=True)

        dynamo_nemesis.unprocessed_rate, dynamo_nemesis.only = 0.0, ("BatchWriteItem",)
        dynamo_nemesis.fail_rate, dynamo_nemesis.failures = 1.0, ("internal",)
        target = DynamoTarget(backend)
        target.load(LINKS, Stored("l1", 1, '{"slug": "l1"}', {}))
        with pytest.raises(StoreError, match="batch_write_item"):
            target.flush()
    finally:
        source.close()
        backend.close()
