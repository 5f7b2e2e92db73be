"""Domains by status, kept on every change with atomic ADDs, so ``/metrics`` and the dashboard
read one item instead of every domain.

A crash between a domain's write and its count's ADD leaves the count off by one until the next
recount; the first process to open an empty counts table recounts (a store from an earlier
version), and ``recount`` can be run again at any time (it is one pass over the domains).
"""
from __future__ import annotations

from typing import Callable, Iterable

from store import ABSENT, ConflictError, Table, TableSpec

DOMAIN_COUNTS = TableSpec("domain_counts", key="name")
_BY_STATUS = "by_status"
_FAILING = "failing"
"""Domains whose last step failed (``last_error`` set), whatever their status."""


class StatusCounts:
    def __init__(self, table: Table, statuses: Iterable[str]) -> None:
        self.table = table
        self._statuses = tuple(statuses)

    def open(self, count_now: Callable[[str], int],
             count_failing: Callable[[], int] | None = None,
             none_stored: Callable[[], bool] = lambda: False) -> None:
        """Create the counts items; the creator of each (the first process ever, or the first
        after an upgrade) counts what is already there, unless ``none_stored`` (one read)
        says there is nothing: a new store's first open then asks no index (on DynamoDB a
        count is a query per status and spread key, 204 of them). A domain written after
        that read is counted by its own ADD, which comes after the item's creation."""
        by_status = self._created(_BY_STATUS)
        failing = count_failing is not None and self._created(_FAILING)
        if not (by_status or failing) or none_stored():
            return
        if by_status:
            self.recount(count_now)
        if failing and count_failing is not None:
            self.table.increment(_FAILING, "count", count_failing())

    def _created(self, name: str) -> bool:
        try:
            self.table.put({"name": name}, expected_version=ABSENT)
        except ConflictError:
            return False
        return True

    def changed(self, old: str | None, new: str | None) -> None:
        """A domain moved from ``old`` to ``new`` (None: it did not exist / no longer does)."""
        if old == new:
            return
        if old is not None:
            self.table.increment(_BY_STATUS, old, -1)
        if new is not None:
            self.table.increment(_BY_STATUS, new, 1)

    def failing_changed(self, old: bool, new: bool) -> None:
        """A domain started (``new``) or stopped (``old``) failing."""
        if old != new:
            self.table.increment(_FAILING, "count", 1 if new else -1)

    def failing(self) -> int:
        item = self.table.get(_FAILING) or {}
        return max(0, int(item.get("count") or 0))

    def by_status(self) -> dict[str, int]:
        item = self.table.get(_BY_STATUS) or {}
        return {status: max(0, int(item.get(status) or 0)) for status in self._statuses}

    def recount(self, count_now: Callable[[str], int]) -> dict[str, int]:
        """Set each count to ``count_now(status)`` (an ADD of the difference)."""
        current = self.by_status()
        for status in self._statuses:
            actual = count_now(status)
            if actual != current[status]:
                self.table.increment(_BY_STATUS, status, actual - current[status])
        return self.by_status()
