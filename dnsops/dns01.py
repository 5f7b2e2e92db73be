"""DNS-01 for the ACME issuer, through the registrar that holds the domain's zone.

The TXT record is created with the zone's provider, then we wait until every authoritative
server serves it before telling the CA to look (a CA that sees a stale answer fails the
validation and counts it against its failed-validation limit).
"""
from __future__ import annotations

import logging
import time

from dnsops.automation import RecordAutomation
from dnsops.dnscheck import DnsChecker
from dnsops.registrars import Record, RegistrarError

log = logging.getLogger(__name__)


class PropagationTimeout(RegistrarError):
    pass


class RegistrarDnsSolver:
    def __init__(self, automation: RecordAutomation, checker: DnsChecker,
                 timeout: float = 120.0, interval: float = 0.2) -> None:
        self._automation = automation
        self._checker = checker
        self._timeout = timeout
        self._interval = interval

    def covers(self, hostname: str) -> bool:
        return self._automation.provider_for(hostname.lstrip("*.")) is not None

    def present(self, name: str, value: str) -> None:
        found = self._automation.provider_for(name)
        if found is None:
            raise RegistrarError(f"no registrar covers {name}")
        zone, provider = found
        provider.create_record(zone, Record(name, "TXT", value, ttl=60))
        deadline = time.monotonic() + self._timeout
        while not self._checker.txt_everywhere(name, value):
            if time.monotonic() > deadline:
                raise PropagationTimeout(f"TXT {name} not served by every authoritative "
                                         f"server after {self._timeout:.0f}s", zone=zone)
            time.sleep(self._interval)

    def cleanup(self, name: str, value: str) -> None:
        found = self._automation.provider_for(name)
        if found is None:
            return
        try:
            found[1].delete_record(found[0], Record(name, "TXT", value, ttl=60))
        except RegistrarError as exc:
            log.warning("could not remove TXT %s: %s", name, exc)
