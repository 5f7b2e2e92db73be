"""Issuance results per day (issued / failed), for the dashboard's chart.

One item per UTC day with two atomic counters, so reading the last two weeks is 14 gets and
recording a result is one write, however many domains there are.
"""
from __future__ import annotations

import datetime
import threading
import time
from typing import Callable

from store import ABSENT, ConflictError, Table, TableSpec

ISSUANCE_STATS = TableSpec("issuance_stats", key="day")
RESULTS = ("issued", "failed")


def _day(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%d")


class IssuanceStats:
    def __init__(self, table: Table, clock: Callable[[], float] = time.time) -> None:
        self.table = table
        self._clock = clock
        self._lock = threading.Lock()
        self.totals = {result: 0 for result in RESULTS}
        """Results recorded by this process since it started: the Prometheus counters of
        ``/metrics`` (each replica counts its own; Prometheus sums them)."""

    def record(self, result: str) -> None:
        if result not in RESULTS:
            raise ValueError(f"result must be one of {RESULTS}")
        with self._lock:
            self.totals[result] += 1
        day = _day(self._clock())
        try:  # counters alone do not make an item on DynamoDB: create the day first
            self.table.put({"day": day, "expires_at": self._clock() + 400 * 86400},
                           expected_version=ABSENT)
        except ConflictError:
            pass
        self.table.increment(day, result)

    def last_days(self, days: int) -> list[tuple[str, int, int]]:
        """(day, issued, failed) for the last ``days`` days, oldest first."""
        now = self._clock()
        rows = []
        for back in range(days - 1, -1, -1):
            day = _day(now - back * 86400)
            item = self.table.get(day) or {}
            rows.append((day, int(item.get("issued") or 0), int(item.get("failed") or 0)))
        return rows
