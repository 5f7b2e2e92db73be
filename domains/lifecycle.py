"""Drives each domain from pending_dns to active; called by the worker loop of `edgectl serve`.

Every step is a conditional write, so two replicas racing for one domain cannot both act: the
loser's write raises ConflictError and it moves on. ``issuing`` doubles as a lease: if the
replica holding it dies, the domain becomes due again when the lease runs out.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Protocol

from domains.dnscheck import DnsChecker
from domains.service import ACTIVE, ISSUING, PENDING_DNS, VERIFIED, DomainService
from store import ConflictError, Item

log = logging.getLogger(__name__)

ISSUING_LEASE_SECONDS = 300.0


class CertificateIssuer(Protocol):
    def issue(self, hostnames: list[str]) -> None:
        """Obtain and store a certificate covering ``hostnames``; raise with a reason if not."""

    def discard(self, hostnames: list[str]) -> None:
        """Forget the certificate of ``hostnames`` (the domain is gone)."""


class RoutePublisher(Protocol):
    def publish(self, routes: dict[str, str]) -> None:
        """Make the edge serve exactly these routes (hostname -> publication id)."""


class Lifecycle:
    def __init__(self, domains: DomainService, checker: DnsChecker, issuer: CertificateIssuer,
                 edge: RoutePublisher, lease_seconds: float = ISSUING_LEASE_SECONDS) -> None:
        self.domains = domains
        self.checker = checker
        self.issuer = issuer
        self.edge = edge
        self._lease = lease_seconds

    def tick(self) -> None:
        # Publish first: a fresh edge needs its (empty) state to open port 80 for HTTP-01.
        try:
            self.publish_routes()
        except Exception:  # the domains must still move forward; the next round republishes
            log.exception("publishing edge routes failed")
        for domain in self.domains.due(PENDING_DNS):
            self._guard(self.verify, domain)
        for domain in self.domains.due(VERIFIED) + self.domains.due(ISSUING):
            self._guard(self.issue, domain)

    def _guard(self, step: Callable[[Item], Item], domain: Item) -> None:
        try:
            step(domain)
        except ConflictError:
            log.info("%s changed under us; another worker has it", domain["hostname"])

    def verify(self, domain: Item) -> Item:
        result = self.checker.check(domain["hostname"], domain["token"])
        if not result.ok:
            return self.domains.defer(domain, "; ".join(result.problems), result.problems,
                                      dns_seen=result.seen)
        return self.domains.transition(domain, VERIFIED, "DNS points at the edge and TXT matches",
                                       last_error=None, problems=[], dns_seen=result.seen,
                                       attempts=0, next_attempt_at=0)

    def issue(self, domain: Item) -> Item:
        leased = self.domains.transition(domain, ISSUING, "ordering a certificate",
                                         next_attempt_at=time.time() + self._lease)
        try:
            self.issuer.issue([domain["hostname"]])
        except Exception as exc:  # any failure: record it and retry from verified later
            log.warning("issuance for %s failed: %s", domain["hostname"], exc)
            return self.domains.defer(leased, f"certificate: {exc}", status=VERIFIED)
        active = self.domains.transition(leased, ACTIVE, "certificate issued", last_error=None,
                                         problems=[], attempts=0, next_attempt_at=None)
        self.publish_routes()
        return active

    def remove(self, hostname: str, actor: str = "api") -> Item:
        """Remove a domain: its route leaves the edge at once and its certificate is dropped."""
        domain = self.domains.remove(hostname, actor)
        self.issuer.discard([domain["hostname"]])
        self.publish_routes()
        return domain

    def publish_routes(self) -> None:
        for attempt in range(3):
            try:
                self.edge.publish({d["hostname"]: d["publication_id"]
                                   for d in self.domains.with_status(ACTIVE)})
                return
            except ConflictError:  # another replica published meanwhile: read again
                if attempt == 2:
                    raise
