"""The short-link API over the real store, and `edgectl shortlinks` serving redirects."""
from __future__ import annotations

import dataclasses
import os
import signal
import sys
from pathlib import Path
from typing import Iterator

import pytest
import requests
from flask.testing import FlaskClient

from admin_app import create_app
from control.procs import ManagedProcess, free_port, wait_for_port
from control.settings import Settings
from control.wiring import Services

AUTH = {"Authorization": "Bearer test-token-0123456789"}


@pytest.fixture
def link_settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, short_domains=["acme.link"])


@pytest.fixture
def client(link_settings: Settings) -> Iterator[FlaskClient]:
    services = Services.from_settings(link_settings)
    yield create_app(services).test_client()
    services.close()


def test_create_read_list_update_delete(client: FlaskClient) -> None:
    assert client.post("/api/v1/links", json={}).status_code == 401
    made = client.post("/api/v1/links", headers=AUTH, json={
        "domain": "acme.link", "target": "https://example.com/a", "owner": "pub_1",
        "slug": "spring", "code": 301})
    assert made.status_code == 201 and made.get_json()["slug"] == "spring"
    taken = client.post("/api/v1/links", headers=AUTH, json={
        "domain": "acme.link", "target": "https://example.com/b", "owner": "pub_2",
        "slug": "spring"})
    assert taken.status_code == 409
    for bad in ({"domain": "acme.link", "target": "javascript:x", "owner": "p"},
                {"domain": "nope.link", "target": "https://e.com", "owner": "p"},
                {"domain": "acme.link", "target": "https://e.com"},
                {"domain": "acme.link", "target": "https://e.com", "owner": "p", "code": 200},
                {"domain": "acme.link", "target": "https://e.com", "owner": "p",
                 "max_visits": "lots"}):
        answer = client.post("/api/v1/links", headers=AUTH, json=bad)
        assert answer.status_code == 400 and answer.get_json()["error"], bad
    listed = client.get("/api/v1/links?owner=pub_1", headers=AUTH).get_json()["links"]
    assert [link["slug"] for link in listed] == ["spring"]
    patched = client.patch("/api/v1/links/acme.link/spring", headers=AUTH,
                           json={"target": "https://example.com/new", "disabled": True})
    assert patched.get_json()["disabled"] is True
    assert client.patch("/api/v1/links/acme.link/spring", headers=AUTH,
                        json={"owner": "thief"}).status_code == 400
    assert client.delete("/api/v1/links/acme.link/spring", headers=AUTH).status_code == 200
    assert client.get("/api/v1/links/acme.link/spring", headers=AUTH).status_code == 404


def test_edgectl_shortlinks_redirects_and_keeps_its_visit_counts(
        link_settings: Settings, tmp_path: Path) -> None:
    services = Services.from_settings(link_settings)
    services.links.create("acme.link", "https://example.com/landing", "pub_1", slug="go")
    services.close()
    port = free_port()
    env = {**os.environ, "EDGE_API_TOKEN": link_settings.api_token,
           "EDGE_EDGE_TOKEN": link_settings.edge_token,
           "EDGE_ENCRYPTION_KEYS": link_settings.encryption_keys[0],
           "EDGE_DATA_DIR": link_settings.data_dir, "EDGE_SHORT_DOMAINS": "acme.link",
           "EDGE_SHORTLINKS_PORT": str(port)}
    process = ManagedProcess("shortlinks", [sys.executable, "-m", "control", "shortlinks"],
                             tmp_path / "shortlinks.log", env=env)
    try:
        wait_for_port(port, process=process)
        for _ in range(3):
            answer = requests.get(f"http://127.0.0.1:{port}/go", allow_redirects=False,
                                  headers={"Host": "acme.link"}, timeout=5)
            assert answer.status_code == 302
            assert answer.headers["Location"] == "https://example.com/landing"
        process.popen.send_signal(signal.SIGTERM)  # a clean stop flushes buffered visits
        process.popen.wait(timeout=20)
    finally:
        process.stop()
    services = Services.from_settings(link_settings)
    try:
        assert services.links.get("acme.link", "go")["visits"] == 3
    finally:
        services.close()
