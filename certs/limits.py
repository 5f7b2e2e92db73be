"""Our own count of what the CA would rate-limit, so we stop before it stops us.

Let's Encrypt's published limits: 300 new orders per account per 3 hours, 50 certificates per
registered domain per 7 days, 5 failed validations per identifier per hour. Counts live in
fixed hourly buckets (atomic counters, so every replica shares them); a window is the sum of
its buckets, a close and slightly conservative stand-in for the CA's sliding windows.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable

from publicsuffixlist import PublicSuffixList

from certs.errors import CertsError
from store import Table, TableSpec

BUDGETS = TableSpec("acme_budgets", key="key")
HOUR = 3600


@dataclasses.dataclass(frozen=True)
class Limits:
    orders_per_account_3h: int = 300
    certs_per_domain_7d: int = 50
    failures_per_name_1h: int = 5


class BudgetExceeded(CertsError):
    def __init__(self, what: str, retry_after: float) -> None:
        super().__init__(f"{what}; we wait until the window moves on")
        self.what = what
        self.retry_after = retry_after


class RateBudget:
    def __init__(self, table: Table, account: str, limits: Limits = Limits(),
                 clock: Callable[[], float] = time.time) -> None:
        self._table = table
        self._account = account
        self._limits = limits
        self._clock = clock
        self._psl = PublicSuffixList()

    def _bucket(self, kind: str, subject: str, hours_ago: int = 0) -> str:
        hour = int(self._clock() // HOUR) - hours_ago
        return f"{kind}|{subject}|{hour}"

    def _count(self, kind: str, subject: str, hours: int) -> int:
        return sum(self._table.increment(self._bucket(kind, subject, n), "n", 0)
                   for n in range(hours))

    def _registered(self, hostname: str) -> str:
        name = hostname.lstrip("*.")
        return self._psl.privatesuffix(name) or name

    def check(self, hostnames: list[str]) -> None:
        """Raise BudgetExceeded if a new order for ``hostnames`` would cross a limit."""
        next_hour = (int(self._clock() // HOUR) + 1) * HOUR
        if self._count("orders", self._account, 3) >= self._limits.orders_per_account_3h:
            raise BudgetExceeded(f"{self._limits.orders_per_account_3h} orders in 3 hours "
                                 "for this ACME account", next_hour)
        for domain in {self._registered(h) for h in hostnames}:
            if self._count("certs", domain, 7 * 24) >= self._limits.certs_per_domain_7d:
                raise BudgetExceeded(f"{self._limits.certs_per_domain_7d} certificates in 7 "
                                     f"days for {domain}", next_hour)
        for name in hostnames:
            if self._count("failures", name, 1) >= self._limits.failures_per_name_1h:
                raise BudgetExceeded(f"{self._limits.failures_per_name_1h} failed validations "
                                     f"in the last hour for {name}", next_hour)

    def ordered(self) -> None:
        self._table.increment(self._bucket("orders", self._account), "n")

    def issued(self, hostnames: list[str]) -> None:
        for domain in {self._registered(h) for h in hostnames}:
            self._table.increment(self._bucket("certs", domain), "n")

    def failed_validation(self, hostnames: list[str]) -> None:
        for name in hostnames:
            self._table.increment(self._bucket("failures", name), "n")
