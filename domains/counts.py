"""Domains by status, kept on every change with atomic ADDs, so ``/metrics`` and the dashboard
read one item instead of every domain.

A kept count can drift: a crash between a domain's write and its count's ADD leaves it off by
one, and on DynamoDB an ADD whose answer was lost is sent again and counted twice (an ADD
carries no token, docs/dynamodb.md). So the counts are recounted from the domains themselves:
by the first process to open a store without them (a store from an earlier version), and once
a week by one replica (``CountRepair``, a worker step of ``edgectl serve``). A recount is one
pass over the domains (on DynamoDB a query per status and spread key, and one per page of
domains: docs/scale.md), so the ``by_status`` item holds its lease: ``counting_since`` while a
process recounts, cleared only once it is done, and ``counted_at``. A recount whose process
died (its ``counting_since`` older than ``LEASE``) is done again by the next open or by the
weekly step, so the counts of a store whose first recount was cut short do not stay at zero.
A recount sets each count from what it just counted and the counter read right after, so it
is off by the changes that raced it (one write's ADD, an index behind by a moment), which the
next one repairs.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Iterable

from store import ABSENT, VERSION, ConflictError, Item, Table, TableSpec

log = logging.getLogger(__name__)

DOMAIN_COUNTS = TableSpec("domain_counts", key="name")
_BY_STATUS = "by_status"
_FAILING = "failing"
"""Domains whose last step failed (``last_error`` set), whatever their status."""
COUNTING = "counting_since"
"""On the ``by_status`` item: when the process recounting now began (None when none is)."""
COUNTED = "counted_at"
"""On the ``by_status`` item: when the last complete recount began."""
LEASE = 3600.0
"""Seconds a recount may take; a ``counting_since`` older than this was left by a dead
process (a recount of 100,000 domains on DynamoDB takes minutes)."""
EVERY = 7 * 86400.0
"""Seconds between the weekly recounts (``CountRepair``): a recount reads every domain, which
the scale rule allows only rarely, and drift is rare (a crash mid-write, a lost answer)."""


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
        that read is counted by its own ADD, which comes after the item's creation. The
        ``by_status`` item is created holding the recount's lease, so a process killed
        during that recount leaves a lease that runs out, and the open after that recounts
        (as does one that finds any recount's lease run out)."""
        now = time.time()
        held = self._created(_BY_STATUS, {COUNTING: now, COUNTED: None})
        failing = count_failing is not None and self._created(_FAILING, {}) is not None
        if held is None:
            if failing and count_failing is not None and not none_stored():
                self._set(_FAILING, "count", count_failing())  # a store from before `failing`
            elif not failing:
                self._recount_if_abandoned(now, count_now, count_failing)
            return
        if not none_stored():
            self.recount(count_now)
            if failing and count_failing is not None:
                self._set(_FAILING, "count", count_failing())
        self._release(held, now)

    def _recount_if_abandoned(self, now: float, count_now: Callable[[str], int],
                              count_failing: Callable[[], int] | None) -> None:
        item = self.table.get(_BY_STATUS) or {}
        since = item.get(COUNTING)
        if since is None or float(since) + LEASE > now:
            return
        held = self._take(item, now)
        if held is None:
            return
        log.warning("the domain counts' recount begun at %s never ended (its process died): "
                    "recounting", time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(since)))
        self.recount(count_now)
        if count_failing is not None:
            self._set(_FAILING, "count", count_failing())
        self._release(held, now)

    def repair_if_due(self, each: Callable[[str], Iterable[Item]], now: float,
                      every: float = EVERY) -> float:
        """Recount every status and the failing domains in one pass over the domains of
        each status (``each``), if the last recount began ``every`` seconds ago or its lease
        ran out, and if this process takes the lease: one read when it is not due. Returns
        when to look again."""
        item = self.table.get(_BY_STATUS)
        if item is None:  # not opened yet: the process that opens it counts
            return now + LEASE
        since = item.get(COUNTING)
        due = float(since) + LEASE if since is not None else float(
            item.get(COUNTED) or 0) + every
        if now < due:
            return due
        held = self._take(item, now)
        if held is None:  # another replica took it first
            return now + LEASE
        repaired = self.repair(each)
        self._release(held, now)
        if repaired:
            log.warning("domain counts repaired (kept count -> counted): %s", repaired)
        return now + every

    def repair(self, each: Callable[[str], Iterable[Item]]) -> dict[str, tuple[int, int]]:
        """Set every count from the domains themselves, one pass over each status's domains;
        returns what was wrong (name -> (kept, counted))."""
        wrong: dict[str, tuple[int, int]] = {}
        failing = 0
        for status in self._statuses:
            counted = 0
            for domain in each(status):
                counted += 1
                failing += bool(domain.get("last_error"))
            kept = self._set(_BY_STATUS, status, counted)
            if kept != counted:
                wrong[status] = (kept, counted)
        kept = self._set(_FAILING, "count", failing)
        if kept != failing:
            wrong[_FAILING] = (kept, failing)
        return wrong

    def _created(self, name: str, fields: Item) -> int | None:
        """The version of the item ``name`` made now with ``fields``; None if it exists."""
        try:
            return int(self.table.put({"name": name, **fields}, expected_version=ABSENT)[VERSION])
        except ConflictError:
            return None

    def _take(self, item: Item, now: float) -> int | None:
        """The recount's lease, taken from ``item`` as read (None: someone changed it since).
        A put keeps the item's counters (the store's contract)."""
        try:
            return int(self.table.put({"name": _BY_STATUS, COUNTING: now,
                                       COUNTED: item.get(COUNTED)},
                                      expected_version=item[VERSION])[VERSION])
        except ConflictError:
            return None

    def _release(self, held: int, began: float) -> None:
        try:
            self.table.put({"name": _BY_STATUS, COUNTING: None, COUNTED: began},
                           expected_version=held)
        except ConflictError:  # held past its lease and taken over: the taker finishes
            log.warning("the domain counts' recount outlasted its lease (%.0f s)", LEASE)

    def _set(self, name: str, counter: str, value: int) -> int:
        """Make ``counter`` of ``name`` read ``value`` (an ADD of the difference from the
        counter as read now); returns what it read."""
        kept = int((self.table.get(name) or {}).get(counter) or 0)
        if value != kept:
            self.table.increment(name, counter, value - kept)
        return kept

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
        """Set each count to ``count_now(status)`` (an ADD of the difference from the counter
        as read right after that status's count)."""
        for status in self._statuses:
            self._set(_BY_STATUS, status, count_now(status))
        return self.by_status()


class CountRepair:
    """The weekly recount as a worker step: each replica reads the ``by_status`` item only
    when the next recount is due (or its lease runs out), and one of them recounts."""

    def __init__(self, counts: StatusCounts, each: Callable[[str], Iterable[Item]],
                 clock: Callable[[], float] = time.time, every: float = EVERY) -> None:
        self._counts = counts
        self._each = each
        self._clock = clock
        self._every = every
        self._next = 0.0

    def tick(self) -> None:
        now = self._clock()
        if now >= self._next:
            self._next = self._counts.repair_if_due(self._each, now, self._every)
