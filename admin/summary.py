"""The overview's figures. Counting domains, certificates and links reads whole tables, so the
answer is computed at most once per ``ttl`` seconds per process, never on every request."""
from __future__ import annotations

import dataclasses
import datetime
import threading
import time
from typing import Any

from control.wiring import Services
from domains.service import STATUSES

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
    certificates: int
    links: dict[str, Any]


def _parse(text: str) -> float:
    return datetime.datetime.fromisoformat(text).timestamp()


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
                    time.time() - self._figures.computed_at > self._ttl:
                self._figures = self._compute()
            return self._figures

    def _compute(self) -> Figures:
        now = time.time()
        by_status = self._services.domains.by_status()  # kept counts: one read
        failing = [d for status in STATUSES for d in self._services.domains.with_status(status)
                   if d.get("last_error")]
        failing.sort(key=lambda d: d.get("updated_at") or "", reverse=True)
        expiries = sorted((_parse(not_after), host)
                          for host, not_after in self._services.certificates.expiries())
        weeks = [0] * WEEKS
        for at, _ in expiries:
            week = int((at - now) // (7 * 86400))
            if 0 <= week < WEEKS:
                weeks[week] += 1
        return Figures(
            computed_at=now, by_status=by_status, failing=failing[:20],
            failing_total=len(failing), expired=sum(1 for at, _ in expiries if at < now),
            expiring_7=_within(expiries, now, 7), expiring_30=_within(expiries, now, 30),
            expiry_weeks=weeks, certificates=len(expiries),
            links=self._services.links.summary(10))
