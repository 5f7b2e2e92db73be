"""The short-link API's answer versions (issue 28): ``Api-Version: 2`` answers ``short_url``
and ISO 8601 times; a client that names no version (v0.1.0's) gets exactly the shape it read."""
from __future__ import annotations

import dataclasses
import datetime
import re

import pytest
from flask.testing import FlaskClient

from control.wiring import Services
from kit.settings import Settings
from tests.conftest import ServicesWith
from tests.v010 import v010_source

AUTH = {"Authorization": "Bearer test-token-0123456789"}
V2 = {**AUTH, "Api-Version": "2"}


def v010_fields() -> set[str]:
    """What v0.1.0's link answers carried: the FIELDS of its shortlinks/api.py."""
    source = (v010_source() / "shortlinks" / "api.py").read_text()
    found = re.search(r"^FIELDS = \((.*?)\)$", source, re.S | re.M)
    assert found, "v0.1.0's shortlinks/api.py names its FIELDS"
    return set(re.findall(r'"([a-z_]+)"', found.group(1)))


@pytest.fixture
def services(services_with: ServicesWith, settings: Settings) -> Services:
    return services_with(base=dataclasses.replace(settings, short_domains=["acme.link"]))


def _iso(text: str) -> datetime.datetime:
    when = datetime.datetime.fromisoformat(text)
    assert when.utcoffset() == datetime.timedelta(0), text
    return when


def test_version_2_answers_short_url_and_iso_times(client: FlaskClient) -> None:
    made = client.post("/api/v1/links", headers=V2, json={
        "domain": "acme.link", "target": "https://example.com/a", "owner": "pub_1",
        "slug": "spring", "valid_until": "2030-01-02T03:04:05Z"})
    assert made.status_code == 201, made.get_json()
    assert made.headers["Api-Version"] == "2" and "Api-Version" in made.headers["Vary"]
    body = made.get_json()
    assert body["short_url"] == "https://acme.link/spring"
    assert _iso(body["valid_until"]) == datetime.datetime(2030, 1, 2, 3, 4, 5,
                                                          tzinfo=datetime.timezone.utc)
    assert _iso(body["created_at"]) == _iso(body["updated_at"])
    for answer in (client.get("/api/v1/links/acme.link/spring", headers=V2).get_json(),
                   client.get("/api/v1/links?owner=pub_1", headers=V2).get_json()["links"][0],
                   client.patch("/api/v1/links/acme.link/spring", headers=V2,
                                json={"valid_until": None}).get_json()):
        assert answer["short_url"] == "https://acme.link/spring"
        assert isinstance(_iso(answer["created_at"]), datetime.datetime)
    assert answer["valid_until"] is None


def test_a_client_naming_no_version_reads_what_v010_answered(client: FlaskClient) -> None:
    fields = v010_fields()
    assert {"created_at", "slug", "target"} <= fields
    made = client.post("/api/v1/links", headers=AUTH, json={
        "domain": "acme.link", "target": "https://example.com/a", "owner": "pub_1",
        "slug": "spring", "valid_until": 1893456000})
    body = made.get_json()
    assert made.status_code == 201 and set(body) == fields
    assert isinstance(body["created_at"], float) and body["valid_until"] == 1893456000
    for answer in (client.get("/api/v1/links/acme.link/spring", headers=AUTH).get_json(),
                   client.get("/api/v1/links?owner=pub_1", headers=AUTH).get_json()["links"][0],
                   client.patch("/api/v1/links/acme.link/spring", headers={
                       **AUTH, "Api-Version": "1"}, json={"code": 301}).get_json()):
        assert set(answer) == fields and isinstance(answer["updated_at"], float)
    # an ISO time is taken from either version's clients
    patched = client.patch("/api/v1/links/acme.link/spring", headers=AUTH,
                           json={"valid_until": "2030-01-01T00:00:00+01:00"}).get_json()
    assert patched["valid_until"] == 1893452400


@pytest.mark.parametrize("version", ["3", "two", "0"])
def test_an_unknown_version_is_refused_with_a_sentence(client: FlaskClient,
                                                       version: str) -> None:
    answer = client.get("/api/v1/links?owner=pub_1", headers={**AUTH, "Api-Version": version})
    assert answer.status_code == 400
    assert answer.get_json()["error"] == "Api-Version: one of 1, 2"


@pytest.mark.parametrize("when", ["2030-01-01", "next week", "2030-01-01T00:00:00",
                                  True, -5, "9" * 41, 253402300800, 1e300])
def test_a_time_that_is_not_one_is_refused(client: FlaskClient, when: object) -> None:
    answer = client.post("/api/v1/links", headers=V2, json={
        "domain": "acme.link", "target": "https://example.com/a", "owner": "pub_1",
        "valid_until": when})
    assert answer.status_code == 400 and answer.get_json()["field"] == "valid_until"


def test_the_contract_documents_both_versions(client: FlaskClient) -> None:
    document = client.get("/api/v1/openapi.json").get_json()
    show = document["paths"]["/api/v1/links/{domain}/{slug}"]["get"]
    header = [p for p in show["parameters"] if p["in"] == "header"]
    assert header[0]["name"] == "Api-Version" and header[0]["schema"]["enum"] == ["1", "2"]
    shapes = document["components"]["schemas"]["LinkAnswer"]["anyOf"]
    assert {shape["$ref"].rsplit("/", 1)[1] for shape in shapes} == {"Link", "LinkV2"}
    assert document["components"]["schemas"]["Link"]["properties"]["created_at"]["type"] == \
        "number"
    assert document["components"]["schemas"]["LinkV2"]["properties"]["created_at"]["type"] == \
        "string"


def test_a_time_past_the_year_9999_answers_as_its_last_second(services: Services,
                                                               client: FlaskClient) -> None:
    """A v0.1.0 client could store any number; version 2 still answers (no 500)."""
    services.links.create("acme.link", "https://example.com/a", "pub_1", slug="far",
                          valid_until=1e20)
    answer = client.get("/api/v1/links/acme.link/far", headers=V2)
    assert answer.status_code == 200
    assert answer.get_json()["valid_until"] == "9999-12-31T23:59:59+00:00"
    assert client.get("/api/v1/links/acme.link/far", headers=AUTH).get_json()[
        "valid_until"] == 1e20
