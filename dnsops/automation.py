"""Registrar automation: when a domain's zone has a provider configured, we create its records.

Settings map zones to providers (``registrars = {"example.com" = {provider = "route53"}}``);
the most specific zone that contains a hostname wins. The publisher then has nothing to do.
"""
from __future__ import annotations

from typing import Any, Mapping

from dnsops.registrars import (Record, RegistrarError, RegistrarProvider, UnknownProvider,
                                ensure_records, get_provider)
from kit.settings import SettingsError


class RecordAutomation:
    def __init__(self, providers: Mapping[str, RegistrarProvider]) -> None:
        self._providers = {zone.lower().rstrip("."): p for zone, p in providers.items()}

    @classmethod
    def from_settings(cls, registrars: Mapping[str, Mapping[str, Any]]) -> "RecordAutomation":
        providers = {}
        for zone, config in registrars.items():
            options = dict(config)
            try:
                providers[zone] = get_provider(str(options.pop("provider")), **options)
            except UnknownProvider as exc:
                raise SettingsError("registrars", f"zone {zone!r}: {exc}") from None
        return cls(providers)

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

    def zones(self) -> list[dict[str, str]]:
        """Every zone whose records we create ourselves, with its provider."""
        return [{"zone": zone, "provider": type(provider).__name__}
                for zone, provider in sorted(self._providers.items())]

    def describe(self, hostname: str) -> dict[str, str] | None:
        """Which automation applies to ``hostname`` (for the API and the settings page)."""
        zone = self.zone_for(hostname)
        if zone is None:
            return None
        return {"zone": zone, "provider": type(self._providers[zone]).__name__}

    def create(self, hostname: str, records: list[dict[str, str]]) -> dict[str, Any] | None:
        """Create the missing records; None when no provider covers ``hostname``.

        A registrar failure is reported, not raised: the publisher can still create the
        records by hand, and the DNS check tells either way.
        """
        zone = self.zone_for(hostname)
        if zone is None:
            return None
        wanted = [Record(r["name"], r["type"], r["value"]) for r in records]
        result: dict[str, Any] = {"zone": zone, "provider": type(self._providers[zone]).__name__}
        try:
            created = ensure_records(self._providers[zone], zone, wanted)
        except RegistrarError as exc:
            return {**result, "error": str(exc)}
        return {**result, "created": [f"{r.type} {r.name}" for r in created]}
