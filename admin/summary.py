"""The overview's figures, computed at most once per ``ttl`` seconds per process. Domains and
certificates come from kept counts and ordered indexes, the links' totals and top list from
kept totals (``shortlinks/totals.py``): the cost follows the answer, not the fleet."""
from __future__ import annotations

import dataclasses
import datetime
import threading
from typing import Any

from control.wiring import Services
from domains.repository import FAILING_SET
from store import every

WEEKS = 13
"""Weekly expiry buckets: +0w to +12w covers a fresh 90-day certificate (12.9 weeks), and a
"later" bucket holds the rest, so the chart is never empty while certificates exist."""
LATER_HORIZON = 10 * 365 * 86400.0
FAILING_GRACE = 300.0
"""Seconds a domain's step may fail before the overview counts it failing. A publisher who
just connected a domain has not created its records yet, and DNS answers take minutes to
change: the first checks fail as expected. Five minutes also spans the worker's first retries
(5 s, doubling), so a domain counted failing has failed for a while, not once."""


@dataclasses.dataclass
class Figures:
    computed_at: float
    by_status: dict[str, int]
    failing: list[dict[str, Any]]
    failing_total: int
    expired: int
    expiring_7: list[tuple[str, str]]
    expiring_30: list[tuple[str, str]]
    expiry_weeks: list[int]
    expiry_later: int
    links: dict[str, Any]


def _within(expiries: list[tuple[float, str]], now: float, days: int) -> list[tuple[str, str]]:
    """(hostname, not-after) of the certificates expiring in the next ``days`` days."""
    return [(host, datetime.datetime.fromtimestamp(at, datetime.timezone.utc).isoformat(
        timespec="minutes")) for at, host in expiries if now <= at < now + days * 86400]


class Summary:
    def __init__(self, services: Services, ttl: float = 30.0) -> None:
        self._services = services
        self._ttl = ttl
        self._lock = threading.Lock()
        self._figures: Figures | None = None

    def figures(self, fresh: bool = False) -> Figures:
        with self._lock:
            if fresh or self._figures is None or \
                    self._services.clock() - self._figures.computed_at > self._ttl:
                self._figures = self._compute()
            return self._figures

    def _compute(self) -> Figures:
        now = self._services.clock()
        domains, certificates = self._services.domains, self._services.certificates
        by_status = domains.by_status()  # kept counts: one read
        # One ordered index query, bounded (``expiring``'s limit): a fleet of 90-day
        # certificates lies within 13 weeks anyway, so "later" adds little to read.
        expiries = [(at, host) for host, at in certificates.expiring(now + LATER_HORIZON)]
        weeks = [0] * WEEKS
        later = 0
        for at, _ in expiries:
            week = int((at - now) // (7 * 86400))
            if 0 <= week < WEEKS:
                weeks[week] += 1
            elif week >= WEEKS:
                later += 1
        failing = self._failing(now)
        return Figures(
            computed_at=now, by_status=by_status, failing=failing[0], failing_total=failing[1],
            expired=sum(1 for at, _ in expiries if at < now),
            expiring_7=_within(expiries, now, 7), expiring_30=_within(expiries, now, 30),
            expiry_weeks=weeks, expiry_later=later, links=self._services.links.summary(10))

    def _failing(self, now: float) -> tuple[list[dict[str, Any]], int]:
        """The domains failing for longer than the grace (longest first, at most 20) and how
        many: the kept count less those that started failing within the grace, an index query
        whose cost follows the recent failures only."""
        domains = self._services.domains
        since = now - FAILING_GRACE
        longest = [d for d in domains.longest_failing(20)
                   if float(d.get("failing_since_ts") or now) <= since]
        recent = sum(1 for _ in every(lambda cursor: domains.repository.table.query_range(
            "failing", FAILING_SET, lower=since + 1e-6, limit=500, cursor=cursor)))
        return longest, max(0, domains.failing() - recent)
