"""Hostnames near DNS's own limit: a valid hostname of up to 253 characters leaves no room for
the records we name under it (``_edge-challenge.<host>``, ``_edge-takeover.<host>``,
``_acme-challenge.<host>``), so it is refused at connect with a sentence; one stored before that
gets a 4xx on a takeover, and every DNS lookup of a name DNS cannot carry is a failed check,
never an exception. Asked of a real authoritative server (knotd)."""
from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from admin_app import create_app
from control.wiring import Services
from dnsops.records import takeover_name
from tests.conftest import FakeClock
from tests.test_publisher_settings import post, signed_in, text_of
from tests.test_takeover_holder import services, zone  # noqa: F401 (fixtures)

AUTH = {"Authorization": "Bearer test-token-0123456789"}
LABELS = ".".join(["a" * 63, "b" * 63, "c" * 63])
FITS = f"{LABELS}.{'d' * 32}.example.test"
"""237 characters: ``_edge-challenge.`` makes it 253, the most DNS carries."""
OVER = f"{LABELS}.{'d' * 33}.example.test"
LONGEST = f"{LABELS}.{'d' * 48}.example.test"
"""253 characters: a valid hostname, and the longest."""


@pytest.fixture
def client(services: Services) -> FlaskClient:
    return create_app(services).test_client(use_cookies=False)


def test_a_hostname_whose_records_would_not_fit_in_dns_is_refused_at_connect(
        client: FlaskClient) -> None:
    assert (len(FITS), len(OVER), len(LONGEST)) == (237, 238, 253)
    fits = client.post("/api/v1/domains", headers=AUTH,
                       json={"hostname": FITS, "publication_id": "pub_1"})
    assert fits.status_code == 201, fits.get_json()
    assert f"_edge-challenge.{FITS}" in str(fits.get_json()["dns_records"])
    for name, characters in ((OVER, 254), (LONGEST, 269)):
        refused = client.post("/api/v1/domains", headers=AUTH,
                              json={"hostname": name, "publication_id": "pub_1"})
        assert refused.status_code == 400, refused.get_json()
        body = refused.get_json()
        assert body["code"] == "invalid_hostname"
        assert f"too long for its DNS records: _edge-challenge.aaaaaaaaaaaaaaaaaaaa... would " \
               f"have {characters} characters, more than DNS allows (253); a hostname here " \
               "has at most 237 characters" in body["error"]
    page = post(client, "/domains", {"hostname": LONGEST, "publication": "pub_1"},
                **signed_in())
    assert page.status_code == 400
    assert "a hostname here has at most 237 characters" in text_of(page.text)


def test_a_long_hostname_connected_before_is_a_4xx_on_a_takeover_and_a_failed_check(
        services: Services, client: FlaskClient, clock: FakeClock) -> None:
    # Connected by a release that did not refuse it.
    services.domains.repository.create(services.domains._claim(LONGEST, "pub_a", clock(),
                                                               None))
    for path in ("takeover", "takeover/verify"):
        refused = client.post(f"/api/v1/domains/{LONGEST}/{path}", headers=AUTH,
                              json={"publication_id": "pub_b"})
        assert refused.status_code == 400, refused.get_json()
        assert refused.get_json()["code"] == "too_long"
        assert "cannot be taken over: it is too long for its DNS records" in \
            refused.get_json()["error"]
        assert "pub_a" not in refused.text
    checked = client.post(f"/api/v1/domains/{LONGEST}/check", headers=AUTH)
    assert checked.status_code == 200 and checked.get_json()["ok"] is False
    assert [e["code"] for e in checked.get_json()["validation_errors"]] == ["bad_name"]
    assert "... cannot be looked up in DNS (A DNS name is > 255 octets long.)" in \
        checked.get_json()["last_error"]


def test_a_name_dns_cannot_carry_fails_its_lookups_without_raising(services: Services) -> None:
    checker = services.lifecycle.checker
    name = takeover_name(LONGEST)
    assert checker.authoritative_servers(name) == []
    assert checker.txt_everywhere(name, "token") is False
    assert checker.records(name, "TXT") == []
    result = checker.check(LONGEST, "token")
    assert not result.ok and not result.inconclusive, "the records can never exist"
    assert [p.code for p in result.problems] == ["bad_name"]
    # The name itself is one DNS carries: its servers are asked.
    assert checker.authoritative_servers(FITS) == ["127.0.0.1"]
