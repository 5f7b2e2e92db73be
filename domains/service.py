"""Custom domains as publishers and workers see them: connect (who may claim a hostname), and
each step of a domain as one conditional write with its timeline event and consequences, drained
before the call returns.

Its parts: domains/repository.py (the table, its counts and leases), domains/timeline.py (the
events) and domains/drain.py (the outbox drain). This module composes them and keeps the
connect policy: claims, their expiry and the cap on unproven claims."""
from __future__ import annotations

import secrets
import time
import uuid
from typing import Any, Callable, Iterable, Iterator

from dnsops.automation import RecordAutomation
from dnsops.hostnames import base_of, normalize_hostname
from dnsops.records import (ACME_LABEL, CHALLENGE_LABEL, TAKEOVER_LABEL, delegation_records,
                            instructions, required_records)
from domains.drain import OutboxDrain
from domains.errors import (PUBLISHER_ERRORS, DomainNotFound, HostnameTaken, InvalidHostname,
                            TooManyPending)
from domains.outbox import (EVENT, OUTBOX, Consumers, disable_links, revoke_held, route,
                             with_entries)
from domains.repository import (ACTIVE, AWAITING_TRAFFIC, DOMAINS, ISSUING, PENDING_DNS,
                                REMOVING, ROUTED, STATUSES, SUSPENDED, VERIFIED,
                                DomainRepository)
from domains.timeline import EVENTS, Timeline
from kit.backoff import jittered_backoff
from kit.clock import iso
from kit.hosts import HOSTNAME_LABEL, records_too_long
from store import ConflictError, Item, Page, Table

__all__ = ["ACTIVE", "AWAITING_TRAFFIC", "DOMAINS", "EVENTS", "ISSUING", "PENDING_DNS",
           "PUBLIC_FIELDS", "REMOVING", "ROUTED", "STATUSES", "SUSPENDED", "VERIFIED",
           "DomainService", "Item", "public_view"]
RECORD_LABELS = (CHALLENGE_LABEL, ACME_LABEL, TAKEOVER_LABEL)
"""The records we name under a hostname, ``<label>.<hostname>``: each must fit in DNS."""
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


def released(existing: Item) -> list[Item]:
    """What a claim released unproven may have left (a claim can fall back to pending_dns with
    its certificate, an upload and short links: a pre-validated domain whose ownership record
    went): revoked, forgotten, disabled, in the next claim's outbox, so it never serves them."""
    hostname = existing["hostname"]
    return [route(hostname, None), disable_links(hostname), revoke_held(existing)]


class DomainService:
    def __init__(self, domains: Table, events: Table, *, cname_target: str,
                 edge_addresses: list[str], platform_domains: Iterable[str],
                 retry_base: float = 5.0, retry_max: float = 3600.0,
                 claim_ttl: float = 7 * 86400, automation: RecordAutomation | None = None,
                 allow_wildcards: bool = False, max_pending: int = 0,
                 counts: Table | None = None, event_retention: float = 30 * 86400.0,
                 clock: Callable[[], float] = time.time, dcv_zone: str = "",
                 outbox_grace: float = 5.0) -> None:
        self._clock = clock
        self._outbox_grace = outbox_grace
        self._target = cname_target
        self._addresses = list(edge_addresses)
        self._platform = list(platform_domains)
        self._retry_base = retry_base
        self._retry_max = retry_max
        self._claim_ttl = claim_ttl
        self._allow_wildcards = allow_wildcards
        self._max_pending = max_pending
        self.dcv_zone = dcv_zone
        self.automation = automation or RecordAutomation({})
        self.repository = DomainRepository(domains, normalize=self.normalize, clock=clock,
                                           counts=counts)
        self.history = Timeline(events, clock=clock, retention=event_retention)
        self.consumers = Consumers()
        """Who applies each kind of outbox entry (the lifecycle and ``control/`` register)."""
        self.consumers.register(EVENT, self.history.save)
        self.outbox = OutboxDrain(self.repository, self.consumers, clock)
        self.table = self.repository.table
        """The domains table, for what the repository has no method for."""
        self.events = self.history.table
        self.counts = self.repository.counts

    @property
    def cname_target(self) -> str:
        return self._target

    @property
    def edge_addresses(self) -> list[str]:
        return list(self._addresses)

    def claim_expires_at(self, domain: Item) -> float | None:
        """When another publication may connect ``domain``'s hostname if it is still unproven
        (an unproven claim is released at the next connect after this); None once proven: a
        verified claim does not expire (only a takeover by DNS proof moves it,
        domains/takeover.py)."""
        if domain["status"] != PENDING_DNS:
            return None
        return float(domain["claimed_at"]) + self._claim_ttl

    def normalize(self, hostname: object) -> str:
        return normalize_hostname(hostname, self._platform, self._allow_wildcards)

    # The connect policy.

    def connect(self, hostname: object, publication_id: str, actor: str = "api",
                extra: dict[str, Any] | None = None,
                effects: Iterable[Item] = ()) -> tuple[Item, bool]:
        """Claim ``hostname`` for a publication: (domain, created). Idempotent for the same owner.
        ``extra``: more fields of the new item, and ``effects`` more outbox entries, written
        with it (a redirect, a pool; the www companion to create)."""
        name = self.normalize(hostname)
        too_long = records_too_long(base_of(name), RECORD_LABELS)
        if too_long is not None:
            raise InvalidHostname(name, too_long)
        for _ in range(3):
            existing = self.repository.find(name)
            now = self._clock()
            if existing is not None and existing["status"] == REMOVING:
                self.outbox.drain(existing)  # finish a removal a dead process left half done
                continue
            if existing is not None and existing["publication_id"] == publication_id:
                return existing, False
            if existing is not None and not self._released(existing, actor, now):
                continue
            self._check_pending(publication_id, now)
            item = self._claim(name, publication_id, now, extra)
            item = with_entries(item, now, [self.history.event(
                item, "connected", f"for publication {publication_id}", actor), *effects,
                *(released(existing) if existing is not None else ())])
            try:
                stored = self.repository.create(item)
            except ConflictError:
                continue  # someone connected it at the same moment: look again
            stored = self.outbox.drain(stored)
            return self._automate(stored, actor), True
        raise HostnameTaken(name)

    def _claim(self, name: str, publication_id: str, now: float,
               extra: dict[str, Any] | None) -> Item:
        """The new item of a claim: unproven, due at once."""
        token = secrets.token_urlsafe(24)
        return {"hostname": name, "publication_id": publication_id, "status": PENDING_DNS,
                "claim": uuid.uuid4().hex, "claimed_at": now,
                "token": token, "created_at": iso(now), "updated_at": iso(now),
                "dns_records": required_records(name, token, self._target, self._addresses)
                + delegation_records(name, self.dcv_zone),
                "last_error": None, "validation_errors": [], "dns_seen": {}, "attempts": 0,
                "next_attempt_at": now, **(extra or {})}

    def _released(self, existing: Item, actor: str, now: float) -> bool:
        """Delete another publication's claim of the hostname if it was never proven in time
        (an unproven claim past its time must not block the real owner): False if it changed
        meanwhile; HostnameTaken if it is still theirs."""
        if not self._abandoned(existing, now):
            raise HostnameTaken(existing["hostname"])
        try:
            self.repository.delete(existing)
        except ConflictError:
            return False
        self.history.append(existing, "released",
                            f"DNS never verified within {self._claim_ttl / 86400:g} days", actor)
        return True

    def _automate(self, domain: Item, actor: str) -> Item:
        """Create the records at the registrar when a provider covers the zone and the zone's
        settings name the domain's publication (dnsops/automation.py says what it did)."""
        result = self.automation.create(domain["hostname"], domain["dns_records"],
                                        str(domain["publication_id"]))
        if result is None:
            return domain
        created, error = result.get("created") or [], result.get("error")
        what = f"created {', '.join(created) or 'nothing (records were there)'}"
        if error:  # a registrar failure, a zone not this publication's, records in the way
            what = f"{what}; {error}" if created else error
        self.history.append(domain, "records automated" if created or not error else
                            "records not automated", f"{result['provider']}: {what}", actor)
        try:
            return self.repository.write(domain, {**domain, "automation": result})
        except ConflictError:
            return self.get(domain["hostname"])

    def _check_pending(self, publication_id: str, now: float) -> None:
        """Unproven claims are capped per publication: each one blocks its hostname for
        everybody else until it is verified or expires. One query of at most the cap's items
        (the sparse ``pending`` index), whatever the number of the publication's domains."""
        if self._max_pending <= 0:
            return
        claims = self.repository.pending_claims(publication_id, now - self._claim_ttl,
                                                self._max_pending)
        if len(claims) >= self._max_pending:
            raise TooManyPending(publication_id, self._max_pending)

    def _abandoned(self, domain: Item, now: float) -> bool:
        return domain["status"] == PENDING_DNS and now - domain["claimed_at"] > self._claim_ttl

    # Who a hostname belongs to.

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
            item = self.repository.find(name)
            if item is not None and item["status"] in ROUTED:
                return item
        return None

    def active_publication(self, hostname: str) -> str | None:
        """The publication the edge serves ``hostname`` for, as an active custom domain (itself
        or under its wildcard); None when it does not."""
        item = self._serving(hostname)
        return None if item is None else str(item["publication_id"])

    def sign_in_publication(self, hostname: str) -> tuple[str, bool] | None:
        """(publication, sign-in paused) of the domain serving ``hostname``; None when none
        does. Single sign-on stops while the domain's DNS may lead visitors (and the one-time
        codes they carry) to someone else's server: a domain awaiting traffic (served, its
        certificate ready, its DNS still pointing elsewhere), or one whose re-check fails
        (served during its grace period)."""
        item = self._serving(hostname)
        if item is None:
            return None
        return str(item["publication_id"]), item["status"] != ACTIVE or bool(
            item.get("dns_away_since") or item.get("failing_since"))  # older items

    # A domain's steps: one conditional write each, drained before they return.

    def remove(self, domain: Item, actor: str = "api", effects: Iterable[Item] = ()) -> Item:
        """Remove ``domain``: mark it ``removing`` with its timeline event and ``effects`` in
        one conditional write (ConflictError if it changed meanwhile), drain them, and only
        then delete the item. A crash on the way leaves the outbox, which the worker drains
        (then deletes); removing a domain already ``removing`` finishes the same way.
        Returns the domain as it was."""
        if domain["status"] == REMOVING:
            self.outbox.drain(domain)
            return domain
        event = self.history.event(domain, "removed", f"was {domain['status']}", actor)
        self.outbox.drain(self.repository.mark_removing(domain, [event, *effects]))
        return domain

    def transition(self, domain: Item, status: str, why: str, actor: str = "worker",
                   effects: Iterable[Item] = (), **changes: Any) -> Item:
        """Move to ``status`` if nobody else changed the domain meanwhile (else ConflictError).

        A status change carries its timeline event, and the change its ``effects`` (outbox
        entries: webhooks, route changes...), in the same conditional write, so a crash right
        after it loses none of them; they are drained before this returns."""
        entries = list(effects)
        if status != domain["status"]:
            entries.insert(0, self.history.event(domain, f"{domain['status']} -> {status}", why,
                                                 actor, transition=(domain["status"], status)))
        stored = self.repository.transition(domain, status, entries, **changes)
        return self.outbox.drain(stored) if stored.get(OUTBOX) else stored

    def record(self, domain: Item, what: str, why: str, actor: str = "worker",
               effects: Iterable[Item] = (), **changes: Any) -> Item:
        """A change that is not a status change: its timeline event, ``effects`` and the
        item's other fields ``changes`` in one conditional write on the domain's item, drained
        before this returns. (An event alone, tied to no change: ``history.append``.)

        If the item changed meanwhile (a lease, a check), it is read again and written once
        more, but only while it is the same claim in the same status: ``effects`` were made
        for that one (an upload checked for its holder, a renewal ordered while active), and
        must not land on a claim another publication made since (ConflictError)."""
        effects = list(effects)

        def write(current: Item) -> Item:
            return self.repository.carry(
                current, [self.history.event(current, what, why, actor), *effects], **changes)

        try:
            stored = write(domain)
        except ConflictError as lost:
            current = self.repository.find(domain["hostname"])
            if current is None or any(current.get(field) != domain.get(field)
                                      for field in ("claim", "publication_id", "status")):
                raise lost
            stored = write(current)
        return self.outbox.drain(stored)

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

    def drain_outboxes(self) -> int:
        """Drain the outboxes a dead process (or a failed consumer) left on its domains, and
        finish their removals. Returns how many domains were drained."""
        return self.outbox.drain_outboxes(self._outbox_grace)

    def timeline(self, domain: Item, limit: int = 100) -> list[Item]:
        """This claim's events, newest first (domains/timeline.py)."""
        return self.history.read(domain, limit)

    # Reads and leases, as the repository does them.

    def get(self, hostname: object) -> Item:
        return self.repository.get(hostname)

    def find(self, hostname: str) -> Item | None:
        return self.repository.find(hostname)

    def current(self, domain: str | Item) -> Item:
        """The domain as stored now: by hostname, or, for a domain a caller read when it was
        allowed to act on it, only while the same claim holds the hostname. DomainNotFound
        once it changed hands, as for any domain not the caller's (never who holds it now)."""
        if not isinstance(domain, dict):
            return self.get(domain)
        now = self.get(domain["hostname"])
        if now.get("claim") != domain.get("claim"):
            raise DomainNotFound(now["hostname"])
        return now

    def still_held(self, domain: Item) -> bool:
        """Whether ``domain``'s claim still holds its hostname, and is not being removed."""
        now = self.repository.find(domain["hostname"])
        return now is not None and now.get("claim") == domain.get("claim") and \
            now["status"] != REMOVING

    def find_many(self, hostnames: list[str]) -> dict[str, Item]:
        """The domains stored under these hostnames, by hostname (consistent batch reads)."""
        return self.repository.table.get_many(hostnames)

    def list_for(self, publication_id: str, limit: int = 100, cursor: str | None = None) -> Page:
        return self.repository.list_for(publication_id, limit, cursor)

    def browse(self, status: str | None = None, limit: int = 50,
               cursor: str | None = None) -> Page:
        return self.repository.browse(status, limit, cursor)

    def search(self, text: str, limit: int = 50) -> list[Item]:
        return self.repository.search(text, limit)

    def with_status(self, status: str, limit: int = 100) -> list[Item]:
        return self.repository.with_status(status, limit)

    def each_with_status(self, status: str, limit: int = 100) -> Iterator[Item]:
        return self.repository.each_with_status(status, limit)

    def due(self, status: str, limit: int = 1000) -> list[Item]:
        return self.repository.due(status, limit)

    def begin_round(self) -> None:
        """A worker round starts: read which statuses may have work (domains/due_hints.py)."""
        self.repository.hints.refresh()

    def due_this_round(self, status: str, limit: int = 1000) -> list[Item]:
        return self.repository.due_this_round(status, limit)

    def longest_failing(self, limit: int = 20) -> list[Item]:
        return self.repository.longest_failing(limit)

    def failing(self) -> int:
        return self.repository.failing()

    def by_status(self) -> dict[str, int]:
        return self.repository.by_status()

    def lease(self, domain: Item, owner: str, seconds: float) -> Item | None:
        return self.repository.lease(domain, owner, seconds)

    def release(self, hostname: str, owner: str) -> bool:
        return self.repository.release(hostname, owner)
