"""SQLite backend: the embedded default, one file, safe across threads and processes."""
from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from contextlib import contextmanager

from store import ABSENT, EXPIRES_AT, VERSION, ConflictError, Item, Page, TableSpec

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class SqliteBackend:
    def __init__(self, path: str) -> None:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                     timeout=30)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS counters (tbl TEXT, k TEXT, name TEXT, value INTEGER,"
            " PRIMARY KEY (tbl, k, name))")
        self._lock = threading.RLock()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def table(self, spec: TableSpec) -> "SqliteTable":
        for name in (spec.name, *spec.indexes):
            if not _NAME.fullmatch(name):
                raise ValueError(f"bad table or index name {name!r}")
        columns = "".join(f", i_{index} TEXT" for index in spec.indexes)
        with self.transaction() as conn:
            conn.execute(f"CREATE TABLE IF NOT EXISTS t_{spec.name} (k TEXT PRIMARY KEY,"
                         f" version INTEGER NOT NULL, expires_at REAL, data TEXT NOT NULL{columns})")
            for index in spec.indexes:
                conn.execute(f"CREATE INDEX IF NOT EXISTS t_{spec.name}_{index}"
                             f" ON t_{spec.name} (i_{index}, k)")
        return SqliteTable(self, spec)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class SqliteTable:
    def __init__(self, backend: SqliteBackend, spec: TableSpec) -> None:
        self._backend = backend
        self.spec = spec
        self._t = f"t_{spec.name}"

    def _live(self) -> str:
        return "(expires_at IS NULL OR expires_at > ?)"

    def _row_item(self, conn: sqlite3.Connection, key: str, data: str, version: int) -> Item:
        item = json.loads(data)
        item[VERSION] = version
        for name, value in conn.execute(
                "SELECT name, value FROM counters WHERE tbl = ? AND k = ?", (self.spec.name, key)):
            item[name] = value
        return item

    def get(self, key: str) -> Item | None:
        with self._backend.transaction() as conn:
            row = conn.execute(f"SELECT data, version FROM {self._t} WHERE k = ? AND {self._live()}",
                               (key, time.time())).fetchone()
            return self._row_item(conn, key, *row) if row else None

    def put(self, item: Item, expected_version: int | None = None) -> Item:
        key = str(item[self.spec.key])
        data = {k: v for k, v in item.items() if k != VERSION}
        payload = json.dumps(data, sort_keys=True)
        expires_at = data.get(EXPIRES_AT)
        indexed = [None if data.get(i) is None else str(data[i]) for i in self.spec.indexes]
        cols = "".join(f", i_{i}" for i in self.spec.indexes)
        marks = ", ?" * len(self.spec.indexes)
        now = time.time()
        with self._backend.transaction() as conn:
            row = conn.execute(f"SELECT version, expires_at FROM {self._t} WHERE k = ?",
                               (key,)).fetchone()
            live = row is not None and (row[1] is None or row[1] > now)
            current = row[0] if live else ABSENT
            if expected_version is not None and expected_version != current:
                raise ConflictError(self.spec.name, key, expected_version)
            version = current + 1
            conn.execute(f"INSERT OR REPLACE INTO {self._t} (k, version, expires_at, data{cols})"
                         f" VALUES (?, ?, ?, ?{marks})",
                         (key, version, expires_at, payload, *indexed))
        return {**data, VERSION: version}

    def delete(self, key: str, expected_version: int | None = None) -> bool:
        with self._backend.transaction() as conn:
            row = conn.execute(f"SELECT version FROM {self._t} WHERE k = ? AND {self._live()}",
                               (key, time.time())).fetchone()
            if expected_version is not None and (row[0] if row else ABSENT) != expected_version:
                raise ConflictError(self.spec.name, key, expected_version)
            conn.execute(f"DELETE FROM {self._t} WHERE k = ?", (key,))
            conn.execute("DELETE FROM counters WHERE tbl = ? AND k = ?", (self.spec.name, key))
            return row is not None

    def _page(self, where: str, args: tuple[Any, ...], limit: int, cursor: str | None) -> Page:
        if limit < 1:
            raise ValueError("limit must be positive")
        with self._backend.transaction() as conn:
            rows = conn.execute(
                f"SELECT k, data, version FROM {self._t} WHERE {where} AND {self._live()}"
                " AND k > ? ORDER BY k LIMIT ?", (*args, time.time(), cursor or "", limit + 1),
            ).fetchall()
            items = [self._row_item(conn, *row) for row in rows[:limit]]
        next_cursor = rows[limit - 1][0] if len(rows) > limit else None
        return Page(items, next_cursor)

    def query(self, index: str, value: str, limit: int = 100, cursor: str | None = None) -> Page:
        if index not in self.spec.indexes:
            raise ValueError(f"{self.spec.name} has no index {index!r}")
        return self._page(f"i_{index} = ?", (value,), limit, cursor)

    def scan(self, limit: int = 100, cursor: str | None = None) -> Page:
        return self._page("1 = 1", (), limit, cursor)

    def increment(self, key: str, counter: str, amount: int = 1) -> int:
        with self._backend.transaction() as conn:
            conn.execute(
                "INSERT INTO counters (tbl, k, name, value) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (tbl, k, name) DO UPDATE SET value = value + excluded.value",
                (self.spec.name, key, counter, amount))
            return conn.execute("SELECT value FROM counters WHERE tbl = ? AND k = ? AND name = ?",
                                (self.spec.name, key, counter)).fetchone()[0]
