"""Drives each domain through its lifecycle; called by the worker loop of `edgectl serve`.

pending_dns -> verified -> issuing -> active; an active domain is re-checked every
``recheck_seconds`` and suspended (route removed, so a dangling record cannot be used to take
it over) once its DNS has pointed away for ``suspend_grace_seconds``; a suspended domain whose
DNS comes back is active again. A pending domain is given up after ``give_up_seconds`` (a
manual check revives it). Every step is a conditional write, so two replicas racing for one
domain cannot both act: the loser's write raises ConflictError and it moves on. ``issuing``
doubles as a lease: if the replica holding it dies, the domain becomes due when it runs out.

What follows a change (its webhook, the route at the edge, a revocation, the short links of a
removed domain) is written with it, as outbox entries on the domain's item (domains/outbox.py),
and applied by the consumers registered here and in ``control/`` wiring.
"""
from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Callable, Protocol

from domains import outbox, pairs
from dnsops.dnscheck import DnsCheck, DnsChecker
from domains.routing import RouteValue, route_value
from domains.service import (ACTIVE, AWAITING_TRAFFIC, ISSUING, PENDING_DNS, ROUTED,
                             SUSPENDED, VERIFIED, DomainService)
from kit import logs
from store import ConflictError, Item, StoreError

if TYPE_CHECKING:
    from domains.prevalidation import Prevalidation

log = logging.getLogger(__name__)


class CertificateIssuer(Protocol):
    def issue(self, hostnames: list[str]) -> None:
        """Obtain and store a certificate covering ``hostnames``; raise with a reason if not."""

    def discard(self, hostnames: list[str]) -> None:
        """Forget the certificate of ``hostnames`` (the domain is gone)."""

    def renewal_due(self, hostname: str) -> bool:
        """Whether the certificate of ``hostname`` should be renewed now."""


class RoutePublisher(Protocol):
    def publish(self, routes: dict[str, RouteValue]) -> None:
        """Make the edge serve exactly these routes (hostname -> publication id, or (publication
        id, extras); ``domains/routing.py``): a full reconciliation, at start or on request."""

    def route_changes(self, changes: dict[str, RouteValue | None]) -> None:
        """These routes changed (hostname -> route, or None: off the edge)."""

    def refresh(self) -> None:
        """Publish what is not a route if it changed (cheap: one read when nothing did)."""

    def serving(self) -> bool:
        """Whether any edge node serves yet (the CA's HTTP-01 requests go through it)."""


class EventSink(Protocol):
    def emit(self, event_type: str, data: dict[str, object], event_id: str | None = None) -> str:
        """Record an event for the platform (a webhook); must not block on the network.
        An ``event_id`` already recorded must not be recorded twice (a drain repeated after a
        crash gives the same id)."""


class _NoEvents:
    def emit(self, event_type: str, data: dict[str, object], event_id: str | None = None) -> str:
        return ""


@dataclasses.dataclass(frozen=True)
class Timing:
    issuing_lease: float = 300.0
    worker_lease: float = 120.0
    dns_concurrency: int = 16
    issue_concurrency: int = 8
    recheck: float = 3600.0
    suspend_grace: float = 86400.0
    give_up: float = 7 * 86400.0


class Lifecycle:
    def __init__(self, domains: DomainService, checker: DnsChecker, issuer: CertificateIssuer,
                 edge: RoutePublisher, timing: Timing = Timing(),
                 events: EventSink | None = None, worker_id: str = "",
                 clock: Callable[[], float] = time.time) -> None:
        self.domains = domains
        self.checker = checker
        self.issuer = issuer
        self.edge = edge
        self.timing = timing
        self._clock = clock
        # A stable id lets a restarted worker take back its own leases at once.
        self.worker_id = worker_id or uuid.uuid4().hex[:12]
        self.events = events or _NoEvents()
        self._held: dict[str, float] = {}
        self.prevalidation: Prevalidation | None = None
        """Set by domains/prevalidation.py when a DCV zone is configured."""
        """Hostnames this worker leased -> when the lease runs out (handed back on a stop)."""
        consumers = domains.consumers
        consumers.register(outbox.ROUTE, self._follow)
        consumers.register(outbox.REVOKE, lambda entry: self.issuer.discard([entry["hostname"]]))
        consumers.register(outbox.WEBHOOK, self._emit)
        pairs.register(self)

    def _emit(self, entry: Item) -> None:
        self.events.emit(entry["type"], dict(entry["data"]), entry["id"])

    def _follow(self, entry: Item) -> None:
        """The edge follows the domain as it is now (routed while active, off the edge
        otherwise), whatever the entry saw: an entry drained late, after a newer change,
        cannot put back a stale route."""
        domain = self.domains.find(entry["hostname"])
        active = domain is not None and domain["status"] in ROUTED
        self.edge.route_changes({entry["hostname"]: route_value(domain)
                                 if domain is not None and active else None})

    def tick(self) -> None:
        """One round: only what is due, asked of an ordered index, so a round with nothing
        due costs a constant number of store requests whatever the number of domains."""
        # First: a fresh edge needs its (empty) state to open port 80 for HTTP-01.
        try:
            self.edge.refresh()
        except StoreError:
            raise  # the store is down: nothing else in this round can work either
        except Exception:  # the domains must still move forward; the next round retries
            log.exception("publishing the edge state failed")
        self.domains.drain_outboxes()  # what a dead process (or a failed consumer) left
        self._each(self.verify, self.domains.due(PENDING_DNS))
        issuing = self.domains.due(VERIFIED) + self._issuing_to_resume()
        # No order before an edge node serves: the CA would find port 80 closed, and each
        # failed validation counts against its limits (5 an hour per name at Let's Encrypt).
        # Pre-validated domains are validated over DNS-01 in our zone: they need no edge.
        if issuing and not self.edge.serving():
            issuing = [d for d in issuing if d.get("traffic_elsewhere")]
        if issuing:
            self._each(self.issue, issuing, self.timing.issue_concurrency)
        self._each(self.recheck, self.domains.due(ACTIVE) + self.domains.due(SUSPENDED))
        if self.prevalidation is not None:
            self._each(self.prevalidation.advance, self.domains.due(AWAITING_TRAFFIC))

    def now(self) -> float:
        return self._clock()

    def webhook(self, event_type: str, domain: Item, status: str, **extra: object) -> Item:
        return self._webhook(event_type, domain, status, **extra)

    @staticmethod
    def _webhook(event_type: str, domain: Item, status: str, **extra: object) -> Item:
        return outbox.webhook(event_type, hostname=domain["hostname"],
                              publication_id=domain["publication_id"], status=status, **extra)

    def _changed(self, domain: Item, status: str,
                 *webhooks: tuple[str, dict[str, object]]) -> list[Item]:
        """The outbox entries of ``domain`` moving to ``status``: its route, and ``webhooks``
        as (event type, extra data)."""
        return [outbox.route(domain["hostname"], domain["publication_id"]
                             if status in ROUTED else None),
                *(self._webhook(event_type, domain, status, **extra)
                  for event_type, extra in webhooks)]

    def _issuing_to_resume(self) -> list[Item]:
        """Issuances whose lease ran out, and at once those this worker held before a crash
        (the certs part resumes the order it had in flight)."""
        now = self._clock()
        return [d for d in self.domains.with_status(ISSUING)
                if (d.get("next_attempt_at") or 0) <= now
                or d.get("lease_owner") == self.worker_id]

    def _each(self, step: Callable[[Item], Item], domains: list[Item],
              concurrency: int | None = None) -> None:
        """Network-bound steps run concurrently with a bound (10,000 DNS checks must not take
        hours; many certificates must not wait for each other)."""
        bound = min(concurrency or self.timing.dns_concurrency, len(domains))
        if bound <= 1:
            for domain in domains:
                self._guard(step, domain)
            return
        with ThreadPoolExecutor(max_workers=bound) as pool:
            for future in [pool.submit(self._guard, step, d) for d in domains]:
                future.result()

    def _guard(self, step: Callable[[Item], Item], domain: Item) -> None:
        """Run one step on a domain this worker leased (another replica may be on it)."""
        with logs.bound(hostname=domain["hostname"], publication_id=domain.get("publication_id")):
            leased = self.domains.lease(domain, self.worker_id, self.timing.worker_lease)
            if leased is None:
                return
            self._held[domain["hostname"]] = leased["lease_until"]
            try:
                step(leased)  # its lines (and the certs part's) carry the domain
            except ConflictError:
                log.info("%s changed under us; another worker has it", domain["hostname"])

    def _check(self, domain: Item) -> DnsCheck:
        return self.checker.check(domain["hostname"], domain["token"])

    def verify(self, domain: Item, result: DnsCheck | None = None,
               actor: str = "worker") -> Item:
        result = result or self._check(domain)
        if result.ok:
            return self.domains.transition(
                domain, VERIFIED, "DNS points at the edge, TXT matches, CAA allows our CA", actor,
                effects=[self._webhook("domain.verified", domain, VERIFIED)],
                last_error=None, validation_errors=[], dns_seen=result.seen, attempts=0,
                next_attempt_at=0, traffic_elsewhere=False)
        if self.prevalidation is not None and self.prevalidation.ready(domain, result):
            return self.prevalidation.verified(domain, result, actor)
        deferred = self.domains.defer(domain, result.errors, dns_seen=result.seen, actor=actor)
        if self._clock() - domain["claimed_at"] > self.timing.give_up:
            return self.domains.transition(deferred, PENDING_DNS, "gave up waiting for DNS",
                                           next_attempt_at=None, gave_up=True)
        return deferred

    def issue(self, domain: Item) -> Item:
        if domain.get("traffic_elsewhere") and self.prevalidation is not None:
            domain = self.prevalidation.still_delegated(domain)
            if domain["status"] != VERIFIED:
                return domain
        leased = self.domains.transition(domain, ISSUING, "ordering a certificate",
                                         next_attempt_at=self._clock() + self.timing.issuing_lease)
        try:
            self.issuer.issue([domain["hostname"]])
        except Exception as exc:  # any failure: record it and retry from verified later
            log.warning("issuance for %s failed: %s", domain["hostname"], exc)
            return self.domains.defer(leased, [{"code": "issuance_failed",
                                                "message": f"certificate: {exc}"}],
                                      status=VERIFIED,
                                      not_before=getattr(exc, "retry_after", None))
        if leased.get("traffic_elsewhere") and self.prevalidation is not None:
            return self.prevalidation.issued(leased)
        return self.domains.transition(
            leased, ACTIVE, "certificate issued",
            effects=self._changed(leased, ACTIVE, ("certificate.issued", {}),
                                  ("domain.active", {})),
            last_error=None, validation_errors=[], attempts=0,
            next_attempt_at=self._clock() + self.timing.recheck)

    def recheck(self, domain: Item, result: DnsCheck | None = None,
                actor: str = "worker") -> Item:
        """An active or suspended domain: does its DNS (and ownership) still point at us?"""
        result = result or self._check(domain)
        now = self._clock()
        if result.ok:
            back = domain["status"] == SUSPENDED
            updated = self.domains.transition(
                domain, ACTIVE, "DNS points at the edge again", actor,
                effects=self._changed(domain, ACTIVE, ("domain.active", {})) if back else (),
                last_error=None, validation_errors=[], dns_seen=result.seen, attempts=0,
                failing_since=None, next_attempt_at=now + self.timing.recheck)
            return updated if back else self._renew_if_due(updated)
        failing_since = domain.get("failing_since") or now
        if domain["status"] == ACTIVE and now - failing_since >= self.timing.suspend_grace:
            return self.domains.defer(
                domain, result.errors, status=SUSPENDED, actor=actor, dns_seen=result.seen,
                failing_since=failing_since, effects=self._changed(
                    domain, SUSPENDED, ("domain.suspended", {"errors": result.errors})))
        return self.domains.defer(domain, result.errors, dns_seen=result.seen, actor=actor,
                                  failing_since=failing_since)

    def renew_if_due(self, domain: Item) -> Item:
        return self._renew_if_due(domain)

    def _renew_if_due(self, domain: Item) -> Item:
        """Renew an active domain's certificate in place; the edge swaps it in hot."""
        if not self.issuer.renewal_due(domain["hostname"]):
            return domain
        try:
            self.issuer.issue([domain["hostname"]])
        except Exception as exc:  # keep serving the current certificate; retry sooner
            log.warning("renewal for %s failed: %s", domain["hostname"], exc)
            return self.domains.defer(domain, [{"code": "renewal_failed",
                                                "message": f"certificate renewal: {exc}"}],
                                      effects=[self._webhook("certificate.renewal_failed",
                                                             domain, ACTIVE, error=str(exc))])
        return self.domains.record(domain, "certificate renewed", "a third of its lifetime was "
                                   "left (or the CA's renewal window opened)",
                                   effects=self._changed(domain, domain["status"],
                                                         ("certificate.issued",
                                                          {"renewal": True})))

    def check_now(self, hostname: str, actor: str = "api") -> tuple[Item, DnsCheck]:
        """Re-check a domain at once, whatever its schedule (the publisher pressed "check")."""
        domain = self.domains.get(hostname)
        result = self._check(domain)
        if domain["status"] == PENDING_DNS:
            domain = self.verify({**domain, "gave_up": False}, result, actor)
        elif domain["status"] in (ACTIVE, SUSPENDED) and not domain.get("held"):
            domain = self.recheck(domain, result, actor)
        elif domain["status"] == AWAITING_TRAFFIC and self.prevalidation is not None \
                and not domain.get("held"):
            domain = self.prevalidation.advance(domain, result, actor)
        return domain, result

    def renew_now(self, hostname: str, actor: str = "admin") -> Item:
        """Renew an active domain's certificate at once (an operator's decision); raises the
        issuer's error after recording it in the timeline."""
        domain = self.domains.get(hostname)
        if domain["status"] != ACTIVE:
            raise ValueError(f"only an active domain can be renewed (it is {domain['status']})")
        try:
            self.issuer.issue([domain["hostname"]])
        except Exception as exc:
            self.domains.history.append(domain, "renewal failed", str(exc), actor)
            raise
        return self.domains.record(domain, "certificate renewed", "renewed on request", actor,
                                   effects=self._changed(domain, ACTIVE, ("certificate.issued",
                                                                          {"renewal": True})))

    def suspend(self, hostname: str, actor: str = "admin") -> Item:
        """Take a domain off the edge and keep it off: neither the worker nor a re-check
        resumes it (it is ``held``) until :meth:`resume`."""
        domain = self.domains.get(hostname)
        if domain.get("held"):
            return domain
        return self.domains.transition(
            domain, SUSPENDED, "suspended by an admin", actor,
            effects=self._changed(domain, SUSPENDED, ("domain.suspended", {})),
            held=True, held_from=domain["status"], next_attempt_at=None)

    def resume(self, hostname: str, actor: str = "admin") -> Item:
        """Lift an admin's suspension: a domain that had a certificate goes back to where it
        was (its DNS re-checked at once by the worker), any other back to waiting for DNS."""
        domain = self.domains.get(hostname)
        if not domain.get("held"):
            raise ValueError("only a domain suspended by an admin can be resumed")
        was = domain.get("held_from")
        status = was if was in (ACTIVE, SUSPENDED, AWAITING_TRAFFIC) else PENDING_DNS
        webhooks: list[tuple[str, dict[str, object]]] = \
            [("domain.active", {})] if status == ACTIVE else []
        return self.domains.transition(domain, status, "resumed by an admin", actor,
                                       effects=self._changed(domain, status, *webhooks),
                                       held=False, held_from=None, attempts=0,
                                       next_attempt_at=self._clock())

    def remove(self, hostname: str, actor: str = "api") -> Item:
        """Remove a domain: in one write, it is marked ``removing`` with its route off the
        edge, its certificate to revoke, its short links to disable and its webhook; once
        those are done, it is deleted (a repeated call finishes a removal left half done)."""
        domain = self.domains.get(hostname)
        name = domain["hostname"]
        return self.domains.remove(domain, actor, effects=[
            outbox.route(name, None), outbox.disable_links(name), outbox.revoke(name),
            self._webhook("domain.removed", domain, "removed"), *pairs.removal_effects(domain)])

    def publish_routes(self) -> None:
        """Reconcile the edge with every active domain (reads them all): at start, and when
        an operator asks; routine changes publish one route each."""
        for attempt in range(3):
            try:
                self.edge.publish({d["hostname"]: route_value(d) for status in ROUTED
                                   for d in self.domains.each_with_status(status)})
                return
            except ConflictError:  # another replica published meanwhile: read again
                if attempt == 2:
                    raise

    def release_leases(self) -> int:
        """On a graceful stop, once the worker has stopped: hand back the domains this worker
        still holds, so another replica takes them at once rather than when the leases run
        out. Returns how many were released."""
        now = self._clock()
        held = [hostname for hostname, until in self._held.items() if until > now]
        self._held.clear()
        return sum(self.domains.release(hostname, self.worker_id) for hostname in held)
