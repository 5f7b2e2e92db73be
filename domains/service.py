"""Stored domains: connect, read, list, remove, and every status change as a conditional write."""
from __future__ import annotations

import datetime
import itertools
import logging
import secrets
import time
import uuid
from typing import Any, Callable, Iterable, Iterator

from dnsops.automation import RecordAutomation
from domains.counts import StatusCounts
from domains.errors import (PUBLISHER_ERRORS, DomainError, DomainNotFound, HostnameTaken, InvalidHostname,
                            TooManyPending)
from dnsops.hostnames import normalize_hostname
from domains.outbox import (EVENT, OUTBOX, OUTBOX_GRACE, Consumers, kind_of,
                            with_entries)
from kit.clock import iso
from dnsops.records import delegation_records, instructions, required_records
from kit.backoff import jittered_backoff
from kit.hosts import HOSTNAME_LABEL
from store import ABSENT, ConflictError, Item, Page, RangeIndex, Table, TableSpec, every

log = logging.getLogger(__name__)
DOMAINS = TableSpec("domains", key="hostname", indexes=("publication_id", "status"),
                    ranges=(RangeIndex("due", key="status", sort="next_attempt_at"),
                            RangeIndex("outbox", key="outbox_state", sort="outbox_at"),
                            RangeIndex("failing", key="failing_set", sort="failing_since_ts")))
"""``due``: a domain's next step by time; clearing ``next_attempt_at`` takes it off the queue.
``failing``: domains whose last step failed, longest failing first (the dashboard's list).
``outbox``: domains whose outbox (see domains/outbox.py) still holds entries a process wrote
with a change but did not drain (it died, or a consumer failed); the worker drains them."""
EVENTS = TableSpec("domain_events", key="id", indexes=("claim",), expiring=True)
"""Events belong to one claim (one connection of a hostname), so a later owner never sees them.
Their ids sort newest first; each expires ``event_retention`` seconds after it happened."""

PENDING_DNS, VERIFIED, ISSUING, ACTIVE, SUSPENDED = (
    "pending_dns", "verified", "issuing", "active", "suspended")
AWAITING_TRAFFIC = "awaiting_traffic"
"""Pre-validated (domains/prevalidation.py): certificate ready, routed at the edge, waiting
for the publisher's traffic record to point at us."""
STATUSES = (PENDING_DNS, VERIFIED, ISSUING, AWAITING_TRAFFIC, ACTIVE, SUSPENDED)
ROUTED = (ACTIVE, AWAITING_TRAFFIC)
"""The statuses the edge serves a domain in."""
REMOVING = "removing"
FAILING_SET = "failing"
"""Not counted among STATUSES: a removed domain whose outbox is being drained; the item is
deleted when the drain is done."""
PUBLIC_FIELDS = ("hostname", "publication_id", "status", "dns_records", "created_at",
                 "updated_at", "last_error", "validation_errors", "dns_seen", "attempts",
                 "next_attempt_at", "gave_up", "automation")


def public_view(domain: Item, cname_target: str | None = None) -> dict[str, Any]:
    view = {name: domain.get(name) for name in PUBLIC_FIELDS}
    if cname_target:
        view["instructions"] = instructions(domain["hostname"], cname_target)
    if view["next_attempt_at"] is not None:
        view["next_attempt_at"] = iso(view["next_attempt_at"])
    return view


class DomainService:
    def __init__(self, domains: Table, events: Table, *, cname_target: str,
                 edge_addresses: list[str], platform_domains: Iterable[str],
                 retry_base: float = 5.0, retry_max: float = 3600.0,
                 claim_ttl: float = 7 * 86400, automation: RecordAutomation | None = None,
                 allow_wildcards: bool = False, max_pending: int = 0,
                 counts: Table | None = None, event_retention: float = 30 * 86400.0,
                 clock: Callable[[], float] = time.time, dcv_zone: str = "") -> None:
        self.domains = domains
        self.events = events
        self.counts = StatusCounts(counts, STATUSES) if counts is not None else None
        if self.counts is not None:
            self.counts.open(lambda status: len(self.with_status(status)), self._count_failing)
        self._target = cname_target
        self._addresses = list(edge_addresses)
        self._platform = list(platform_domains)
        self._retry_base = retry_base
        self._retry_max = retry_max
        self._claim_ttl = claim_ttl
        self._allow_wildcards = allow_wildcards
        self._max_pending = max_pending
        self._event_retention = event_retention
        self.dcv_zone = dcv_zone
        self.automation = automation or RecordAutomation({})
        self._clock = clock
        self.consumers = Consumers()
        """Who applies each kind of outbox entry (the lifecycle and ``control/`` register)."""
        self.consumers.register(EVENT, self._write_event)

    @property
    def cname_target(self) -> str:
        return self._target

    def normalize(self, hostname: object) -> str:
        return normalize_hostname(hostname, self._platform, self._allow_wildcards)

    def connect(self, hostname: object, publication_id: str, actor: str = "api",
                extra: dict[str, Any] | None = None,
                effects: Iterable[Item] = ()) -> tuple[Item, bool]:
        """Claim ``hostname`` for a publication: (domain, created). Idempotent for the same owner.
        ``extra``: more fields of the new item, and ``effects`` more outbox entries, written
        with it (a redirect, a pool; the www companion to create)."""
        name = self.normalize(hostname)
        for _ in range(3):
            existing = self.domains.get(name)
            now = self._clock()
            if existing is not None and existing["status"] == REMOVING:
                self._drained(existing)  # finish a removal a dead process left half done
                continue
            if existing is not None and existing["publication_id"] == publication_id:
                return existing, False
            if existing is not None:
                if not self._abandoned(existing, now):
                    raise HostnameTaken(name)
                try:  # an unproven claim past its time must not block the real owner
                    self.domains.delete(name, expected_version=existing["version"])
                except ConflictError:
                    continue
                self._counted(existing, None)
                self._event(existing, "released", actor,
                            f"DNS never verified within {self._claim_ttl / 86400:g} days")
            self._check_pending(publication_id, now)
            token = secrets.token_urlsafe(24)
            item = {"hostname": name, "publication_id": publication_id, "status": PENDING_DNS,
                    "claim": uuid.uuid4().hex, "claimed_at": now,
                    "token": token, "created_at": iso(now), "updated_at": iso(now),
                    "dns_records": required_records(name, token, self._target, self._addresses)
                    + delegation_records(name, self.dcv_zone),
                    "last_error": None, "validation_errors": [], "dns_seen": {}, "attempts": 0,
                    "next_attempt_at": now, **(extra or {})}
            item = with_entries(item, now, [self._event_item(
                item, "connected", actor, f"for publication {publication_id}"), *effects])
            try:
                stored = self.domains.put(item, expected_version=ABSENT)
            except ConflictError:
                continue  # someone connected it at the same moment: look again
            self._counted(None, stored)
            stored = self._drained(stored)
            return self._automate(stored, actor), True
        raise HostnameTaken(name)

    def _automate(self, domain: Item, actor: str) -> Item:
        """Create the records at the registrar when a provider covers the zone."""
        result = self.automation.create(domain["hostname"], domain["dns_records"])
        if result is None:
            return domain
        what = f"registrar error: {result['error']}" if "error" in result else \
            f"created {', '.join(result['created']) or 'nothing (records were there)'}"
        self._event(domain, "records automated", actor, f"{result['provider']}: {what}")
        try:
            return self.domains.put({**domain, "automation": result},
                                    expected_version=domain["version"])
        except ConflictError:
            return self.get(domain["hostname"])

    def _check_pending(self, publication_id: str, now: float) -> None:
        """Unproven claims are capped per publication: each one blocks its hostname for
        everybody else until it is verified or expires."""
        if self._max_pending <= 0:
            return
        pending = 0
        domains = every(lambda cursor: self.domains.query("publication_id", publication_id,
                                                           limit=100, cursor=cursor))
        # A publication with more domains than this is not squatting.
        for domain in itertools.islice(domains, 5000):
            pending += domain["status"] == PENDING_DNS and not self._abandoned(domain, now)
            if pending >= self._max_pending:
                raise TooManyPending(publication_id, self._max_pending)

    def _abandoned(self, domain: Item, now: float) -> bool:
        return domain["status"] == PENDING_DNS and now - domain["claimed_at"] > self._claim_ttl

    def get(self, hostname: object) -> Item:
        name = self.normalize(hostname)
        domain = self.domains.get(name)
        if domain is None:
            raise DomainNotFound(name)
        return domain

    def owner(self, hostname: str) -> tuple[str, bool] | None:
        """(publication id, verified) of a connected domain; None if nobody connected it."""
        try:
            domain = self.get(hostname)
        except PUBLISHER_ERRORS:
            return None
        return str(domain["publication_id"]), domain["status"] not in (PENDING_DNS, REMOVING)

    def _serving(self, hostname: str) -> Item | None:
        """The active domain the edge serves ``hostname`` as (itself or its wildcard)."""
        label, _, parent = hostname.partition(".")
        if not HOSTNAME_LABEL.fullmatch(label):
            return None
        for name in (hostname, "*." + parent):
            item = self.domains.get(name)
            if item is not None and item["status"] in ROUTED:
                return item
        return None

    def active_publication(self, hostname: str) -> str | None:
        """The publication the edge serves ``hostname`` for, as an active custom domain (itself
        or under its wildcard); None when it does not."""
        item = self._serving(hostname)
        return None if item is None else str(item["publication_id"])

    def sign_in_publication(self, hostname: str) -> tuple[str, bool] | None:
        """(publication, DNS re-check failing) of the active domain serving ``hostname``; None
        when none does. A failing domain is still served during its grace period, but its DNS
        may already lead visitors to someone else's server: single sign-on stops for it."""
        item = self._serving(hostname)
        if item is None:
            return None
        return str(item["publication_id"]), bool(item.get("dns_away_since")
                                                 or item.get("failing_since"))  # older items

    def list_for(self, publication_id: str, limit: int = 100, cursor: str | None = None) -> Page:
        return self.domains.query("publication_id", publication_id, limit=limit, cursor=cursor)

    def browse(self, status: str | None = None, limit: int = 50,
               cursor: str | None = None) -> Page:
        """One page of domains, of one status (an index query) or all (a paginated scan)."""
        if status:
            return self.domains.query("status", status, limit=limit, cursor=cursor)
        return self.domains.scan(limit=limit, cursor=cursor)

    def search(self, text: str, limit: int = 50) -> list[Item]:
        """The domain named ``text``, else the domains of publication ``text``: a key read and
        an index query, never a scan, so search stays fast with any number of domains."""
        try:
            found = self.domains.get(self.normalize(text))
        except InvalidHostname:  # it may still be a publication id
            found = None
        if found is not None:
            return [found]
        return self.domains.query("publication_id", text.strip(), limit=limit).items

    def with_status(self, status: str, limit: int = 100) -> list[Item]:
        return list(self.each_with_status(status, limit))

    def each_with_status(self, status: str, limit: int = 100) -> Iterator[Item]:
        """Every domain of ``status``, a page at a time (memory stays one page)."""
        return every(lambda cursor: self.domains.query("status", status, limit=limit,
                                                        cursor=cursor))

    def remove(self, domain: Item, actor: str = "api", effects: Iterable[Item] = ()) -> Item:
        """Remove ``domain``: mark it ``removing`` with its timeline event and ``effects`` in
        one conditional write (ConflictError if it changed meanwhile), drain them, and only
        then delete the item. A crash on the way leaves the outbox, which the worker drains
        (then deletes); removing a domain already ``removing`` finishes the same way.
        Returns the domain as it was."""
        if domain["status"] == REMOVING:
            self._drained(domain)
            return domain
        now = self._clock()
        event = self._event_item(domain, "removed", actor, f"was {domain['status']}")
        marked = with_entries({**domain, "status": REMOVING, "updated_at": iso(now),
                               "next_attempt_at": None}, now, [event, *effects])
        stored = self.domains.put(marked, expected_version=domain["version"])
        self._counted(domain, None)
        self._drained(stored)
        return domain

    def transition(self, domain: Item, status: str, why: str, actor: str = "worker",
                   effects: Iterable[Item] = (), **changes: Any) -> Item:
        """Move to ``status`` if nobody else changed the domain meanwhile (else ConflictError).

        A status change carries its timeline event, and the change its ``effects`` (outbox
        entries: webhooks, route changes...), in the same conditional write, so a crash right
        after it loses none of them; they are drained before this returns."""
        now = self._clock()
        updated = {**domain, **changes, "status": status, "updated_at": iso(now)}
        failing = bool(updated.get("last_error"))
        updated["failing_set"] = FAILING_SET if failing else None
        updated["failing_since_ts"] = (domain.get("failing_since_ts") or now) if failing else None
        entries = list(effects)
        if status != domain["status"]:
            entries.insert(0, self._event_item(domain, f"{domain['status']} -> {status}", actor,
                                               why, transition=(domain["status"], status)))
        if entries:
            updated = with_entries(updated, now, entries)
        stored = self.domains.put(updated, expected_version=domain["version"])
        self._counted(domain, stored)
        return self._drained(stored) if stored.get(OUTBOX) else stored

    def record(self, domain: Item, what: str, why: str, actor: str = "worker",
               effects: Iterable[Item] = ()) -> Item:
        """An event that is not a status change, with its ``effects``, in one write on the
        domain's item (read again if it changed meanwhile), drained before this returns."""
        effects = list(effects)

        def write(current: Item) -> Item:
            entries = [self._event_item(current, what, actor, why), *effects]
            return self.domains.put(with_entries(current, self._clock(), entries),
                                    expected_version=current["version"])

        try:
            stored = write(domain)
        except ConflictError:  # a lease or a check changed it meanwhile: once more
            stored = write(self.get(domain["hostname"]))
        return self._drained(stored)

    def _drained(self, domain: Item) -> Item:
        """Hand the outbox's entries, in order, to their consumers and clear them; a removing
        domain is deleted instead once all are done. An entry whose consumer fails stays, with
        those after it, for the worker's drain after the grace."""
        done: set[str] = set()
        for entry in domain.get(OUTBOX) or []:
            try:
                self._apply(entry)
            except Exception:  # the store or another part is down: the worker drains it later
                log.exception("outbox entry %s (%s) of %s failed; the worker retries it",
                              entry["id"], kind_of(entry), domain["hostname"])
                return self._settle(domain, done, failed=True)
            done.add(entry["id"])
        return self._settle(domain, done, failed=False)

    def _write_event(self, event: Item) -> None:
        self.events.put(event)  # its id was fixed when it was made: a second put is the same

    def _apply(self, entry: Item) -> None:
        self.consumers.apply(entry)

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
                return self.domains.put({**current, OUTBOX: left, "outbox_at": at,
                                         "outbox_state": "pending" if left else None},
                                        expected_version=current["version"])
            except ConflictError:  # changed meanwhile: that write carried the outbox on
                fresh = self.domains.get(current["hostname"])
                if fresh is None or fresh["claim"] != domain["claim"]:
                    return fresh or current
                current = fresh
        return current

    def _forget(self, domain: Item) -> None:
        """The last step of a removal, once its outbox is drained."""
        self.domains.delete(domain["hostname"], expected_version=domain["version"])

    def drain_outboxes(self) -> int:
        """Drain the outboxes a dead process (or a failed consumer) left on its domains, and
        finish their removals: one index query when there are none. Returns how many domains
        were drained."""
        left = list(every(lambda cursor: self.domains.query_range(
            "outbox", "pending", upper=self._clock() - OUTBOX_GRACE, cursor=cursor)))
        for domain in left:
            self._drained(domain)
        return len(left)

    def lease(self, domain: Item, owner: str, seconds: float) -> Item | None:
        """Hold ``domain`` for ``seconds`` so no other worker processes it meanwhile.

        The domain as leased, or None if another worker holds a lease that has not expired.
        A lease is a conditional write, so two workers cannot both take it.
        """
        now = self._clock()
        if domain.get("lease_owner") not in (None, owner) and domain.get("lease_until", 0) > now:
            return None
        try:
            return self.domains.put({**domain, "lease_owner": owner, "lease_until": now + seconds},
                                    expected_version=domain["version"])
        except ConflictError:
            return None

    def release(self, hostname: str, owner: str) -> bool:
        """End ``owner``'s lease on ``hostname`` early; False if it no longer holds one."""
        domain = self.domains.get(hostname)
        if domain is None or domain.get("lease_owner") != owner:
            return False
        try:
            self.domains.put({**domain, "lease_owner": None, "lease_until": 0},
                             expected_version=domain["version"])
            return True
        except ConflictError:
            return False

    def defer(self, domain: Item, errors: list[dict[str, str]], status: str | None = None,
              not_before: float | None = None, actor: str = "worker",
              effects: Iterable[Item] = (), **changes: Any) -> Item:
        """Record why a step failed and when to retry (jittered exponential backoff).

        The domain stays in its status, or moves back to ``status`` when a step must restart.
        """
        attempts = int(domain.get("attempts") or 0) + 1
        delay = jittered_backoff(attempts, self._retry_base, self._retry_max)
        error = "; ".join(e["message"] for e in errors)
        return self.transition(domain, status or domain["status"], error, actor, effects,
                               last_error=error,
                               validation_errors=errors, attempts=attempts,
                               next_attempt_at=max(self._clock() + delay, not_before or 0),
                               **changes)

    def due(self, status: str, limit: int = 1000) -> list[Item]:
        """Domains of ``status`` whose ``next_attempt_at`` has come, soonest first, at most
        ``limit`` (the rest are due next round): an ordered index query, never a scan."""
        now = self._clock()
        return list(itertools.islice(every(lambda cursor: self.domains.query_range(
            "due", status, upper=now, limit=min(limit, 500), cursor=cursor)), limit))

    def timeline(self, domain: Item, limit: int = 100) -> list[Item]:
        """This claim's events, newest first, with those still in the item's outbox (a writer
        that died before writing them leaves them there until the worker drains it)."""
        written = self.events.query("claim", domain["claim"], limit=limit).items
        known = {event["id"] for event in written}
        pending = [event for event in domain.get(OUTBOX) or []
                   if kind_of(event) == EVENT and event["id"] not in known]
        return sorted(written + pending, key=lambda event: event["id"])[:limit]

    def note(self, domain: Item, what: str, why: str, actor: str = "worker") -> None:
        """An event in the domain's timeline that is not a status change."""
        self._event(domain, what, actor, why)

    def _counted(self, old: Item | None, new: Item | None) -> None:
        """Keep the counts after ``old`` became ``new`` (None: absent)."""
        if self.counts is not None:
            self.counts.changed(old["status"] if old else None, new["status"] if new else None)
            self.counts.failing_changed(bool(old and old.get("last_error")),
                                        bool(new and new.get("last_error")))

    def _count_failing(self) -> int:
        return sum(1 for status in STATUSES for domain in self.each_with_status(status)
                   if domain.get("last_error"))

    def longest_failing(self, limit: int = 20) -> list[Item]:
        """The domains whose last step failed, longest failing first: an index query whose
        cost follows ``limit``, not the fleet. (A domain that failed before this index existed
        enters it at its next step.)"""
        return self.domains.query_range("failing", FAILING_SET, limit=limit).items

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

    def _event(self, domain: Item, what: str, actor: str, why: str) -> None:
        self.events.put(self._event_item(domain, what, actor, why))

    def _event_item(self, domain: Item, what: str, actor: str, why: str,
                    transition: tuple[str, str] | None = None) -> Item:
        newest_first = 10**20 - time.time_ns()
        return {"id": f"{newest_first:020d}-{uuid.uuid4().hex[:8]}",
                "hostname": domain["hostname"], "claim": domain["claim"], "what": what,
                "from": transition[0] if transition else None,
                "to": transition[1] if transition else None,
                "actor": actor, "why": why, "at": iso(self._clock()),
                "expires_at": self._clock() + self._event_retention}

