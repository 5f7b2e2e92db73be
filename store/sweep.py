"""The retention sweep: deletes the expired items of expiring tables, a bounded batch a round."""
from __future__ import annotations

import time
from typing import Callable, Sequence

from store import Table


class ExpirySweeper:
    """One :meth:`tick` asks each table's expiry index for what is due and deletes at most
    ``batch`` items of each: a sweep with nothing due costs one request per table (none where
    the server's TTL deletes), and a backlog drains over the next rounds. Retention needs no
    precision, so a sweep runs once every ``interval`` seconds, not every worker round,
    unless the last one left a backlog."""

    def __init__(self, tables: Sequence[Table], batch: int = 500,
                 clock: Callable[[], float] = time.time, interval: float = 60.0) -> None:
        self.tables: list[Table] = []
        for table in tables:
            self.add(table)
        self._batch = batch
        self._clock = clock
        self._interval = interval
        self._next = 0.0
        self.deleted = 0
        """Items deleted since start (for metrics and tests)."""

    def add(self, table: Table) -> None:
        """Sweep ``table`` too (a part built later, such as the dashboard, adds its own)."""
        if not table.spec.expiring:
            raise ValueError(f"{table.spec.name} is not an expiring table")
        self.tables.append(table)

    def tick(self) -> None:
        now = self._clock()
        if now < self._next:
            return
        backlog = False
        for table in self.tables:
            deleted = table.purge_expired(now=now, limit=self._batch)
            self.deleted += deleted
            backlog = backlog or deleted >= self._batch
        self._next = now if backlog else now + self._interval
