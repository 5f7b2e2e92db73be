"""The dashboard's domain actions act on the domain the admin saw: each form carries the claim
its page was rendered with, and once the hostname changed hands (a real takeover through the
publisher API, its TXT record on a real authoritative server, knotd) the action is refused with
a sentence and the page of the current holder, and nothing is done to that holder's domain."""
from __future__ import annotations

import dataclasses
import html
import re
from typing import Any, Callable

import pytest
from flask import Flask
from flask.testing import FlaskClient

from admin.web import Admin
from admin_app import create_app
from control.wiring import Services
from devtools.dns_server import KnotServer
from kit.settings import Settings
from kit.web import provided
from tests.conftest import ServicesWith
from tests.test_admin_pages import PASSWORD, login
from tests.test_takeover import AUTH, Zone

HOST = "blog.example.test"
BASE = f"/admin/domains/{HOST}"


@pytest.fixture
def zone(knot: Callable[..., KnotServer]) -> Zone:
    return Zone(knot({"example.test": "@ A 127.0.0.1\n"}))


@pytest.fixture
def services(services_with: ServicesWith, settings: Settings, zone: Zone) -> Services:
    return services_with(base=dataclasses.replace(
        settings, dns_servers=["127.0.0.1"], dns_port=zone.knot.port,
        admin_cookie_secure=False))


@pytest.fixture
def app(services: Services) -> Flask:
    flask_app = create_app(services)
    provided(flask_app, Admin).users.create("alice", PASSWORD)
    return flask_app


def forms(page: str) -> dict[str, dict[str, str]]:
    """The page's forms: their action, and the hidden fields a browser would post."""
    found = {}
    for action, body in re.findall(r'<form method="post" action="([^"]+)">(.*?)</form>', page,
                                   re.S):
        found[html.unescape(action)] = {
            name: html.unescape(value) for name, value in
            re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', body)}
    return found


def taken_over(client: FlaskClient, zone: Zone) -> dict[str, Any]:
    """pub_b moves HOST to itself through the publisher API: its TXT record is in the zone."""
    asked = client.post(f"/api/v1/domains/{HOST}/takeover", headers=AUTH,
                        json={"publication_id": "pub_b"})
    assert asked.status_code == 200, asked.get_json()
    zone.takeover_txt(asked.get_json()["record"]["value"])
    moved = client.post(f"/api/v1/domains/{HOST}/takeover/verify", headers=AUTH,
                        json={"publication_id": "pub_b"})
    assert moved.status_code == 200, moved.get_json()
    return dict(moved.get_json())


def untouched(services: Services, before: dict[str, Any]) -> None:
    """pub_b's domain is as the takeover left it: not suspended, checked or removed."""
    now = services.domains.get(HOST)
    assert (now["publication_id"], now["claim"], now["status"]) == \
        ("pub_b", before["claim"], "pending_dns")
    assert not now.get("held") and now["attempts"] == 0, "nothing was done to it"
    assert [e["what"] for e in services.domains.timeline(now)] == ["taken over"]


@pytest.mark.parametrize("action", ["check", "suspend", "remove"])
def test_an_action_from_a_page_shown_before_a_takeover_is_refused(
        action: str, app: Flask, services: Services, zone: Zone) -> None:
    services.domains.connect(HOST, "pub_a")
    client = app.test_client()
    login(client)
    page = client.get(f"{BASE}/remove" if action == "remove" else BASE).get_data(True)
    form = forms(page)[f"{BASE}/{action}"]
    shown = services.domains.get(HOST)["claim"]

    moved = taken_over(app.test_client(), zone)
    before = services.domains.get(HOST)
    answer = client.post(f"{BASE}/{action}", data={**form, "confirm": HOST})
    text = answer.get_data(True)
    assert answer.status_code == 409, text
    assert f"{HOST} changed hands since that page was shown" in text
    assert "Nothing was done" in text
    assert "<dd>pub_b</dd>" in text, "the page shows who holds it now"
    assert moved["publication_id"] == "pub_b"
    untouched(services, before)
    assert form["claim"] == shown, "the form named the claim its page showed"
    audit = client.get("/admin/audit").get_data(True)
    assert f"<td>domain {'re-check' if action == 'check' else action} refused</td>" in audit

    # The refusal's page is the current holder's: its forms act on that one.
    again = forms(text)[f"{BASE}/suspend"]
    assert again["claim"] == before["claim"]
    assert client.post(f"{BASE}/suspend", data=again).status_code == 303
    assert services.domains.get(HOST)["held"]


def test_the_forms_act_while_the_claim_they_show_holds(app: Flask, services: Services) -> None:
    services.domains.connect(HOST, "pub_a")
    client = app.test_client()
    login(client)
    shown = forms(client.get(BASE).get_data(True))
    assert client.post(f"{BASE}/check", data=shown[f"{BASE}/check"]).status_code == 303
    assert services.domains.get(HOST)["attempts"] == 1, "checked (its DNS is missing)"
    assert client.post(f"{BASE}/suspend", data=shown[f"{BASE}/suspend"]).status_code == 303
    resume = forms(client.get(BASE).get_data(True))[f"{BASE}/resume"]
    assert client.post(f"{BASE}/resume", data=resume).status_code == 303
    assert not services.domains.get(HOST).get("held")
    remove = forms(client.get(f"{BASE}/remove").get_data(True))[f"{BASE}/remove"]
    assert client.post(f"{BASE}/remove", data={**remove, "confirm": HOST}).status_code == 303
    assert services.domains.find(HOST) is None


def test_a_removal_from_a_page_of_a_claim_already_gone_removes_nothing_new(
        app: Flask, services: Services) -> None:
    """pub_a's domain was removed, and pub_b connected the name since: the admin's wish (pub_a's
    domain gone) holds, and pub_b's stays."""
    services.domains.connect(HOST, "pub_a")
    client = app.test_client()
    login(client)
    remove = forms(client.get(f"{BASE}/remove").get_data(True))[f"{BASE}/remove"]
    services.lifecycle.remove(HOST)
    services.domains.connect(HOST, "pub_b")
    answer = client.post(f"{BASE}/remove", data={**remove, "confirm": HOST})
    assert answer.status_code == 409 and "<dd>pub_b</dd>" in answer.get_data(True)
    assert services.domains.get(HOST)["publication_id"] == "pub_b"
