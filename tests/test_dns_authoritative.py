"""DNS checks against a real authoritative server (knotd), and registrar automation into it."""
from __future__ import annotations

import dataclasses
from typing import Callable

import pytest
from flask.testing import FlaskClient

from control.wiring import Services
from dnsops.dnscheck import DnsChecker
from domains.service import VERIFIED
from kit.settings import Settings
from devtools.dns_server import KnotServer
from tests.conftest import ServicesWith

TSIG = ("edge-key", "c2VjcmV0LWtleS1mb3ItdGhlLWVkZ2UtdGVzdHMtMTIzNA==")
AUTH = {"Authorization": "Bearer test-token-0123456789"}


@pytest.fixture
def knot(knot: Callable[..., KnotServer]) -> KnotServer:
    return knot({
        "example.test": "@ A 127.0.0.1\n",
        "caa.test": '@ CAA 0 issue "otherca.example"\nsub A 127.0.0.1\n',
        "okcaa.test": '@ CAA 0 issue "letsencrypt.org; validationmethods=http-01"\n'
                      "@ A 127.0.0.1\n",
        "v6.test": "@ A 127.0.0.1\n@ AAAA 2001:db8::1\n",
    }, tsig=TSIG)


@pytest.fixture
def dns_settings(settings: Settings, knot: KnotServer) -> Settings:
    return dataclasses.replace(
        settings, dns_servers=["127.0.0.1"], dns_port=knot.port,
        registrars={"example.test": {"provider": "rfc2136", "server": "127.0.0.1",
                                     "port": knot.port, "key_name": TSIG[0],
                                     "key_secret": TSIG[1], "publications": ["pub_1"]}})


def codes(checker: DnsChecker, hostname: str, token: str = "t") -> list[str]:
    return [p.code for p in checker.check(hostname, token).problems]


def test_checks_ask_the_authoritative_server(dns_settings: Settings, knot: KnotServer) -> None:
    checker = DnsChecker.from_settings(dns_settings)
    assert checker.authoritative_servers("deep.sub.example.test") == ["127.0.0.1"]
    result = checker.check("example.test", "t")
    assert list(result.seen) == [f"127.0.0.1:{knot.port}"]
    assert codes(checker, "example.test") == ["txt_missing"]
    assert codes(checker, "nothere.example.test") == ["nxdomain", "txt_missing"]


def test_caa_tree_climbing_and_stray_aaaa(dns_settings: Settings) -> None:
    checker = DnsChecker.from_settings(dns_settings)
    assert "caa_forbids_issuer" in codes(checker, "sub.caa.test"), "CAA found at the parent"
    message = [p.message for p in checker.check("sub.caa.test", "t").problems
               if p.code == "caa_forbids_issuer"][0]
    assert "otherca.example" in message and 'issue "letsencrypt.org"' in message
    assert codes(checker, "okcaa.test") == ["txt_missing"]
    assert codes(checker, "v6.test") == ["stray_aaaa", "txt_missing"]


@pytest.fixture
def services(services_with: ServicesWith, dns_settings: Settings) -> Services:
    return services_with(base=dns_settings)


def test_registrar_automation_creates_records_and_the_domain_verifies(
        client: FlaskClient, knot: KnotServer) -> None:
    created = client.post("/api/v1/domains", headers=AUTH,
                          json={"hostname": "shop.example.test", "publication_id": "pub_1"})
    assert created.status_code == 201
    body = created.get_json()
    assert body["automation"]["created"] == ["CNAME shop.example.test",
                                             "TXT _edge-challenge.shop.example.test"]
    assert knot.query("shop.example.test", "CNAME") == ["edge.platform.test."]
    checked = client.post("/api/v1/domains/shop.example.test/check", headers=AUTH).get_json()
    assert checked["ok"] is True and checked["status"] == VERIFIED
    assert checked["seen"][f"127.0.0.1:{knot.port}"]["CNAME shop.example.test"] == \
        ["edge.platform.test"]


def test_manual_check_explains_what_is_wrong(client: FlaskClient) -> None:
    client.post("/api/v1/domains", headers=AUTH,
                json={"hostname": "sub.caa.test", "publication_id": "pub_1"})
    checked = client.post("/api/v1/domains/sub.caa.test/check", headers=AUTH).get_json()
    assert checked["ok"] is False and checked["status"] == "pending_dns"
    assert {e["code"] for e in checked["validation_errors"]} >= {"caa_forbids_issuer",
                                                                 "txt_missing"}
    assert checked["attempts"] == 1 and checked["next_attempt_at"]
    assert client.post("/api/v1/domains/nope.test/check", headers=AUTH).status_code == 404


def test_wildcard_is_checked_through_a_probe_name(dns_settings: Settings,
                                                  knot: KnotServer) -> None:
    knot.set_zone("example.test", '@ A 127.0.0.1\n* CNAME edge.platform.test.\n'
                                  '_edge-challenge TXT "wild-token"\n'
                                  '@ CAA 0 issuewild "letsencrypt.org"\n'
                                  '@ CAA 0 issue "otherca.example"\n')
    checker = DnsChecker.from_settings(dns_settings)
    result = checker.check("*.example.test", "wild-token")
    assert result.ok, result.problems
    assert "CNAME edge-wildcard-probe.example.test" in result.seen[f"127.0.0.1:{knot.port}"]
    assert codes(checker, "plain.example.test", "wild-token") == ["txt_missing",
                                                                  "caa_forbids_issuer"]
