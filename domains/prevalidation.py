"""Pre-validation and delegated DCV: the certificate before the traffic moves.

A publisher moving a live site delegates ACME's DNS-01 to us with one CNAME,
``_acme-challenge.<host> CNAME <label>.<dcv_zone>`` (dnsops/records.py), in a zone we drive
through a registrar provider. With that CNAME and the ownership TXT in place, and only the
traffic record still pointing elsewhere, the domain is verified and its certificate issued over
DNS-01 in our own zone. It then waits in ``awaiting_traffic``, already routed at the edge with
its certificate, so visitors are served the moment its CNAME or A record points at us; the
worker sees the switch at the domain's due time (the ``due`` index, never a scan) and marks it
``active``. The issuer prefers DNS-01 whenever a solver covers a name, so renewals and
wildcards (``*.host``, for publishers whose registrar we cannot drive) take the same path.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Protocol

from domains import outbox
from dnsops.automation import RecordAutomation
from dnsops.dns01 import PropagationTimeout
from dnsops.dnscheck import DnsCheck, DnsChecker
from dnsops.hostnames import base_of
from dnsops.records import ACME_LABEL, dcv_target
from dnsops.registrars import Record, RegistrarError, RegistrarProvider
from domains.service import ACTIVE, AWAITING_TRAFFIC, PENDING_DNS
from store import Item

if TYPE_CHECKING:
    from domains.lifecycle import Lifecycle

log = logging.getLogger(__name__)

ROUTING_PROBLEMS = frozenset({"cname_mismatch", "a_mismatch", "stray_aaaa", "no_records",
                              "nxdomain"})
"""What may still be wrong for a pre-validation: only where the traffic goes."""
OWNERSHIP_PROBLEMS = frozenset({"txt_missing", "txt_mismatch"})


class DnsSolver(Protocol):
    def covers(self, hostname: str) -> bool: ...

    def present(self, name: str, value: str) -> None: ...

    def cleanup(self, name: str, value: str) -> None: ...


class DelegatedDcv:
    """DNS-01 through the publisher's ``_acme-challenge`` CNAME into our DCV zone."""

    def __init__(self, automation: RecordAutomation, checker: DnsChecker, zone: str,
                 timeout: float = 120.0, interval: float = 0.2) -> None:
        self.zone = zone
        self._automation = automation
        self._checker = checker
        self._timeout = timeout
        self._interval = interval

    def target(self, hostname: str) -> str:
        return dcv_target(hostname, self.zone)

    def delegated(self, hostname: str) -> bool:
        """Whether ``_acme-challenge.<base>`` is a CNAME to this host's name in our zone."""
        name = f"{ACME_LABEL}.{base_of(hostname)}"
        return self._checker.records(name, "CNAME") == [self.target(hostname)]

    covers = delegated

    def present(self, name: str, value: str) -> None:
        target = self.target(name.removeprefix(ACME_LABEL + "."))
        zone, provider = self._provider(target)
        provider.create_record(zone, Record(target, "TXT", value, ttl=60))
        deadline = time.monotonic() + self._timeout
        while not self._checker.txt_everywhere(target, value):
            if time.monotonic() > deadline:
                raise PropagationTimeout(f"TXT {target} not served by every authoritative "
                                         f"server after {self._timeout:.0f}s", zone=zone)
            time.sleep(self._interval)

    def cleanup(self, name: str, value: str) -> None:
        target = self.target(name.removeprefix(ACME_LABEL + "."))
        try:
            zone, provider = self._provider(target)
            provider.delete_record(zone, Record(target, "TXT", value, ttl=60))
        except RegistrarError as exc:
            log.warning("could not remove TXT %s: %s", target, exc)

    def _provider(self, name: str) -> tuple[str, RegistrarProvider]:
        found = self._automation.provider_for(name)
        if found is None:
            raise RegistrarError(f"no registrar covers the DCV zone {self.zone}")
        return found


class Solvers:
    """The first solver that covers a name answers its challenge (the zone's own registrar
    before a delegation), and the same one cleans it up."""

    def __init__(self, *solvers: DnsSolver | None) -> None:
        self._solvers = [s for s in solvers if s is not None]
        self._chosen: dict[tuple[str, str], DnsSolver] = {}
        self._lock = threading.Lock()

    def _for(self, hostname: str) -> DnsSolver | None:
        return next((s for s in self._solvers if s.covers(hostname)), None)

    def covers(self, hostname: str) -> bool:
        return self._for(hostname) is not None

    def present(self, name: str, value: str) -> None:
        solver = self._for(name.removeprefix(ACME_LABEL + "."))
        if solver is None:
            raise RegistrarError(f"no registrar or delegation covers {name}")
        with self._lock:
            self._chosen[(name, value)] = solver
        solver.present(name, value)

    def cleanup(self, name: str, value: str) -> None:
        with self._lock:
            solver = self._chosen.pop((name, value), None)
        if solver is not None:
            solver.cleanup(name, value)


class Prevalidation:
    """The lifecycle's steps for pre-validated domains (joined to it by ``attach``)."""

    def __init__(self, dcv: DelegatedDcv, recheck: float = 60.0) -> None:
        self.dcv = dcv
        self.recheck = recheck

    def attach(self, lifecycle: "Lifecycle") -> "Prevalidation":
        self.lifecycle = lifecycle
        lifecycle.prevalidation = self
        return self

    def ready(self, domain: Item, result: DnsCheck) -> bool:
        """Ownership proven, CAA fine, DNS-01 delegated to us: only the traffic record is
        still elsewhere."""
        codes = {p.code for p in result.problems}
        return bool(codes) and codes <= ROUTING_PROBLEMS and \
            self.dcv.delegated(domain["hostname"])

    def verified(self, domain: Item, result: DnsCheck, actor: str) -> Item:
        """pending_dns -> verified by delegation (``traffic_elsewhere`` on the item); the issue
        step then orders over DNS-01."""
        lifecycle = self.lifecycle
        return lifecycle.domains.transition(
            domain, "verified", "ownership TXT matches and DNS-01 is delegated to us; the "
            "traffic record still points elsewhere (pre-validation)", actor,
            effects=[lifecycle.webhook("domain.verified", domain, "verified",
                                       prevalidation=True)],
            last_error=None, validation_errors=result.errors, dns_seen=result.seen,
            attempts=0, next_attempt_at=0, traffic_elsewhere=True)

    def still_delegated(self, domain: Item) -> Item:
        """Before ordering for a pre-validated domain: without the delegation only HTTP-01 is
        left, which fails while the traffic goes elsewhere (and counts against the CA's
        failed-validation limit), so the domain goes back to proving its DNS instead."""
        if self.dcv.delegated(domain["hostname"]):
            return domain
        target = self.dcv.target(domain["hostname"])
        return self.lifecycle.domains.defer(
            domain, [{"code": "delegation_missing", "message": f"The CNAME "
                      f"_acme-challenge.{base_of(domain['hostname'])} -> {target} is gone, and "
                      "your traffic record does not point at us yet."}],
            status=PENDING_DNS, traffic_elsewhere=False)

    def issued(self, domain: Item) -> Item:
        """issuing -> awaiting_traffic: routed at the edge with its certificate already."""
        lifecycle = self.lifecycle
        return lifecycle.domains.transition(
            domain, AWAITING_TRAFFIC, "certificate issued through the DNS-01 delegation; "
            "waiting for the traffic record to point at us",
            effects=[outbox.route(domain["hostname"], domain["publication_id"]),
                     lifecycle.webhook("certificate.issued", domain, AWAITING_TRAFFIC),
                     lifecycle.webhook("domain.awaiting_traffic", domain, AWAITING_TRAFFIC)],
            last_error=None, attempts=0, next_attempt_at=lifecycle.now() + self.recheck)

    def advance(self, domain: Item, result: DnsCheck | None = None,
                actor: str = "worker") -> Item:
        """An awaiting domain at its due time: active once its traffic points at us."""
        lifecycle = self.lifecycle
        result = result or lifecycle.checker.check(domain["hostname"], domain["token"])
        now = lifecycle.now()
        if result.ok:
            return lifecycle.domains.transition(
                domain, ACTIVE, "the traffic record points at the edge", actor,
                effects=[outbox.route(domain["hostname"], domain["publication_id"]),
                         lifecycle.webhook("domain.active", domain, ACTIVE)],
                last_error=None, validation_errors=[], dns_seen=result.seen, attempts=0,
                next_attempt_at=now + lifecycle.timing.recheck, traffic_elsewhere=False)
        codes = {p.code for p in result.problems}
        if codes & OWNERSHIP_PROBLEMS:
            # Ownership is no longer proven: off the edge, back to proving it.
            return lifecycle.domains.defer(
                domain, result.errors, status=PENDING_DNS, actor=actor, dns_seen=result.seen,
                effects=[outbox.route(domain["hostname"], None)], traffic_elsewhere=False)
        if not self.ready(domain, result):  # CAA, the delegation gone, DNS down: say so
            return lifecycle.domains.defer(domain, result.errors, actor=actor,
                                           dns_seen=result.seen)
        waiting = lifecycle.domains.transition(
            domain, AWAITING_TRAFFIC, "traffic still elsewhere", actor,
            last_error=None, validation_errors=result.errors, dns_seen=result.seen,
            attempts=0, next_attempt_at=now + self.recheck)
        return lifecycle.renew_if_due(waiting)
