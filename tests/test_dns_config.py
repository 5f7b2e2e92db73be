"""The DNS report (GET /api/v1/domains/<host>/config) against a real authoritative server."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator

import pytest
from flask.testing import FlaskClient

from admin.web import Admin
from admin_app import create_app
from control.wiring import Services
from kit.settings import Settings
from kit.web import provided
from tests.conftest import SSO_PLATFORM, ServicesWith
from devtools.dns_server import KnotServer
from tests.test_admin_pages import PASSWORD, login
from tests.test_publisher_settings import signed_in

AUTH = {"Authorization": "Bearer test-token-0123456789"}


@pytest.fixture
def knot(knot: Callable[..., KnotServer]) -> KnotServer:
    return knot({"report.test": "@ A 192.0.2.1\n"})


@pytest.fixture
def services(services_with: ServicesWith, knot: KnotServer) -> Services:
    return services_with(dns_servers=["127.0.0.1"], dns_port=knot.port,
                         edge_addresses=["127.0.0.1"])


def connect(client: FlaskClient, hostname: str) -> str:
    """Connect ``hostname``; returns its ownership token."""
    body = client.post("/api/v1/domains", headers=AUTH,
                       json={"hostname": hostname, "publication_id": "pub_1"}).get_json()
    return next(r["value"] for r in body["dns_records"] if r["type"] == "TXT")


def config(client: FlaskClient, hostname: str) -> dict[str, Any]:
    answer = client.get(f"/api/v1/domains/{hostname}/config", headers=AUTH)
    assert answer.status_code == 200, answer.get_json()
    return dict(answer.get_json())


def test_a_correct_cname(client: FlaskClient, knot: KnotServer) -> None:
    token = connect(client, "www.report.test")
    knot.set_zone("report.test", f'www CNAME edge.platform.test.\n'
                                 f'_edge-challenge.www TXT "{token}"\n')
    report = config(client, "www.report.test")
    assert report["misconfigured"] is False and report["configured_by"] == "CNAME"
    assert report["conflicts"] == [] and report["missing"] == [] and report["problems"] == []
    assert report["recommended"] == [
        {"type": "CNAME", "name": "www.report.test", "value": "edge.platform.test"},
        {"type": "TXT", "name": "_edge-challenge.www.report.test", "value": token}]
    assert report["checked_at"].endswith("+00:00")


def test_a_correct_apex_a(client: FlaskClient, knot: KnotServer) -> None:
    token = connect(client, "report.test")
    knot.set_zone("report.test", f'@ A 127.0.0.1\n_edge-challenge TXT "{token}"\n')
    report = config(client, "report.test")
    assert (report["misconfigured"], report["configured_by"], report["conflicts"]) == \
        (False, "A", [])
    assert report["recommended"][0] == {"type": "A", "name": "report.test", "value": "127.0.0.1"}


def test_nothing_yet_lists_what_is_missing(client: FlaskClient) -> None:
    connect(client, "new.report.test")
    report = config(client, "new.report.test")
    assert report["misconfigured"] is True and report["configured_by"] is None
    assert report["conflicts"] == []
    assert report["missing"] == report["recommended"]
    assert {p["code"] for p in report["problems"]} == {"nxdomain", "txt_missing"}


def only_conflict(report: dict[str, Any]) -> dict[str, Any]:
    assert report["misconfigured"] is True
    assert len(report["conflicts"]) == 1, report["conflicts"]
    return dict(report["conflicts"][0])


def test_a_wrong_cname(client: FlaskClient, knot: KnotServer) -> None:
    token = connect(client, "shop.report.test")
    knot.set_zone("report.test", f'shop CNAME old-host.example.\n'
                                 f'_edge-challenge.shop TXT "{token}"\n')
    report = config(client, "shop.report.test")
    conflict = only_conflict(report)
    assert report["configured_by"] is None
    assert conflict["type"] == "CNAME" and conflict["name"] == "shop.report.test"
    assert conflict["value"] == "old-host.example" and conflict["code"] == "cname_mismatch"
    assert "must point to edge.platform.test" in conflict["message"]


def test_a_stray_aaaa_beside_a_right_a(client: FlaskClient, knot: KnotServer) -> None:
    token = connect(client, "report.test")
    knot.set_zone("report.test", f'@ A 127.0.0.1\n@ AAAA 2001:db8::7\n'
                                 f'_edge-challenge TXT "{token}"\n')
    report = config(client, "report.test")
    conflict = only_conflict(report)
    assert report["configured_by"] == "A", "IPv4 visitors reach us: the A routes it"
    assert (conflict["type"], conflict["value"], conflict["code"]) == \
        ("AAAA", "2001:db8::7", "stray_aaaa")
    assert conflict["message"].startswith("Remove the AAAA record(s) 2001:db8::7")


def test_a_wrong_a(client: FlaskClient, knot: KnotServer) -> None:
    token = connect(client, "report.test")
    knot.set_zone("report.test", f'@ A 192.0.2.1\n_edge-challenge TXT "{token}"\n')
    report = config(client, "report.test")
    conflict = only_conflict(report)
    assert report["configured_by"] is None
    assert (conflict["type"], conflict["value"], conflict["code"]) == \
        ("A", "192.0.2.1", "a_mismatch")


def test_a_caa_that_forbids_our_ca(client: FlaskClient, knot: KnotServer) -> None:
    token = connect(client, "www.report.test")
    knot.set_zone("report.test", f'@ CAA 0 issue "otherca.example"\n'
                                 f'www CNAME edge.platform.test.\n'
                                 f'_edge-challenge.www TXT "{token}"\n')
    report = config(client, "www.report.test")
    conflict = only_conflict(report)
    assert report["configured_by"] == "CNAME"
    assert (conflict["type"], conflict["name"], conflict["value"]) == \
        ("CAA", "report.test", '0 issue "otherca.example"')
    assert 'add 0 issue "letsencrypt.org"' in conflict["message"]


def test_a_wrong_ownership_txt(client: FlaskClient, knot: KnotServer) -> None:
    connect(client, "www.report.test")
    knot.set_zone("report.test", 'www CNAME edge.platform.test.\n'
                                 '_edge-challenge.www TXT "someone-else"\n')
    conflict = only_conflict(config(client, "www.report.test"))
    assert (conflict["type"], conflict["value"], conflict["code"]) == \
        ("TXT", "someone-else", "txt_mismatch")


def test_only_the_owner_sees_the_report(client: FlaskClient) -> None:
    connect(client, "www.report.test")
    assert client.get("/api/v1/domains/www.report.test/config").status_code == 401
    assert client.get("/api/v1/domains/nope.report.test/config",
                      headers=AUTH).status_code == 404
    assert client.get("/api/v1/domains/not a host/config", headers=AUTH).status_code == 400


@pytest.fixture
def pages(sso_settings: Settings, knot: KnotServer) -> Iterator[FlaskClient]:
    services = Services.from_settings(dataclasses.replace(
        sso_settings, dns_servers=["127.0.0.1"], dns_port=knot.port,
        admin_cookie_secure=False))
    app = create_app(services)
    provided(app, Admin).users.create("alice", PASSWORD)
    yield app.test_client()
    services.close()


def test_the_settings_page_and_the_dashboard_show_the_last_report(
        pages: FlaskClient, knot: KnotServer) -> None:
    token = connect(pages, "shop.report.test")
    knot.set_zone("report.test", f'shop CNAME old-host.example.\n'
                                 f'_edge-challenge.shop TXT "{token}"\n')
    settings_path = f"https://{SSO_PLATFORM}/_edge/settings/domains/shop.report.test"
    publisher_client = pages.application.test_client(use_cookies=False)
    assert "Not checked yet." in publisher_client.get(settings_path, headers=signed_in()).text
    pages.post("/api/v1/domains/shop.report.test/check", headers=AUTH)

    publisher = publisher_client.get(settings_path, headers=signed_in()).text
    assert 'id="conflicts"' in publisher and "old-host.example" in publisher
    assert "must point to edge.platform.test" in publisher

    login(pages)
    dashboard = pages.get("/admin/domains/shop.report.test").text
    assert 'id="conflicts"' in dashboard and "<code>old-host.example</code>" in dashboard
    assert "nothing points at us" in dashboard
