"""The overview's figures, computed at most once per ``ttl`` seconds per process. Domains and
certificates come from kept counts and ordered indexes, the links' totals and top list from
kept totals (``shortlinks/totals.py``): the cost follows the answer, not the fleet."""
from __future__ import annotations

import dataclasses
import datetime
import threading
from typing import Any

from control.wiring import Services

WEEKS = 12


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
        expiries = [(at, host) for host, at in
                    certificates.expiring(now + WEEKS * 7 * 86400)]  # soonest first
        weeks = [0] * WEEKS
        for at, _ in expiries:
            week = int((at - now) // (7 * 86400))
            if 0 <= week < WEEKS:
                weeks[week] += 1
        return Figures(
            computed_at=now, by_status=by_status, failing=domains.longest_failing(20),
            failing_total=domains.failing(), expired=sum(1 for at, _ in expiries if at < now),
            expiring_7=_within(expiries, now, 7), expiring_30=_within(expiries, now, 30),
            expiry_weeks=weeks, links=self._services.links.summary(10))
