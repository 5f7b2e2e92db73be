"""Registrar automation: when a domain's zone has a provider configured, we create its records.

Settings map zones to providers (``registrars = {"example.com" = {provider = "route53",
publications = ["pub_1"]}}``); the most specific zone that contains a hostname wins. A zone's
``publications`` name whose connects we create records for: a zone may hold names of other
parties, and records we create there pass the DNS check on their own, so a publication the zone
does not name gets none (its connect proceeds as a manual one). A zone without ``publications``
creates records for no connect: it is a platform zone we write ACME records in (DNS-01 of
domains verified in it, the ``dcv_zone``). Records are never added beside the A/AAAA/CNAME
records a name already answers with (dnsops/registrars ``plan_records``): that is reported.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from dnsops.registrars import (Record, RegistrarError, RegistrarProvider, UnknownProvider,
                                ensure_records, get_provider)
from kit.settings import SettingsError


class RecordAutomation:
    def __init__(self, providers: Mapping[str, RegistrarProvider],
                 publications: Mapping[str, Iterable[str]] | None = None) -> None:
        self._providers = {zone.lower().rstrip("."): p for zone, p in providers.items()}
        self._publications = {zone.lower().rstrip("."): frozenset(names)
                              for zone, names in (publications or {}).items()}

    @classmethod
    def from_settings(cls, registrars: Mapping[str, Mapping[str, Any]]) -> "RecordAutomation":
        providers, publications = {}, {}
        for zone, config in registrars.items():
            options = dict(config)
            if "publications" in options:
                publications[zone] = list(options.pop("publications"))
            try:
                providers[zone] = get_provider(str(options.pop("provider")), **options)
            except UnknownProvider as exc:
                raise SettingsError("registrars", f"zone {zone!r}: {exc}") from None
        return cls(providers, publications)

    def zone_for(self, hostname: str) -> str | None:
        labels = hostname.split(".")
        for start in range(len(labels) - 1):
            zone = ".".join(labels[start:])
            if zone in self._providers:
                return zone
        return None

    def provider_for(self, hostname: str) -> tuple[str, RegistrarProvider] | None:
        zone = self.zone_for(hostname)
        return None if zone is None else (zone, self._providers[zone])

    def zones(self, publication_ids: Iterable[str]) -> list[dict[str, str]]:
        """Every zone whose records we create ourselves for one of these publications, with
        its provider (another party's zone is not named to them)."""
        return [{"zone": zone, "provider": type(provider).__name__}
                for zone, provider in sorted(self._providers.items())
                if any(self.allows(zone, name) for name in publication_ids)]

    def describe(self, hostname: str, publication_id: str) -> dict[str, str] | None:
        """Which automation applies to ``publication_id``'s ``hostname`` (for the settings
        page), or None."""
        zone = self.zone_for(hostname)
        if zone is None or not self.allows(zone, publication_id):
            return None
        return {"zone": zone, "provider": type(self._providers[zone]).__name__}

    def allows(self, zone: str, publication_id: str) -> bool:
        """Whether ``zone``'s settings name ``publication_id`` among the publications whose
        connects we create records for (none when they name no publications)."""
        return publication_id in self._publications.get(zone, frozenset())

    def create(self, hostname: str, records: list[dict[str, str]],
               publication_id: str) -> dict[str, Any] | None:
        """Create the missing records for ``publication_id``'s connect of ``hostname``; None
        when no provider covers it.

        A registrar failure, a zone that is not this publication's, and records that would go
        beside what the name already answers with are reported (``error``, a sentence), not
        raised: the publisher can still create the records by hand, and the DNS check tells.
        """
        zone = self.zone_for(hostname)
        if zone is None:
            return None
        result: dict[str, Any] = {"zone": zone, "provider": type(self._providers[zone]).__name__}
        if not self.allows(zone, publication_id):
            return {**result, "created": [], "error": (
                f"automation not used: zone {zone} is not publication {publication_id}'s (its "
                "registrar settings do not name it), so no record was created there")}
        wanted = [Record(r["name"], r["type"], r["value"]) for r in records]
        try:
            plan = ensure_records(self._providers[zone], zone, wanted)
        except RegistrarError as exc:
            return {**result, "error": str(exc)}
        result["created"] = [f"{r.type} {r.name}" for r in plan.create]
        if plan.conflicts:
            result["error"] = "; ".join(c.sentence for c in plan.conflicts)
        return result
