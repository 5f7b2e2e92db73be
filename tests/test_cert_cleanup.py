"""A challenge published for an order that fails is removed all the same: DNS-01 through a
registrar (RFC 2136 into knotd), HTTP-01 from the challenge table; real Pebble behind the ARI
proxy, which answers the challenge's POST with a 500."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from certs.issuer import IssuanceError
from control.wiring import Services
from devtools.dns_server import KnotServer
from devtools.pebble import PebbleStack
from kit.procs import free_port
from tests.conftest import ServicesWith
from tests.faulty_ca import FaultyCa

TSIG = ("edge-key", "c2VjcmV0LWtleS1mb3ItdGhlLWVkZ2UtdGVzdHMtMTIzNA==")


@pytest.fixture
def knot(knot: Callable[..., KnotServer]) -> KnotServer:
    return knot({"cleanup.test": "@ A 127.0.0.1\n"}, tsig=TSIG)


@pytest.fixture
def ca(knot: KnotServer, tmp_path: Path) -> Iterator[FaultyCa]:
    pebble = PebbleStack(tmp_path / "pebble", http_port=free_port(),
                         dns_server=f"127.0.0.1:{knot.port}")
    proxy = FaultyCa(pebble)
    proxy.fail_challenge_answers = True
    yield proxy
    proxy.stop()
    pebble.stop()


@pytest.fixture
def services(services_with: ServicesWith, knot: KnotServer, ca: FaultyCa) -> Services:
    return services_with(
        acme_directory_url=ca.directory_url, acme_ca_bundle=str(ca.pebble.listener_ca),
        dns_servers=["127.0.0.1"], dns_port=knot.port,
        registrars={"cleanup.test": {"provider": "rfc2136", "server": "127.0.0.1",
                                     "port": knot.port, "key_name": TSIG[0],
                                     "key_secret": TSIG[1]}})


def test_a_dns01_record_goes_when_the_ca_refuses_the_answer(
        services: Services, knot: KnotServer, ca: FaultyCa) -> None:
    """The cleanup was registered only once the answer was accepted: the TXT record stayed
    in the publisher's zone."""
    with pytest.raises(IssuanceError, match="boom"):
        services.issuer.issue(["dns.cleanup.test"])
    assert ca.challenge_answers_failed == 1
    assert knot.query("_acme-challenge.dns.cleanup.test", "TXT") == []


def test_an_http01_token_goes_when_the_ca_refuses_the_answer(
        services: Services, ca: FaultyCa) -> None:
    with pytest.raises(IssuanceError, match="boom"):
        services.issuer.issue(["http.example.test"])  # no registrar for it: HTTP-01
    assert ca.challenge_answers_failed == 1
    assert services.challenges.table.scan(limit=10).items == []
