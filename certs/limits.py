"""Our own count of what the CA would rate-limit, so we stop before it stops us.

Let's Encrypt's published limits: 300 new orders per account per 3 hours, 50 certificates per
registered domain per 7 days, 5 failed validations per identifier per hour. Each limit counts in
fixed windows of its length, one item per window. A slot is taken with a conditional write
(compare-and-set on the item's version), so replicas racing for the last slot cannot both get it,
and only while the current and the previous window together are under the limit: any sliding
window of that length lies inside those two, so the CA's own count can never be crossed. A check
costs two reads and a write, whatever the window's length.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable

from certs.errors import CertsError
from kit.hosts import public_suffixes
from store import ABSENT, VERSION, ConflictError, Item, Table, TableSpec

BUDGETS = TableSpec("acme_budgets", key="key")
HOUR = 3600
ORDERS, CERTS, FAILURES = "orders", "certs", "failures"


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
        self._psl = public_suffixes()
        self._rules = {ORDERS: (limits.orders_per_account_3h, 3 * HOUR, "orders in 3 hours"),
                       CERTS: (limits.certs_per_domain_7d, 7 * 24 * HOUR, "certificates in 7 days"),
                       FAILURES: (limits.failures_per_name_1h, HOUR,
                                  "failed validations in the last hour")}

    def _registered(self, hostname: str) -> str:
        name = hostname.lstrip("*.")
        return self._psl.privatesuffix(name) or name

    def _window(self, kind: str, at: float | None = None) -> tuple[int, int]:
        _, length, _ = self._rules[kind]
        return int((self._clock() if at is None else at) // length), length

    def _used(self, kind: str, subject: str, window: int) -> tuple[int, Item | None]:
        """(slots used in ``window`` and the one before, ``window``'s item)."""
        current = self._table.get(f"{kind}|{subject}|{window}")
        previous = self._table.get(f"{kind}|{subject}|{window - 1}")
        used = sum(int(item["n"]) for item in (current, previous) if item is not None)
        return used, current

    def _refuse(self, kind: str, subject: str) -> BudgetExceeded:
        limit, length, what = self._rules[kind]
        window, _ = self._window(kind)
        # The previous window stops counting once the next one starts.
        return BudgetExceeded(f"{limit} {what} for {subject}", (window + 1) * length)

    def _take(self, kind: str, subject: str, amount: int = 1, at: float | None = None) -> None:
        """Take a slot at ``at`` (now if not said), exactly under concurrency; or, with a
        negative amount, give back one taken then, to the window it was taken in: given to a
        later window it would free a slot there that the CA still counts. A window that no
        longer counts gets nothing back."""
        limit = self._rules[kind][0]
        window, length = self._window(kind, at)
        if window < self._window(kind)[0] - 1:
            return
        key = f"{kind}|{subject}|{window}"
        while True:
            used, current = self._used(kind, subject, window)
            if amount > 0 and used + amount > limit:
                raise self._refuse(kind, subject)
            n = max(0, int(current["n"]) + amount) if current else max(0, amount)
            try:
                self._table.put({"key": key, "n": n, "expires_at": (window + 3) * length},
                                expected_version=current[VERSION] if current else ABSENT)
                return
            except ConflictError:
                continue  # another replica took a slot meanwhile: count again

    def check(self, hostnames: list[str]) -> None:
        """Raise BudgetExceeded if these names failed validation too often lately (read only:
        failures are counted as they happen)."""
        window, _ = self._window(FAILURES)
        for name in hostnames:
            used, _ = self._used(FAILURES, name, window)
            if used >= self._rules[FAILURES][0]:
                raise self._refuse(FAILURES, name)

    def reserve(self, hostnames: list[str]) -> float:
        """Take an order slot for the account and a certificate slot for each registered
        domain before a new order, or raise BudgetExceeded (then nothing is taken). Returns
        when they were taken: what giving them back names."""
        taken_at = self._clock()
        self._take(ORDERS, self._account, at=taken_at)
        taken: list[str] = []
        try:
            for domain in sorted({self._registered(h) for h in hostnames}):
                self._take(CERTS, domain, at=taken_at)
                taken.append(domain)
        except BudgetExceeded:
            self._take(ORDERS, self._account, -1, taken_at)
            self._give_back(taken, taken_at)
            raise
        return taken_at

    def _give_back(self, domains: list[str], taken_at: float | None) -> None:
        for domain in domains:
            self._take(CERTS, domain, -1, taken_at)

    def not_issued(self, hostnames: list[str], ordered: bool = True,
                   taken_at: float | None = None) -> None:
        """The order failed: its certificate slots are free again (the CA counts issued
        certificates; the order slot stays taken, as the CA counts new orders, unless
        ``ordered`` is False: the CA surely created none). ``taken_at``: what
        :meth:`reserve` returned (None: now, for a reservation that did not say)."""
        self._give_back(sorted({self._registered(h) for h in hostnames}), taken_at)
        if not ordered:
            self._take(ORDERS, self._account, -1, taken_at)

    def failed_validation(self, hostnames: list[str]) -> None:
        for name in hostnames:
            try:
                self._take(FAILURES, name)
            except BudgetExceeded:
                pass  # already at the limit: check() refuses the next order anyway
