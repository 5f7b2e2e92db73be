"""Dashboard actions on an active domain, against real Pebble and real DNS (challtestsrv)."""
from __future__ import annotations

import threading
from typing import Iterator

import pytest
from flask import Flask
from werkzeug.serving import make_server

from admin.web import Admin
from admin_app import create_app
from control.wiring import Services
from devtools.pebble import PebbleStack
from kit.web import provided
from tests.conftest import ServicesWith, on_pebble
from tests.test_admin_pages import PASSWORD, csrf, login


@pytest.fixture
def services(services_with: ServicesWith, pebble: PebbleStack) -> Services:
    return services_with(admin_cookie_secure=False, **on_pebble(pebble))


@pytest.fixture
def app(services: Services, pebble: PebbleStack) -> Iterator[Flask]:
    """The control app, also answering Pebble's HTTP-01 probes on its port."""
    flask_app = create_app(services)
    provided(flask_app, Admin).users.create("alice", PASSWORD)
    server = make_server("127.0.0.1", pebble.http_port, flask_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield flask_app
    server.shutdown()
    thread.join(timeout=10)


def test_renew_suspend_resume_an_active_domain(app: Flask, services: Services,
                                               pebble: PebbleStack) -> None:
    domain, _ = services.domains.connect("live.example.test", "pub_1")
    pebble.set_txt("_edge-challenge.live.example.test", domain["token"])
    services.lifecycle.check_now("live.example.test")
    services.lifecycle.issue(services.domains.get("live.example.test"))
    assert services.domains.get("live.example.test")["status"] == "active"
    first = services.certificates.describe("live.example.test")
    assert first is not None
    client = app.test_client()
    login(client)
    token = csrf(client)
    base = "/admin/domains/live.example.test"

    assert client.post(f"{base}/renew", data={"csrf_token": token}).status_code == 303
    renewed = services.certificates.describe("live.example.test")
    assert renewed is not None and renewed["serial"] != first["serial"]
    page = client.get(base).get_data(True)
    assert str(renewed["serial"]) in page and "certificate renewed" in page

    assert client.post(f"{base}/suspend", data={"csrf_token": token}).status_code == 303
    assert services.edge_state.load()["routes"] == [], "its route left the edge"
    client.post(f"{base}/check", data={"csrf_token": token})  # DNS is fine, but it is held
    assert services.domains.get("live.example.test")["status"] == "suspended"

    assert client.post(f"{base}/resume", data={"csrf_token": token}).status_code == 303
    assert services.domains.get("live.example.test")["status"] == "active"
    routes = services.edge_state.load()["routes"]
    assert [r["hostname"] for r in routes] == ["live.example.test"]
    stats = services.issuer.stats
    assert stats is not None and stats.last_days(1)[0][1:] == (2, 0), "issued twice, no failure"
    assert "Issuance results" in client.get("/admin/").get_data(True)
