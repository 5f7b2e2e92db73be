"""The domains table: every read of it, and every write as a conditional write that keeps the
status counts (domains/counts.py) and the ordered indexes up to date.

A write is conditional on the version the caller read: it raises ``ConflictError`` when
another writer changed the item meanwhile, and the caller reads again or gives up. A write that
has consequences carries them as outbox entries on the item (domains/outbox.py); draining them
is domains/drain.py's job, never this module's.
"""
from __future__ import annotations

import contextlib
import itertools
from typing import Any, Callable, Iterable, Iterator

from domains.counts import StatusCounts
from domains.due_hints import DueHints
from domains.errors import DomainNotFound, InvalidHostname
from domains.outbox import with_entries
from kit.clock import iso
from store import ABSENT, ConflictError, Item, Page, RangeIndex, Table, TableSpec, every

PENDING_FOR = "pending_for"
WITHOUT_INDEX = 5000
"""A publication's domains read where a store lacks the ``pending`` or ``redirected`` index
(dynalite cannot add one to a v0.1.0 table); a publication with more is not squatting."""
DOMAINS = TableSpec("domains", key="hostname", indexes=("publication_id", "status"),
                    ranges=(RangeIndex("due", key="status", sort="next_attempt_at"),
                            RangeIndex("outbox", key="outbox_state", sort="outbox_at"),
                            RangeIndex("failing", key="failing_set", sort="failing_since_ts"),
                            RangeIndex("pending", key=PENDING_FOR, sort="claimed_at"),
                            RangeIndex("redirected", key="redirect_to", sort="claimed_at")),
                    spread=("status", "outbox_state", "failing_set"),
                    optional=("pending", "redirected"))
"""``due``: a domain's next step by time; clearing ``next_attempt_at`` takes it off the queue.
``failing``: domains whose last step failed, longest failing first (the dashboard's list).
``pending``: a publication's unproven claims by the time they were made (sparse: only
``pending_dns`` domains carry ``pending_for``), so the cap on them is one query of at most the
cap's items, whatever the publication's other domains (see ``pending_claims``).
``redirected``: the domains that redirect to one (sparse: only those with ``redirect_to``).
``outbox``: domains whose outbox (see domains/outbox.py) still holds entries a process wrote
with a change but did not drain (it died, or a consumer failed); the worker drains them."""

PENDING_DNS, VERIFIED, ISSUING, ACTIVE, SUSPENDED = (
    "pending_dns", "verified", "issuing", "active", "suspended")
AWAITING_TRAFFIC = "awaiting_traffic"
"""Pre-validated (domains/prevalidation.py): certificate ready, routed at the edge, waiting
for the publisher's traffic record to point at us."""
STATUSES = (PENDING_DNS, VERIFIED, ISSUING, AWAITING_TRAFFIC, ACTIVE, SUSPENDED)
ROUTED = (ACTIVE, AWAITING_TRAFFIC)
"""The statuses the edge serves a domain in."""
REMOVING = "removing"
"""Not counted among STATUSES: a removed domain whose outbox is being drained; the item is
deleted when the drain is done."""
FAILING_SET = "failing"
PUBLICATION_PAGE = 100


class DomainRepository:
    """The stored domains. ``normalize`` turns what a person typed into a key (or raises
    ``InvalidHostname``); ``counts``: the table of kept counts, None to count on each read."""

    def __init__(self, table: Table, *, normalize: Callable[[object], str],
                 clock: Callable[[], float], counts: Table | None = None) -> None:
        self.table = table
        self._normalize = normalize
        self._clock = clock
        self.counts = StatusCounts(counts, STATUSES) if counts is not None else None
        self.hints = DueHints(counts, STATUSES, clock)
        if self.counts is not None:
            self.counts.open(lambda status: len(self.with_status(status)), self._count_failing,
                             self._none_stored)

    # Reads.

    def find(self, hostname: str) -> Item | None:
        """The domain stored under ``hostname`` exactly (already normalized), or None."""
        return self.table.get(hostname)

    def get(self, hostname: object) -> Item:
        """The domain named ``hostname`` as a person typed it; DomainNotFound if none is."""
        name = self._normalize(hostname)
        domain = self.table.get(name)
        if domain is None:
            raise DomainNotFound(name)
        return domain

    def list_for(self, publication_id: str, limit: int = 100, cursor: str | None = None) -> Page:
        return self.table.query("publication_id", publication_id, limit=limit, cursor=cursor)

    def each_for(self, publication_id: str) -> Iterator[Item]:
        """Every domain of a publication, a page at a time (memory stays one page)."""
        return every(lambda cursor: self.list_for(publication_id, PUBLICATION_PAGE, cursor))

    def pending_claims(self, publication_id: str, since: float, limit: int) -> list[Item]:
        """Up to ``limit`` of the publication's ``pending_dns`` domains claimed at or after
        ``since``: one query on the sparse ``pending`` index, its cost following ``limit``."""
        if "pending" in self.table.lacking:  # a store that cannot add it: the read before it
            return list(itertools.islice(
                (d for d in itertools.islice(self.each_for(publication_id), WITHOUT_INDEX)
                 if d["status"] == PENDING_DNS and d["claimed_at"] >= since), limit))
        page = self.table.query_range("pending", publication_id, lower=since, limit=limit)
        return [item for item in page.items if item["status"] == PENDING_DNS]

    def redirecting_to(self, hostname: str, publication_id: str | None,
                       fallback: bool = True) -> Iterator[Item]:
        """The publication's domains (None: anyone's) whose ``redirect_to`` is ``hostname``:
        an index query whose cost follows how many there are, not the publication's domains.
        Without the index, the publication's domains are read, or (``fallback`` False, or no
        publication) none are."""
        if "redirected" in self.table.lacking:  # a store that cannot add it: as before it
            return (d for d in itertools.islice(self.each_for(publication_id), WITHOUT_INDEX)
                    if d.get("redirect_to") == hostname) if fallback and publication_id else \
                iter(())
        return (d for d in every(lambda cursor: self.table.query_range(
            "redirected", hostname, cursor=cursor))
            if publication_id is None or d["publication_id"] == publication_id)

    def browse(self, status: str | None = None, limit: int = 50,
               cursor: str | None = None) -> Page:
        """One page of domains, of one status (an index query) or all (a paginated scan)."""
        if status:
            return self.table.query("status", status, limit=limit, cursor=cursor)
        return self.table.scan(limit=limit, cursor=cursor)

    def search(self, text: str, limit: int = 50) -> list[Item]:
        """The domain named ``text``, else the domains of publication ``text``: a key read and
        an index query, never a scan, so search stays fast with any number of domains."""
        try:
            found = self.table.get(self._normalize(text))
        except InvalidHostname:  # it may still be a publication id
            found = None
        if found is not None:
            return [found]
        return self.table.query("publication_id", text.strip(), limit=limit).items

    def with_status(self, status: str, limit: int = 100) -> list[Item]:
        return list(self.each_with_status(status, limit))

    def each_with_status(self, status: str, limit: int = 100) -> Iterator[Item]:
        """Every domain of ``status``, a page at a time (memory stays one page)."""
        return every(lambda cursor: self.table.query("status", status, limit=limit,
                                                      cursor=cursor))

    def due(self, status: str, limit: int = 1000) -> list[Item]:
        """Domains of ``status`` whose ``next_attempt_at`` has come, soonest first, at most
        ``limit`` (the rest are due next round): an ordered index query, never a scan."""
        now = self._clock()
        return list(itertools.islice(every(lambda cursor: self.table.query_range(
            "due", status, upper=now, limit=min(limit, 500), cursor=cursor)), limit))

    def due_this_round(self, status: str, limit: int = 1000) -> list[Item]:
        """``due`` for a worker round: asked only where work may be (domains/due_hints.py).
        After an ask that found none, the earliest domain is read first (one query), which
        gives the time ahead when it is not due; after one that found work, ``due``, and the
        time ahead only when nothing is due any more."""
        if not self.hints.should_ask(status):
            return []
        now = self._clock()
        if not self.hints.found_last(status):
            first = self._earliest(status, None)
            if first is None or first > now:
                self.hints.asked(status, now, False, first)
                return []
        found = self.due(status, limit)
        self.hints.asked(status, now, bool(found), None if found else self._earliest(status, now))
        return found

    def _earliest(self, status: str, lower: float | None) -> float | None:
        first = self.table.query_range("due", status, lower=lower, limit=1).items
        return float(first[0]["next_attempt_at"]) if first else None

    def outboxes_before(self, upper: float) -> list[Item]:
        """The domains whose outbox was last written at or before ``upper`` and still holds
        entries: one index query when there are none."""
        return list(every(lambda cursor: self.table.query_range(
            "outbox", "pending", upper=upper, cursor=cursor)))

    def longest_failing(self, limit: int = 20) -> list[Item]:
        """The domains whose last step failed, longest failing first: an index query whose
        cost follows ``limit``, not the fleet. (A domain that failed before this index existed
        enters it at its next step.)"""
        return self.table.query_range("failing", FAILING_SET, limit=limit).items

    def failing(self) -> int:
        """How many domains' last step failed: one read (a kept count), or a count of every
        domain when no counts table was given."""
        return self.counts.failing() if self.counts is not None else self._count_failing()

    def by_status(self) -> dict[str, int]:
        """How many domains each status has: one read (kept counts), or a count of every
        domain when no counts table was given."""
        if self.counts is not None:
            return self.counts.by_status()
        return {status: len(self.with_status(status)) for status in STATUSES}

    def _none_stored(self) -> bool:
        page = self.table.scan(limit=1)
        return not page.items and page.next_cursor is None

    def _count_failing(self) -> int:
        return sum(1 for status in STATUSES for domain in self.each_with_status(status)
                   if domain.get("last_error"))

    # Writes: each conditional on the version read, each keeping the counts.

    def create(self, item: Item) -> Item:
        """Store a new domain; ConflictError if one is stored under its name already."""
        stored = self.table.put(pending_indexed(item), expected_version=ABSENT)
        self._counted(None, stored)
        self.hints.written(None, stored)
        return stored

    def write(self, domain: Item, updated: Item) -> Item:
        """Store ``updated`` in place of ``domain`` if nobody changed it meanwhile."""
        stored = self.table.put(pending_indexed(updated), expected_version=domain["version"])
        self._counted(domain, stored)
        self.hints.written(domain, stored)
        return stored

    def delete(self, domain: Item) -> None:
        """Delete ``domain`` if nobody changed it meanwhile."""
        self.table.delete(domain["hostname"], expected_version=domain["version"])
        self._counted(domain, None)

    def transition(self, domain: Item, status: str, entries: Iterable[Item] = (),
                   **changes: object) -> Item:
        """Move ``domain`` to ``status`` with ``changes``, and ``entries`` in its outbox, in one
        conditional write; the failing index follows ``last_error``."""
        now = self._clock()
        updated = {**domain, **changes, "status": status, "updated_at": iso(now)}
        failing = bool(updated.get("last_error"))
        updated["failing_set"] = FAILING_SET if failing else None
        updated["failing_since_ts"] = (domain.get("failing_since_ts") or now) if failing else None
        entries = list(entries)
        if entries:
            updated = with_entries(updated, now, entries)
        return self.write(domain, updated)

    def mark_removing(self, domain: Item, entries: Iterable[Item]) -> Item:
        """Take ``domain`` off every queue and count as ``removing``, with ``entries`` (its
        removal's consequences) in its outbox, in one conditional write."""
        now = self._clock()
        return self.write(domain, with_entries(
            {**domain, "status": REMOVING, "updated_at": iso(now), "next_attempt_at": None},
            now, list(entries)))

    def carry(self, domain: Item, entries: Iterable[Item], **changes: Any) -> Item:
        """``entries`` added to ``domain``'s outbox, and its fields ``changes`` (none: nothing
        else changed): one conditional write."""
        return self.write(domain, with_entries({**domain, **changes}, self._clock(),
                                               list(entries)))

    # Leases.

    def lease(self, domain: Item, owner: str, seconds: float) -> Item | None:
        """Hold ``domain`` for ``seconds`` so no other worker processes it meanwhile.

        The domain as leased, or None if another worker holds a lease that has not expired.
        A lease is a conditional write, so two workers cannot both take it. Holding a lease
        does not mean nobody acted on the domain: the write that follows is conditional too.
        """
        now = self._clock()
        if domain.get("lease_owner") not in (None, owner) and domain.get("lease_until", 0) > now:
            return None
        try:
            return self.write(domain, {**domain, "lease_owner": owner,
                                       "lease_until": now + seconds})
        except ConflictError:
            return None

    @contextlib.contextmanager
    def leased(self, domain: Item, owner: str, seconds: float) -> Iterator[Item | None]:
        """``domain`` held under ``owner``'s lease for the block (None: another worker holds
        it), handed back after."""
        leased = self.lease(domain, owner, seconds)
        try:
            yield leased
        finally:
            if leased is not None:
                self.release(domain["hostname"], owner)

    def release(self, hostname: str, owner: str) -> bool:
        """End ``owner``'s lease on ``hostname`` early; False if it no longer holds one."""
        domain = self.table.get(hostname)
        if domain is None or domain.get("lease_owner") != owner:
            return False
        try:
            self.write(domain, {**domain, "lease_owner": None, "lease_until": 0})
            return True
        except ConflictError:
            return False

    def _counted(self, old: Item | None, new: Item | None) -> None:
        """Keep the counts after ``old`` became ``new`` (None: absent; a removing domain
        counts as absent, since it left the counts when it was marked)."""
        if self.counts is None:
            return
        before, after = _counted_as(old), _counted_as(new)
        self.counts.changed(before["status"] if before else None,
                            after["status"] if after else None)
        self.counts.failing_changed(bool(before and before.get("last_error")),
                                    bool(after and after.get("last_error")))


def pending_indexed(domain: Item) -> Item:
    """``domain`` in the ``pending`` index while it is an unproven claim, out of it after."""
    pending = domain["status"] == PENDING_DNS and domain.get("claimed_at") is not None
    return {**domain, PENDING_FOR: str(domain["publication_id"]) if pending else None}


def _counted_as(domain: Item | None) -> Item | None:
    return None if domain is None or domain["status"] == REMOVING else domain
