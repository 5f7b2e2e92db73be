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

The lifecycle's decisions for pre-validated domains are policies among the others, in
``domains/decide.py``; here is what they need from the world: whether a name is delegated to
us, and the DNS-01 solvers the issuer uses.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

from dnsops.automation import RecordAutomation
from dnsops.dns01 import PropagationTimeout
from dnsops.dnscheck import DnsChecker
from dnsops.hostnames import base_of
from dnsops.records import ACME_LABEL, dcv_target
from dnsops.registrars import Record, RegistrarError, RegistrarProvider

log = logging.getLogger(__name__)


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
