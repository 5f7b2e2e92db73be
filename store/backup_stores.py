"""Where a backup reads from and a restore writes to, for each backend.

SQLite: the online backup API copies the live database in one step (a read transaction, so
writers carry on under WAL) into a scratch file, and the items are read from that copy: the
store at one instant. DynamoDB has no such instant short of point-in-time recovery: each table
is scanned with strongly consistent reads, so every item is as stored when read and every write
acknowledged before the backup started is in it (unless changed again meanwhile).

A restore into SQLite writes each item through the table's own ``put`` (which lays out its
index columns and expiry), then sets its version and stored text back to what the backup
holds, byte for byte, and its counters. Into DynamoDB it writes whole items, laid out by the
table's own :meth:`DynamoTable.raw_item` (what ``put`` and the counters' increments would
store), 25 to a BatchWriteItem, ``WRITERS`` of those at once: a restore is bound by the
tables' write capacity, not by round trips (two per item were hours for a fleet).
"""
from __future__ import annotations

import json
import random
import sqlite3
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Iterator

from botocore.exceptions import BotoCoreError, ClientError

from store import StoreError, TableSpec
from store.backup import FAILED, BackupError, Stored
from store.dynamo import DynamoBackend, DynamoTable
from store.dynamo_spread import Raw
from store.sqlite import SqliteBackend, SqliteTable


class SqliteSource:
    backend = "sqlite"
    consistency = "snapshot"

    def __init__(self, path: str) -> None:
        if path == ":memory:" or not Path(path).is_file():
            raise BackupError(f"no SQLite store at {path} (the sqlite_path setting)", FAILED)
        self._scratch = tempfile.TemporaryDirectory(prefix="edge-backup-")
        snapshot = Path(self._scratch.name) / "snapshot.db"
        live = sqlite3.connect(path, timeout=30)
        self._db = sqlite3.connect(snapshot)
        try:
            live.backup(self._db)  # all pages in one step: one consistent read
            tables = {row[0] for row in self._db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.Error as exc:
            self.close()
            raise BackupError(f"cannot copy the SQLite store at {path}: {exc}", FAILED) from None
        finally:
            live.close()
        if "counters" not in tables:
            self.close()
            raise BackupError(f"{path} is not a store of this product (it has no counters "
                              "table)", FAILED)
        self._tables = tables

    def dump(self, spec: TableSpec) -> Iterator[Stored]:
        if f"t_{spec.name}" not in self._tables:
            return
        counters: dict[str, dict[str, int]] = {}
        for key, name, value in self._db.execute(
                "SELECT k, name, value FROM counters WHERE tbl = ?", (spec.name,)):
            counters.setdefault(key, {})[name] = value
        now = time.time()
        for key, version, data, expires_at in self._db.execute(
                f"SELECT k, version, data, expires_at FROM t_{spec.name} ORDER BY k"):
            kept = counters.pop(key, {})
            if expires_at is None or expires_at > now:
                yield Stored(key, version, data, kept)
        for key in sorted(counters):
            yield Stored(key, None, None, counters[key])

    def close(self) -> None:
        self._db.close()
        self._scratch.cleanup()


class SqliteTarget:
    def __init__(self, backend: SqliteBackend) -> None:
        self._backend = backend
        self._tables: dict[str, SqliteTable] = {}

    def _table(self, spec: TableSpec) -> SqliteTable:
        if spec.name not in self._tables:
            self._tables[spec.name] = self._backend.table(spec)
        return self._tables[spec.name]

    def holds_items(self, spec: TableSpec) -> bool:
        self._table(spec)
        with self._backend.transaction() as conn:
            return bool(conn.execute(f"SELECT 1 FROM t_{spec.name} LIMIT 1").fetchone()
                        or conn.execute("SELECT 1 FROM counters WHERE tbl = ? LIMIT 1",
                                        (spec.name,)).fetchone())

    def clear(self, spec: TableSpec) -> None:
        self._table(spec)
        with self._backend.transaction() as conn:
            conn.execute(f"DELETE FROM t_{spec.name}")
            conn.execute("DELETE FROM counters WHERE tbl = ?", (spec.name,))

    def load(self, spec: TableSpec, stored: Stored) -> None:
        if stored.data is not None:
            self._table(spec).put(json.loads(stored.data))
        with self._backend.transaction() as conn:
            if stored.data is not None:
                conn.execute(f"UPDATE t_{spec.name} SET version = ?, data = ? WHERE k = ?",
                             (stored.version, stored.data, stored.key))
            conn.executemany(
                "INSERT OR REPLACE INTO counters (tbl, k, name, value) VALUES (?, ?, ?, ?)",
                [(spec.name, stored.key, name, value) for name, value in stored.counters.items()])

    def flush(self) -> None:
        """Nothing waits: each :meth:`load` wrote its item before it returned."""


def _existing_tables(client: Any, prefix: str) -> set[str]:
    names: set[str] = set()
    start: dict[str, str] = {}
    try:
        while True:
            listed = client.list_tables(**start)
            names.update(name for name in listed.get("TableNames", []) if name.startswith(prefix))
            if "LastEvaluatedTableName" not in listed:
                return names
            start = {"ExclusiveStartTableName": listed["LastEvaluatedTableName"]}
    except (BotoCoreError, ClientError) as exc:
        raise BackupError(f"the DynamoDB store does not answer: {exc}", FAILED) from None


class DynamoSource:
    backend = "dynamodb"
    consistency = "per-item"

    def __init__(self, backend: DynamoBackend, specs: tuple[TableSpec, ...]) -> None:
        # The backend's client and prefix, not its tables: opening a table creates it, and a
        # backup with a mistyped prefix must say so, not create empty tables.
        self._backend = backend
        self._prefix = backend._prefix
        try:  # botocore's client lists them (the item client does not page through names)
            self._existing = _existing_tables(backend._sdk, self._prefix)
        except BackupError:
            backend.close()
            raise
        if not any(self._prefix + spec.name in self._existing for spec in specs):
            backend.close()
            raise BackupError(f"no table of this product named {self._prefix}* at that "
                              "endpoint; check dynamodb_table_prefix and dynamodb_region",
                              FAILED)

    def dump(self, spec: TableSpec) -> Iterator[Stored]:
        name = self._prefix + spec.name
        if name not in self._existing:
            return
        table, start, now = DynamoTable(self._backend._client, name, spec), None, time.time()
        while True:
            extra: dict[str, Any] = {"ExclusiveStartKey": start} if start else {}
            page = table._call("scan", ConsistentRead=True, **extra)
            for raw in page.get("Items", []):
                stored = _stored(raw, now)
                if stored is not None:
                    yield stored
            start = page.get("LastEvaluatedKey")
            if not start:
                return

    def close(self) -> None:
        self._backend.close()


def _stored(raw: dict[str, Any], now: float) -> Stored | None:
    """An item as :class:`store.dynamo.DynamoBackend` lays it out; None when it is expired or
    holds neither an item nor a counter."""
    counters = {name[2:]: int(value["N"]) for name, value in raw.items()
                if name.startswith("c_")}
    if "expires_at" in raw and float(raw["expires_at"]["N"]) <= now:
        return None
    if "version" in raw and "data" in raw:
        return Stored(raw["pk"]["S"], int(raw["version"]["N"]), raw["data"]["S"], counters)
    return Stored(raw["pk"]["S"], None, None, counters) if counters else None


WRITE_BATCH = 25
"""Items a BatchWriteItem carries at most (DynamoDB's limit)."""
WRITERS = 8
"""BatchWriteItem calls a restore has in flight at once (the client is safe across threads):
200 items a round trip, 2,000 to 10,000 items a second at 20 to 100 ms a call, about what a
new on-demand table accepts at first: 700,000 items in minutes, not the hours of two
sequential requests per item."""
WRITE_ROUNDS, WRITE_BACKOFF = 12, 0.05
"""Requests a batch makes at most for the items DynamoDB leaves unprocessed (it does under
throttling), and the seconds before it asks again (doubling, at most 1 s, jittered): 4 to
8 s in all, on top of botocore's own retries of a throttled or failed request. Still unprocessed
after them: :class:`StoreError`, and the operator restores again with ``--force``."""


def _write_batch(table: DynamoTable, pending: list[Raw]) -> None:
    """Make every write of ``pending`` (PutRequests or DeleteRequests, at most
    ``WRITE_BATCH``, each key once) or raise."""
    for attempt in range(WRITE_ROUNDS):
        answer = table._request("batch_write_item", RequestItems={table.name: pending})
        pending = answer.get("UnprocessedItems", {}).get(table.name, [])
        if not pending:
            return
        if attempt < WRITE_ROUNDS - 1:
            time.sleep(random.uniform(0.5, 1) * min(WRITE_BACKOFF * 2 ** attempt, 1.0))
    raise StoreError(f"batch_write_item on {table.name}: {len(pending)} items still "
                     f"unprocessed after {WRITE_ROUNDS} requests")


class DynamoTarget:
    """Loads items (and :meth:`clear`'s deletes) into batches of ``WRITE_BATCH`` per table,
    sent ``writers`` at once. :meth:`flush` sends what is left and waits for every batch: a
    restore is written once it returns. A failed batch raises :class:`StoreError` from the
    next :meth:`load` or from :meth:`flush`, once every batch in flight has ended (none
    writes behind the error)."""

    def __init__(self, backend: DynamoBackend, writers: int = WRITERS) -> None:
        self._backend = backend
        self._writers = writers
        self._tables: dict[str, DynamoTable] = {}
        self._batches: dict[str, dict[str, Raw]] = {}
        """Writes (PutRequest, DeleteRequest) not sent yet, by table name, then key."""
        self._flying: dict[Future[None], set[tuple[str, str]]] = {}
        """Batches sent and not seen to end, with their (table, key)s."""
        self._pool: ThreadPoolExecutor | None = None

    def _table(self, spec: TableSpec) -> DynamoTable:
        if spec.name not in self._tables:
            self._tables[spec.name] = self._backend.table(spec)
        return self._tables[spec.name]

    def holds_items(self, spec: TableSpec) -> bool:
        return bool(self._table(spec)._call("scan", Limit=1, ConsistentRead=True)["Items"])

    def clear(self, spec: TableSpec) -> None:
        table, start = self._table(spec), None
        while True:
            extra: dict[str, Any] = {"ExclusiveStartKey": start} if start else {}
            page = table._call("scan", ConsistentRead=True, ProjectionExpression="pk", **extra)
            for raw in page.get("Items", []):
                self._queue(spec.name, raw["pk"]["S"], {"DeleteRequest": {"Key": raw}})
            start = page.get("LastEvaluatedKey")
            if not start:
                self.flush()  # deleted before anything is loaded
                return

    def load(self, spec: TableSpec, stored: Stored) -> None:
        """Queue the whole item; its batch is sent once full. A key loaded twice (a backup
        holds each once) replaces the whole item its first load wrote."""
        raw = self._table(spec).raw_item(stored.key, stored.data, stored.version,
                                         stored.counters)
        self._queue(spec.name, stored.key, {"PutRequest": {"Item": raw}})

    def _queue(self, name: str, key: str, request: Raw) -> None:
        """A key already queued or in flight waits for that write to end: one batch never
        names a key twice, which DynamoDB refuses, and two batches never race."""
        if key in self._batches.get(name, {}) or any(
                (name, key) in keys for keys in self._flying.values()):
            self._send(name)
            self._wait(everything=True)
        batch = self._batches.setdefault(name, {})
        batch[key] = request
        if len(batch) >= WRITE_BATCH:
            self._send(name)

    def flush(self) -> None:
        for name in list(self._batches):
            self._send(name)
        self._wait(everything=True)
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def _send(self, name: str) -> None:
        batch = self._batches.pop(name, {})
        if not batch:
            return
        while len(self._flying) >= self._writers:
            self._wait(everything=False)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._writers, thread_name_prefix="restore")
        future = self._pool.submit(_write_batch, self._tables[name], list(batch.values()))
        self._flying[future] = {(name, key) for key in batch}

    def _wait(self, everything: bool) -> None:
        """Until one batch in flight has ended (every one: ``everything``). A failed one
        raises, once the batches not started are dropped and the others have ended."""
        done, _ = wait(self._flying, return_when="ALL_COMPLETED" if everything
                       else FIRST_COMPLETED)
        failed = [future for future in done if future.exception() is not None]
        if not failed:
            for future in done:
                del self._flying[future]
            return
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)  # waits for the ones started
            self._pool = None
        self._flying.clear()
        error = failed[0].exception()
        if isinstance(error, StoreError):
            raise error
        raise StoreError(f"a batch write failed: {error!r}") from error


def open_source(settings: Any, specs: tuple[TableSpec, ...]) -> SqliteSource | DynamoSource:
    """What to back up: the store ``settings`` name (a SQLite file is never created here)."""
    if settings.storage_backend == "dynamodb":
        return DynamoSource(DynamoBackend.from_settings(settings), specs)
    return SqliteSource(settings.sqlite_path)


def open_target(backend: Any) -> SqliteTarget | DynamoTarget:
    if isinstance(backend, DynamoBackend):
        return DynamoTarget(backend)
    if isinstance(backend, SqliteBackend):
        return SqliteTarget(backend)
    raise StoreError(f"cannot restore into a {type(backend).__name__}")
