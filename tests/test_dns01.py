"""DNS-01 through a registrar (RFC 2136 into knotd) against Pebble validating with that knotd."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Iterator

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtensionOID

from control.wiring import Services
from devtools.pebble import PebbleStack
from kit.procs import free_port
from kit.settings import Settings
from devtools.dns_server import KnotServer
from tests.conftest import ServicesWith

TSIG = ("edge-key", "c2VjcmV0LWtleS1mb3ItdGhlLWVkZ2UtdGVzdHMtMTIzNA==")


@pytest.fixture
def knot(knot: Callable[..., KnotServer]) -> KnotServer:
    return knot({"dns01.test": "@ A 127.0.0.1\n"}, tsig=TSIG)


@pytest.fixture
def services(services_with: ServicesWith, knot: KnotServer, tmp_path: Path) -> Iterator[Services]:
    # Nothing listens on Pebble's HTTP-01 port: only DNS-01 can succeed here.
    pebble = PebbleStack(tmp_path / "pebble", http_port=free_port(),
                         dns_server=f"127.0.0.1:{knot.port}")
    yield services_with(
        acme_directory_url=pebble.directory_url, acme_ca_bundle=str(pebble.listener_ca),
        dns_servers=["127.0.0.1"], dns_port=knot.port,
        registrars={"dns01.test": {"provider": "rfc2136", "server": "127.0.0.1",
                                   "port": knot.port, "key_name": TSIG[0],
                                   "key_secret": TSIG[1]}})
    pebble.stop()


def test_dns01_issues_a_wildcard_and_cleans_up(services: Services, knot: KnotServer) -> None:
    services.issuer.issue(["*.dns01.test", "dns01.test"])
    stored = services.certificates.get("*.dns01.test")
    assert stored is not None
    leaf = x509.load_pem_x509_certificate(stored.fullchain_pem.encode())
    names = leaf.extensions.get_extension_for_oid(
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value.get_values_for_type(x509.DNSName)
    assert sorted(names) == ["*.dns01.test", "dns01.test"]
    assert knot.query("_acme-challenge.dns01.test", "TXT") == [], "challenge records removed"


def test_dns01_for_a_name_before_any_traffic(services: Services) -> None:
    services.issuer.issue(["new.dns01.test"])
    assert services.certificates.get("new.dns01.test") is not None


def test_rate_budget_stops_us_before_the_ca_does(settings: Settings, knot: KnotServer,
                                                 services: Services, tmp_path: Path) -> None:
    from certs.issuer import IssuanceError
    limited = Services.from_settings(dataclasses.replace(
        services.settings, data_dir=str(tmp_path / "limited"), sqlite_path="",
        acme_certs_per_domain_7d=2))
    try:
        limited.issuer.issue(["a.dns01.test"])
        limited.issuer.issue(["b.dns01.test"])
        with pytest.raises(IssuanceError) as caught:
            limited.issuer.issue(["c.dns01.test"])
        assert "2 certificates in 7 days for dns01.test" in caught.value.reason
        assert caught.value.retry_after and caught.value.retry_after > 0
        assert limited.certificates.get("c.dns01.test") is None
    finally:
        limited.close()
