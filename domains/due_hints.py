"""Which due indexes a worker round needs to ask, so an idle round asks none of them.

Asking a status's ``due`` index is one query, and on DynamoDB seventeen (its key is spread,
docs/dynamodb.md): an idle round asked five of them every ``worker_interval``, about 120 store
requests, whatever happened. Each write that gives a domain work due within ``window`` seconds
(its status or its ``next_attempt_at`` changed) now adds one to its status's counter in the
``due`` item of the kept counts (domains/counts.py's table). A round reads that item once and
asks a status's index only when:

- its counter moved later than ``lag`` before the last ask began (a global secondary index
  may lag the item it indexes: an ask soon after the move might not see it yet);
- the last ask found work (one round may not take it all, or another replica holds it);
- the earliest time the last ask saw ahead has come (an ask after one that found nothing
  reads the earliest domain first, which is that time when it is not due yet: one query);
- ``window`` seconds passed since the last ask: work a write scheduled further out than the
  window does not count, nor does a process of the release before, nor a crash between a
  write and its count: they are found within the window.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

from domains.counts import DOMAIN_COUNTS
from store import ABSENT, ConflictError, Table

ITEM = "due"
WINDOW = 10.0
LAG = 1.0


@dataclasses.dataclass
class _Asked:
    at: float
    found: bool
    next_due: float | None


class DueHints:
    def __init__(self, table: Table | None, statuses: Iterable[str], clock: Callable[[], float],
                 window: float = WINDOW, lag: float = LAG) -> None:
        self._table = table
        self._statuses = tuple(statuses)
        self._clock = clock
        self.window = window
        self.lag = lag
        self._counters: dict[str, int] = {}
        self._moved_at: dict[str, float] = {}
        self._asked: dict[str, _Asked] = {}

    def written(self, before: dict[str, object] | None, after: dict[str, object]) -> None:
        """Count a write that gives ``after`` work due within the window (a new domain, or a
        changed status or due time)."""
        if self._table is None:
            return
        due_at = after.get("next_attempt_at")
        if not isinstance(due_at, (int, float)) or due_at > self._clock() + self.window:
            return
        if before is not None and before.get("status") == after.get("status") \
                and before.get("next_attempt_at") == due_at:
            return
        self._table.increment(ITEM, str(after["status"]), 1)

    def refresh(self) -> None:
        """Read the counters: once a worker round, before it asks."""
        if self._table is None:
            return
        item = self._table.get(ITEM)
        if item is None:  # counters show on an item that exists (its first reader makes it)
            try:
                self._table.put({DOMAIN_COUNTS.key: ITEM}, expected_version=ABSENT)
            except ConflictError:
                pass
            item = self._table.get(ITEM) or {}
        now = self._clock()
        for status in self._statuses:
            value = int(item.get(status) or 0)
            if self._counters.get(status) != value:
                self._counters[status] = value
                self._moved_at[status] = now

    def should_ask(self, status: str) -> bool:
        asked = self._asked.get(status)
        if self._table is None or asked is None or asked.found:
            return True
        now = self._clock()
        moved_at = self._moved_at.get(status)
        return ((moved_at is not None and moved_at + self.lag > asked.at)
                or (asked.next_due is not None and now >= asked.next_due)
                or now - asked.at >= self.window)

    def found_last(self, status: str) -> bool:
        """Whether the last ask of ``status`` found work (False before any)."""
        asked = self._asked.get(status)
        return asked is not None and asked.found

    def asked(self, status: str, at: float, found: bool, next_due: float | None) -> None:
        self._asked[status] = _Asked(at, found, next_due)
