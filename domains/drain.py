"""The drain of a domain's outbox (domains/outbox.py): hand each entry to its consumer, then
clear what was done.

A drain may run twice over the same entries (the writer's own drain and the worker's, after a
crash in between), so consumers are idempotent and the clearing is a conditional write that
keeps any entry a writer added meanwhile. A removed domain's item goes only once its outbox is
empty: whoever drains it last deletes it.

A drain works from the item as it read it, and may pause anywhere (a slow store call, a GC
pause) while another replica finishes the same outbox, deletes the item and a new owner
connects the hostname. Most consumers act on the hostname, not on a claim (a revoke deletes
whatever certificate it holds), so an entry bound to its claim (every kind but
``outbox.ANY_HOLDER``) is applied only after a read of the item shows that claim still holding
the hostname with the entry still pending: whoever deleted the item or cleared the entry had
applied it, and a new claim carries its own clean-up (``released`` in domains/service.py, a
takeover's entries). What is left is the time between that read and the consumer's call.
Entries written before entries named their claim are applied as they come.

The worker asks for outboxes left behind (``drain_outboxes``, on DynamoDB seventeen queries of
a spread key) only where some may be, as domains/due_hints.py does for the due indexes: on its
first round, once the grace of a drain of this process that failed is over, after an ask that
found some, and every ``WINDOW`` seconds for what a dead process left behind.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

from domains.due_hints import WINDOW
from domains.outbox import ANY_HOLDER, CLAIM, OUTBOX, Consumers, UnknownKind, kind_of
from domains.repository import REMOVING, DomainRepository
from store import ConflictError, Item

log = logging.getLogger(__name__)


class OutboxDrain:
    def __init__(self, repository: DomainRepository, consumers: Consumers,
                 clock: Callable[[], float]) -> None:
        self.repository = repository
        self.consumers = consumers
        self._clock = clock
        self._asked_at: float | None = None
        self._found = False
        self._failed: list[float] = []
        """When drains of this process (its worker's, its API's) failed, not yet asked for."""
        self._lock = threading.Lock()

    def drain(self, domain: Item) -> Item:
        """Hand the outbox's entries, in order, to their consumers and clear them; a removing
        domain is deleted instead once all are done. An entry whose consumer fails stays, with
        those after it, for the worker's drain after the grace; so does one of a kind this
        release does not know. Returns the domain as stored."""
        done: set[str] = set()
        for entry in domain.get(OUTBOX) or []:
            try:
                self._apply(domain, entry)
            except UnknownKind:  # written by a newer release: one of its replicas applies it
                log.warning("outbox entry %s of %s is of kind %r, which this release does not "
                            "know: left, with those after it, for a replica that does",
                            entry["id"], domain["hostname"], kind_of(entry))
                return self._settle(domain, done, failed=False)
            except Exception:  # the store or another part is down: the worker drains it later
                log.exception("outbox entry %s (%s) of %s failed; the worker retries it",
                              entry["id"], kind_of(entry), domain["hostname"])
                with self._lock:
                    self._failed.append(self._clock())
                return self._settle(domain, done, failed=True)
            done.add(entry["id"])
        return self._settle(domain, done, failed=False)

    def drain_outboxes(self, grace: float) -> int:
        """Drain the outboxes a dead process (or a failed consumer) left on its domains more
        than ``grace`` seconds ago, and finish their removals: one index query when there are
        none. Returns how many domains were drained.

        Each listed domain is read again by key before its drain: the list is an index read
        (possibly behind) and a drain takes time, so by its turn a domain may have been
        drained by another replica, or removed and connected again by a new owner, whose
        certificate and links a replay of the old entries would take away."""
        now = self._clock()
        upper = now - grace
        with self._lock:
            if not self._should_ask(now, upper):
                return 0
        found = self.repository.outboxes_before(upper)
        with self._lock:
            self._failed = [at for at in self._failed if at > upper]
        drained = 0
        for listed in found:
            domain = self.repository.find(listed["hostname"])
            if domain and domain.get(OUTBOX) and (domain.get("outbox_at") or 0) <= upper:
                self.drain(domain)
                drained += 1
        self._asked_at, self._found = now, bool(found)
        return drained

    def _should_ask(self, now: float, upper: float) -> bool:
        return (self._asked_at is None or self._found or now - self._asked_at >= WINDOW
                or any(at <= upper for at in self._failed))

    def _apply(self, domain: Item, entry: Item) -> None:
        if self._passed(domain, entry):
            log.info("outbox entry %s (%s) of %s skipped: its claim no longer holds the "
                     "hostname, or it was applied meanwhile", entry["id"], kind_of(entry),
                     domain["hostname"])
            return
        self.consumers.apply(entry)

    def _passed(self, domain: Item, entry: Item) -> bool:
        """Whether ``entry``, bound to its claim, is no longer to be applied: its claim does
        not hold the hostname now, or another drain cleared it (one read by key)."""
        claim = entry.get(CLAIM)
        if claim is None or kind_of(entry) in ANY_HOLDER:
            return False
        now = self.repository.find(domain["hostname"])
        return now is None or now.get("claim") != claim or not any(
            pending.get("id") == entry["id"] for pending in now.get(OUTBOX) or [])

    def _settle(self, domain: Item, done: set[str], failed: bool) -> Item:
        """Take the ``done`` entries off the item, keeping any a writer added meanwhile."""
        current = domain
        for _ in range(3):
            left = [e for e in current.get(OUTBOX) or [] if e["id"] not in done]
            try:
                if current["status"] == REMOVING and not left:
                    self._forget(current)
                    return current
                at = (self._clock() if failed else current.get("outbox_at")) if left else None
                return self.repository.write(current, {
                    **current, OUTBOX: left, "outbox_at": at,
                    "outbox_state": "pending" if left else None})
            except ConflictError:  # changed meanwhile: that write carried the outbox on
                fresh = self.repository.find(current["hostname"])
                if fresh is None or fresh["claim"] != domain["claim"]:
                    return fresh or current
                current = fresh
        return current

    def _forget(self, domain: Item) -> None:
        """The last step of a removal, once its outbox is drained."""
        self.repository.delete(domain)
