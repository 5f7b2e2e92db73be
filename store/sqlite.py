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

from store import (ABSENT, BATCH_GET, EXPIRES_AT, VERSION, ConflictError, Item, Page, TableSpec,
                   first_version, range_values)

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
        self.requests = 0
        self.operations: dict[tuple[str, str], int] = {}
        """Requests by (table, operation), as /metrics exports them."""

    @contextmanager
    def transaction(self, table: str = "*", op: str = "other") -> Iterator[sqlite3.Connection]:
        with self._lock:
            self.requests += 1
            self.operations[(table, op)] = self.operations.get((table, op), 0) + 1
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def table(self, spec: TableSpec) -> "SqliteTable":
        ranges = [(r.name, r.key, r.sort) for r in spec.ranges]
        for name in (spec.name, *spec.indexes, *(n for r in ranges for n in r)):
            if not _NAME.fullmatch(name):
                raise ValueError(f"bad table or index name {name!r}")
        columns = "".join(f", i_{index} TEXT" for index in spec.indexes)
        columns += "".join(f", r_{name}_k TEXT, r_{name}_s REAL" for name, _, _ in ranges)
        t = f"t_{spec.name}"
        with self.transaction(spec.name, "open") as conn:
            conn.execute(f"CREATE TABLE IF NOT EXISTS {t} (k TEXT PRIMARY KEY,"
                         f" version INTEGER NOT NULL, expires_at REAL, data TEXT NOT NULL{columns})")
            for index in spec.indexes:
                conn.execute(f"CREATE INDEX IF NOT EXISTS {t}_{index} ON {t} (i_{index}, k)")
            if spec.expiring:
                conn.execute(f"CREATE INDEX IF NOT EXISTS {t}_expiry ON {t} (expires_at)"
                             " WHERE expires_at IS NOT NULL")
            existing = {row[1] for row in conn.execute(f"PRAGMA table_info({t})")}
            for name, key, sort in ranges:
                if f"r_{name}_k" not in existing:  # a table from an earlier version: migrate
                    conn.execute(f"ALTER TABLE {t} ADD COLUMN r_{name}_k TEXT")
                    conn.execute(f"ALTER TABLE {t} ADD COLUMN r_{name}_s REAL")
                    conn.execute(
                        f"UPDATE {t} SET r_{name}_k = json_extract(data, '$.{key}'),"
                        f" r_{name}_s = json_extract(data, '$.{sort}')"
                        f" WHERE json_type(data, '$.{key}') = 'text'"
                        f" AND json_type(data, '$.{sort}') IN ('integer', 'real')")
                conn.execute(f"CREATE INDEX IF NOT EXISTS {t}_r_{name}"
                             f" ON {t} (r_{name}_k, r_{name}_s, k)")
        return SqliteTable(self, spec)

    def spread_keys(self) -> None:
        """Nothing to spread on one file (see ``TableSpec.spread``)."""

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class SqliteTable:
    lacking: frozenset[str] = frozenset()  # every index is a query here

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
        with self._backend.transaction(self.spec.name, "get") as conn:
            row = conn.execute(f"SELECT data, version FROM {self._t} WHERE k = ? AND {self._live()}",
                               (key, time.time())).fetchone()
            return self._row_item(conn, key, *row) if row else None

    def get_many(self, keys: list[str]) -> dict[str, Item]:
        """One ``IN (...)`` query, with the counters' in another, per ``BATCH_GET`` keys (a
        transaction each, as DynamoDB sends a request each)."""
        wanted = list(dict.fromkeys(keys))
        found: dict[str, Item] = {}
        for start in range(0, len(wanted), BATCH_GET):
            chunk = wanted[start:start + BATCH_GET]
            marks = ", ".join("?" * len(chunk))
            with self._backend.transaction(self.spec.name, "get_many") as conn:
                rows = conn.execute(f"SELECT k, data, version FROM {self._t} WHERE k IN ({marks})"
                                    f" AND {self._live()}", (*chunk, time.time())).fetchall()
                counters = conn.execute(
                    f"SELECT k, name, value FROM counters WHERE tbl = ? AND k IN ({marks})",
                    (self.spec.name, *chunk)).fetchall()
            for key, data, version in rows:
                found[key] = {**json.loads(data), VERSION: version}
            for key, name, value in counters:
                if key in found:
                    found[key][name] = value
        return found

    def put(self, item: Item, expected_version: int | None = None) -> Item:
        key = str(item[self.spec.key])
        data = {k: v for k, v in item.items() if k != VERSION}
        payload = json.dumps(data, sort_keys=True)
        expires_at = data.get(EXPIRES_AT)
        indexed = [None if data.get(i) is None else str(data[i]) for i in self.spec.indexes]
        cols = "".join(f", i_{i}" for i in self.spec.indexes)
        for index in self.spec.ranges:
            indexed += range_values(data, index)
            cols += f", r_{index.name}_k, r_{index.name}_s"
        marks = ", ?" * len(indexed)
        now = time.time()
        with self._backend.transaction(self.spec.name, "put") as conn:
            row = conn.execute(f"SELECT version, expires_at FROM {self._t} WHERE k = ?",
                               (key,)).fetchone()
            live = row is not None and (row[1] is None or row[1] > now)
            current = row[0] if live else ABSENT
            if expected_version is not None and expected_version != current:
                raise ConflictError(self.spec.name, key, expected_version)
            version = current + 1 if live else first_version()
            conn.execute(f"INSERT OR REPLACE INTO {self._t} (k, version, expires_at, data{cols})"
                         f" VALUES (?, ?, ?, ?{marks})",
                         (key, version, expires_at, payload, *indexed))
        return {**data, VERSION: version}

    def delete(self, key: str, expected_version: int | None = None) -> bool:
        with self._backend.transaction(self.spec.name, "delete") as conn:
            row = conn.execute(f"SELECT version FROM {self._t} WHERE k = ? AND {self._live()}",
                               (key, time.time())).fetchone()
            if expected_version is not None and (row[0] if row else ABSENT) != expected_version:
                raise ConflictError(self.spec.name, key, expected_version)
            conn.execute(f"DELETE FROM {self._t} WHERE k = ?", (key,))
            conn.execute("DELETE FROM counters WHERE tbl = ? AND k = ?", (self.spec.name, key))
            return row is not None

    def query_range(self, index: str, value: str, lower: float | None = None,
                    upper: float | None = None, limit: int = 100,
                    cursor: str | None = None) -> Page:
        found = self.spec.range_index(index)
        name = found.name
        if limit < 1:
            raise ValueError("limit must be positive")
        where = [f"r_{name}_k = ?", self._live()]
        args: list[Any] = [value, time.time()]
        for bound, op in ((lower, ">="), (upper, "<=")):
            if bound is not None:
                where.append(f"r_{name}_s {op} ?")
                args.append(float(bound))
        if cursor:
            after_sort, after_key = _range_cursor(cursor)
            where.append(f"(r_{name}_s > ? OR (r_{name}_s = ? AND k > ?))")
            args += [after_sort, after_sort, after_key]
        with self._backend.transaction(self.spec.name, "query_range") as conn:
            rows = conn.execute(
                f"SELECT k, data, version, r_{name}_s FROM {self._t} WHERE {' AND '.join(where)}"
                f" ORDER BY r_{name}_s, k LIMIT ?", (*args, limit + 1)).fetchall()
            items = [{self.spec.key: row[0], found.key: value, found.sort: row[3]}
                     if found.keys_only else self._row_item(conn, *row[:3])
                     for row in rows[:limit]]
        last = rows[limit - 1] if len(rows) > limit else None
        return Page(items, json.dumps([last[3], last[0]]) if last else None)

    def _page(self, op: str, where: str, args: tuple[Any, ...], limit: int,
              cursor: str | None) -> Page:
        if limit < 1:
            raise ValueError("limit must be positive")
        with self._backend.transaction(self.spec.name, op) as conn:
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
        return self._page("query", f"i_{index} = ?", (value,), limit, cursor)

    def scan(self, limit: int = 100, cursor: str | None = None) -> Page:
        return self._page("scan", "1 = 1", (), limit, cursor)

    def purge_expired(self, now: float | None = None, limit: int = 100) -> int:
        if not self.spec.expiring:
            raise ValueError(f"{self.spec.name} is not an expiring table")
        if limit < 1:
            raise ValueError("limit must be positive")
        # one transaction: nothing to race with
        with self._backend.transaction(self.spec.name, "purge_expired") as conn:
            keys = [row[0] for row in conn.execute(
                f"SELECT k FROM {self._t} WHERE expires_at IS NOT NULL AND expires_at <= ?"
                " ORDER BY expires_at LIMIT ?", (time.time() if now is None else now, limit))]
            for key in keys:
                conn.execute(f"DELETE FROM {self._t} WHERE k = ?", (key,))
                conn.execute("DELETE FROM counters WHERE tbl = ? AND k = ?", (self.spec.name, key))
        return len(keys)

    def respread(self) -> int:
        return 0  # one file, no partitions: index keys are never spread here

    def increment(self, key: str, counter: str, amount: int = 1, *,
                  existing_only: bool = False, at_most: int | None = None) -> int | None:
        with self._backend.transaction(self.spec.name, "increment") as conn:
            if existing_only and conn.execute(
                    f"SELECT 1 FROM {self._t} WHERE k = ? AND {self._live()}",
                    (key, time.time())).fetchone() is None:
                return None
            if at_most is not None:
                row = conn.execute("SELECT value FROM counters WHERE tbl = ? AND k = ?"
                                   " AND name = ?", (self.spec.name, key, counter)).fetchone()
                if (row[0] if row else 0) + amount > at_most:
                    return None
            conn.execute(
                "INSERT INTO counters (tbl, k, name, value) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (tbl, k, name) DO UPDATE SET value = value + excluded.value",
                (self.spec.name, key, counter, amount))
            return conn.execute("SELECT value FROM counters WHERE tbl = ? AND k = ? AND name = ?",
                                (self.spec.name, key, counter)).fetchone()[0]


def _range_cursor(cursor: str) -> tuple[float, str]:
    try:
        sort, key = json.loads(cursor)
        return float(sort), str(key)
    except (ValueError, TypeError):
        raise ValueError("malformed cursor") from None
