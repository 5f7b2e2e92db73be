"""Where a backup reads from and a restore writes to, for each backend.

SQLite: the online backup API copies the live database in one step (a read transaction, so
writers carry on under WAL) into a scratch file, and the items are read from that copy: the
store at one instant. DynamoDB has no such instant short of point-in-time recovery: each table
is scanned with strongly consistent reads, so every item is as stored when read and every write
acknowledged before the backup started is in it (unless changed again meanwhile).

A restore writes each item through the table's own ``put`` (which lays out its index
attributes, expiry and the rest), then sets its version and stored text back to what the
backup holds, byte for byte, and its counters.
"""
from __future__ import annotations

import json
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from botocore.exceptions import BotoCoreError, ClientError

from store import StoreError, TableSpec
from store.backup import FAILED, BackupError, Stored
from store.dynamo import DynamoBackend, DynamoTable
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
        self._client, self._prefix = backend._client, backend._prefix
        try:
            self._existing = _existing_tables(self._client, self._prefix)
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
        table, start, now = DynamoTable(self._client, name, spec), None, time.time()
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


class DynamoTarget:
    def __init__(self, backend: DynamoBackend) -> None:
        self._backend = backend
        self._tables: dict[str, DynamoTable] = {}

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
                table._call("delete_item", Key={"pk": raw["pk"]})
            start = page.get("LastEvaluatedKey")
            if not start:
                return

    def load(self, spec: TableSpec, stored: Stored) -> None:
        table = self._table(spec)
        names: dict[str, str] = {}
        values: dict[str, Any] = {}
        if stored.data is not None:
            table.put(json.loads(stored.data))
            names.update({"#v": "version", "#d": "data"})
            values.update({":v": {"N": str(stored.version)}, ":d": {"S": stored.data}})
        for n, (name, value) in enumerate(stored.counters.items()):
            names[f"#c{n}"] = f"c_{name}"
            values[f":c{n}"] = {"N": str(value)}
        if names:
            table._call("update_item", Key={"pk": {"S": stored.key}},
                        UpdateExpression="SET " + ", ".join(
                            f"{name} = :{name[1:]}" for name in names),
                        ExpressionAttributeNames=names, ExpressionAttributeValues=values)


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
