"""The audit log: who did what to which object, when. One item per action, queried by day.

Ids sort newest first, so a day's query (ordered by key on both backends) needs no sorting
and no scan.
"""
from __future__ import annotations

import datetime
import time
import uuid
from typing import Callable

from store import Page, Table, TableSpec

ADMIN_AUDIT = TableSpec("admin_audit", key="id", indexes=("day",))


def day_of(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%d")


class AuditLog:
    def __init__(self, table: Table, clock: Callable[[], float] = time.time) -> None:
        self.table = table
        self._clock = clock

    def record(self, actor: str, action: str, target: str = "", detail: str = "",
               address: str = "") -> None:
        now = self._clock()
        newest_first = 10**20 - time.time_ns()
        self.table.put({"id": f"{newest_first:020d}-{uuid.uuid4().hex[:8]}", "day": day_of(now),
                        "at": now, "actor": actor, "action": action, "target": target,
                        "detail": detail[:500], "address": address})

    def day(self, day: str, limit: int = 50, cursor: str | None = None) -> Page:
        """One page of a day's actions (``YYYY-MM-DD``, UTC), newest first."""
        return self.table.query("day", day, limit=limit, cursor=cursor)

    def today(self) -> str:
        return day_of(self._clock())
