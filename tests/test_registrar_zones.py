"""Registrar automation creates records only for the publications a zone names, and never
beside what a name already answers with. knotd holds the zones (written over RFC 2136, TSIG);
the control service's objects run on SQLite and connect the way the publisher API does."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import pytest

from control.wiring import Services
from dnsops.records import ACME_LABEL, CHALLENGE_LABEL, dcv_target
from dnsops.registrars import Record, plan_records
from domains.service import PENDING_DNS
from edgectl.ops.config_check import check
from kit.parsers import registrars as parse_registrars
from kit.settings import Settings
from devtools.dns_server import KnotServer
from tests.conftest import ServicesWith

TSIG = ("edge-key", "c2VjcmV0LWtleS1mb3ItdGhlLWVkZ2UtdGVzdHMtMTIzNA==")
ZONE = "example.test"
DCV_ZONE = "dcv.platform.test"
LIVE = "192.0.2.10"
"""The apex's own A record: a live site we must not split traffic away from."""


@pytest.fixture
def knot(knot: Callable[..., KnotServer]) -> KnotServer:
    return knot({ZONE: f"@ A {LIVE}\nold CNAME elsewhere.example.net.\n", DCV_ZONE: ""},
                tsig=TSIG)


def zone_config(knot: KnotServer, **more: Any) -> dict[str, Any]:
    return {"provider": "rfc2136", "server": "127.0.0.1", "port": knot.port,
            "key_name": TSIG[0], "key_secret": TSIG[1], **more}


@pytest.fixture
def services(services_with: ServicesWith, settings: Settings, knot: KnotServer) -> Services:
    return services_with(base=dataclasses.replace(
        settings, dns_servers=["127.0.0.1"], dns_port=knot.port, dcv_zone=DCV_ZONE,
        registrars={ZONE: zone_config(knot, publications=["pub_a"]),
                    DCV_ZONE: zone_config(knot, publications=[])}))


def ours(knot: KnotServer, hostname: str) -> dict[str, list[str]]:
    """What the zone answers for the records a connect of ``hostname`` asks for."""
    return {"CNAME": knot.query(hostname, "CNAME"),
            "TXT": knot.query(f"{CHALLENGE_LABEL}.{hostname}", "TXT"),
            "ACME": knot.query(f"{ACME_LABEL}.{hostname}", "CNAME")}


def test_another_publications_connect_creates_nothing(services: Services,
                                                      knot: KnotServer) -> None:
    domain, created = services.domains.connect("shop.example.test", "pub_b")
    assert created, "the connect itself proceeds, as a manual one"
    assert ours(knot, "shop.example.test") == {"CNAME": [], "TXT": [], "ACME": []}
    assert domain["automation"]["created"] == []
    assert "zone example.test is not publication pub_b's" in domain["automation"]["error"]
    events = services.domains.timeline(domain)
    assert any(e["what"] == "records not automated" and "not publication pub_b's" in e["why"]
               for e in events), events
    checked, result = services.lifecycle.check_now("shop.example.test", actor="publisher")
    assert checked["status"] == PENDING_DNS and not result.ok, "nothing of ours passes the check"


def test_the_listed_publications_connect_creates_the_records(services: Services,
                                                             knot: KnotServer) -> None:
    domain, _ = services.domains.connect("shop.example.test", "pub_a")
    assert ours(knot, "shop.example.test") == {
        "CNAME": ["edge.platform.test."], "TXT": [f'"{domain["token"]}"'],
        "ACME": [dcv_target("shop.example.test", DCV_ZONE) + "."]}
    assert "error" not in domain["automation"]
    assert domain["automation"]["created"] == [
        "CNAME shop.example.test", "TXT _edge-challenge.shop.example.test",
        "CNAME _acme-challenge.shop.example.test"]


def test_a_zone_without_publications_creates_records_for_nobody(
        services_with: ServicesWith, settings: Settings, knot: KnotServer) -> None:
    built = services_with(base=dataclasses.replace(
        settings, dns_servers=["127.0.0.1"], dns_port=knot.port,
        registrars={ZONE: zone_config(knot)}))
    domain, created = built.domains.connect("shop.example.test", "pub_a")
    assert created and ours(knot, "shop.example.test")["CNAME"] == []
    assert "not publication pub_a's" in domain["automation"]["error"]


def test_an_apex_with_a_live_a_record_gets_no_a_added(services: Services,
                                                      knot: KnotServer) -> None:
    domain, _ = services.domains.connect(ZONE, "pub_a")
    assert knot.query(ZONE, "A") == [LIVE], "our edge address was not added beside it"
    assert knot.query(f"{CHALLENGE_LABEL}.{ZONE}", "TXT") == [f'"{domain["token"]}"']
    assert domain["automation"]["created"] == ["TXT _edge-challenge.example.test",
                                               "CNAME _acme-challenge.example.test"]
    assert domain["automation"]["error"] == (
        f"example.test already has A {LIVE}: we did not add A 127.0.0.1 beside it; "
        f"replace A {LIVE} at example.test with A 127.0.0.1 by hand")
    why = [e["why"] for e in services.domains.timeline(domain)
           if e["what"] == "records automated"]
    assert why and f"replace A {LIVE}" in why[0]


def test_a_name_that_is_a_cname_elsewhere_keeps_it(services: Services,
                                                   knot: KnotServer) -> None:
    domain, _ = services.domains.connect("old.example.test", "pub_a")
    assert knot.query("old.example.test", "CNAME") == ["elsewhere.example.net."]
    assert "replace CNAME elsewhere.example.net at old.example.test with CNAME " \
           "edge.platform.test by hand" in domain["automation"]["error"]


A, B = "192.0.2.1", "192.0.2.2"


@pytest.mark.parametrize(("existing", "desired", "created", "blocked"), [
    ([], [("x.t", "A", A)], [("x.t", "A", A)], []),
    ([("x.t", "A", A)], [("x.t", "A", A)], [], []),
    ([("x.t", "A", B)], [("x.t", "A", A)], [], [("x.t", "A", B)]),
    ([("x.t", "AAAA", "2001:db8::1")], [("x.t", "A", A)], [], [("x.t", "AAAA", "2001:db8::1")]),
    ([("x.t", "A", A)], [("x.t", "A", A), ("x.t", "A", B)], [("x.t", "A", B)], []),
    ([("x.t", "CNAME", "o.t")], [("x.t", "A", A)], [], [("x.t", "CNAME", "o.t")]),
    ([("x.t", "CNAME", "o.t")], [("x.t", "TXT", "v")], [], [("x.t", "CNAME", "o.t")]),
    ([("x.t", "TXT", "theirs")], [("x.t", "CNAME", "e.t")], [], [("x.t", "TXT", "theirs")]),
    ([("x.t", "TXT", "theirs"), ("x.t", "MX", "10 m.t")], [("x.t", "TXT", "v")],
     [("x.t", "TXT", "v")], []),
    ([("x.t", "MX", "10 m.t"), ("x.t", "NS", "ns.t")], [("x.t", "A", A)], [("x.t", "A", A)], []),
    ([("y.t", "A", B)], [("x.t", "A", A)], [("x.t", "A", A)], []),
    # A name that does not exist is answered by the wildcard (RFC 4592): its traffic is live.
    ([("*.t", "A", B)], [("x.t", "A", A)], [], [("*.t", "A", B)]),
    ([("*.t", "A", B)], [("x.t", "CNAME", "e.t")], [], [("*.t", "A", B)]),
    ([("*.t", "CNAME", "e.t")], [("x.t", "CNAME", "e.t")], [("x.t", "CNAME", "e.t")], []),
    ([("*.t", "A", B), ("_e.x.t", "TXT", "v")], [("x.t", "A", A)], [("x.t", "A", A)], []),
    ([("*.t", "CNAME", "o.t")], [("_e.x.t", "TXT", "v"), ("_a.x.t", "CNAME", "d.t")],
     [("_e.x.t", "TXT", "v"), ("_a.x.t", "CNAME", "d.t")], []),
])
def test_plan_never_adds_to_what_a_name_answers(existing: list[tuple[str, str, str]],
                                                desired: list[tuple[str, str, str]],
                                                created: list[tuple[str, str, str]],
                                                blocked: list[tuple[str, str, str]]) -> None:
    plan = plan_records([Record(*r) for r in existing], [Record(*r) for r in desired])
    assert [r.key for r in plan.create] == created
    assert [r.key for c in plan.conflicts for r in c.existing] == blocked


def test_publications_must_be_a_list_of_ids() -> None:
    assert parse_registrars('{"a.test": {"provider": "rfc2136", "publications": ["p"]}}') == \
        {"a.test": {"provider": "rfc2136", "publications": ["p"]}}
    for wrong in ('"p"', '[1]', '[""]'):
        with pytest.raises(ValueError, match="publications must be a list"):
            parse_registrars(f'{{"a.test": {{"provider": "rfc2136", "publications": {wrong}}}}}')


def test_config_check_warns_about_a_zone_without_publications(tmp_path: Path) -> None:
    config = tmp_path / "serve.toml"
    config.write_text('dcv_zone = "dcv.platform.test"\n'
                      '[registrars."shared.test"]\nprovider = "rfc2136"\n'
                      '[registrars."mine.test"]\nprovider = "rfc2136"\npublications = ["p"]\n'
                      '[registrars."platform.test"]\nprovider = "rfc2136"\npublications = []\n'
                      '[registrars."dcv.platform.test"]\nprovider = "rfc2136"\n')
    config.chmod(0o600)
    warnings = [w for w in check([str(config)], "serve").warnings if "registrars" in w]
    assert len(warnings) == 1 and "'shared.test' names no publications" in warnings[0]
