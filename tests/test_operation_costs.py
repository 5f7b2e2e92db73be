"""Every write the APIs offer costs the same number of store requests whether its publication
has 10 domains and links or 10,000: counted at the backend (SQLite transactions, requests to
dynalite), for each operation through the real app (Flask's test client on the real store).

The 10,000 are background, written in bulk; what is measured goes through the API."""
from __future__ import annotations

import dataclasses
import json
import time
import uuid
from typing import Any, Callable, Iterable

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from flask.testing import FlaskClient

from admin_app import create_app
from control.wiring import Services
from domains.repository import DOMAINS
from devtools.pebble import PebbleStack
from kit.settings import Settings
from kit.x509 import LocalCA, key_to_pem, self_signed
from store import VERSION, Item, Table
from store.dynamo import DynamoBackend
from store.dynamo_table import DynamoTable
from tests.conftest import ServicesWith, dynamo_client, on_pebble

AUTH = {"Authorization": "Bearer test-token-0123456789"}
SHORT = "acme.link"
BIG = 10_000


@pytest.fixture
def services(services_with: ServicesWith, any_backend: Settings,
             pebble: PebbleStack) -> Services:
    return services_with(base=any_backend, short_domains=[SHORT], max_pending_domains=25,
                         metadata_keys=["plan"], byo_private_roots=True, **on_pebble(pebble))


def seed(services: Services, publication: str, count: int) -> None:
    """``count`` domains (active, but for a few unproven claims) and ``count`` links of
    ``publication``, written straight to their tables: the background, not the thing measured."""
    now = time.time()
    template = services.domains._claim("template.example.test", publication, now, None)
    domains = services.domains.repository
    rest, links = [], []
    for n in range(count):
        hostname = f"d{n}.{publication.replace('_', '-')}.example.test"
        item = {**template, "hostname": hostname, "status": "active",
                "next_attempt_at": now + 3600}
        if n < 10:  # some claims still unproven, under the cap: they are in the pending index
            domains.create({**item, "status": "pending_dns", "next_attempt_at": now + 3600})
        else:
            rest.append(item)
        links.append({"id": f"{SHORT}/s{n}-{publication}", "domain": SHORT,
                      "slug": f"s{n}-{publication}", "target": "https://a.test/",
                      "owner": publication, "code": 302, "disabled": False,
                      "valid_until": None, "max_visits": None,
                      "created_at": now, "updated_at": now})
    put_all(domains.table, rest)
    put_all(services.links.table, links)


def put_all(table: Table, items: Iterable[Item]) -> None:
    """Each item as ``table.put`` writes a new one; on DynamoDB 25 to a BatchWriteItem, the
    same attributes (``_top``: what the indexes read) in a 25th of the requests: 20,000 puts
    one by one were most of the test's time. The test's last check reads the big
    publication's domains back through their index."""
    if not isinstance(table, DynamoTable):
        for item in items:
            table.put(item)
        return
    puts = []
    for item in items:
        key = str(item[table.spec.key])
        data = {k: v for k, v in item.items() if k != VERSION}
        top = {attr: value for attr, value in table._top(key, data).items() if value is not None}
        puts.append({"PutRequest": {"Item": {
            "pk": {"S": key}, "data": {"S": json.dumps(data, sort_keys=True)},
            "version": {"N": "1"}, **top}}})
    for start in range(0, len(puts), 25):
        left: dict[str, Any] = {table.name: puts[start:start + 25]}
        while left:
            left = table._client.batch_write_item(RequestItems=left).get("UnprocessedItems")
    last = puts[-1]["PutRequest"]["Item"]["pk"]["S"] if puts else None
    assert last is None or table.get(last) == {**item, VERSION: 1}, "read back as put wrote it"


def active(services: Services, hostname: str, publication: str) -> None:
    """One active domain with our certificate and its route (the upload's target)."""
    domain, _ = services.domains.connect(hostname, publication)
    key = ec.generate_private_key(ec.SECP256R1())
    cert, _ = self_signed(hostname, key)
    services.certificates.save([hostname], cert, key_to_pem(key).encode())
    services.domains.transition(domain, "active", "seeded", next_attempt_at=time.time() + 3600)
    services.publisher.route_changes({hostname: publication})


def operations(client: FlaskClient, publication: str,
               ca: LocalCA) -> list[tuple[str, Callable[[], Any], int]]:
    """(name, call, expected status) of every write, in an order that makes each possible."""
    host = f"new.{publication.replace('_', '-')}.example.test"
    served = f"served.{publication.replace('_', '-')}.example.test"
    slug = f"x-{publication.replace('_', '-')}"
    domain, link = f"/api/v1/domains/{host}", f"/api/v1/links/{SHORT}/{slug}"
    cert, key = ca.issue([served])
    return [
        ("connect", lambda: client.post("/api/v1/domains", headers=AUTH, json={
            "hostname": host, "publication_id": publication, "with_www": "none"}), 201),
        ("connect again", lambda: client.post("/api/v1/domains", headers=AUTH, json={
            "hostname": host, "publication_id": publication, "with_www": "none"}), 200),
        ("check", lambda: client.post(domain + "/check", headers=AUTH), 200),
        ("settings change", lambda: client.patch(domain, headers=AUTH, json={
            "metadata": {"plan": "pro"}}), 200),
        ("certificate upload", lambda: client.put(
            f"/api/v1/domains/{served}/certificate", headers=AUTH,
            json={"certificate": cert + ca.pem, "private_key": key}), 200),
        ("certificate removal", lambda: client.delete(
            f"/api/v1/domains/{served}/certificate", headers=AUTH), 200),
        ("link create", lambda: client.post("/api/v1/links", headers=AUTH, json={
            "domain": SHORT, "slug": slug, "target": "https://b.test/",
            "owner": publication}), 201),
        ("link update", lambda: client.patch(link, headers=AUTH, json={
            "target": "https://c.test/"}), 200),
        ("link limit", lambda: client.patch(link, headers=AUTH, json={"max_visits": 5}), 200),
        ("link delete", lambda: client.delete(link, headers=AUTH), 200),
        ("remove", lambda: client.delete(domain, headers=AUTH), 200),
    ]


def costs(services: Services, client: FlaskClient, publication: str,
          ca: LocalCA) -> dict[str, int]:
    active(services, f"served.{publication.replace('_', '-')}.example.test", publication)
    found = {}
    for name, call, status in operations(client, publication, ca):
        before = services.backend.requests
        answer = call()
        found[name] = services.backend.requests - before
        assert answer.status_code == status, (name, answer.status_code, answer.get_data(True))
    return found


@pytest.mark.parametrize("any_backend", [
    "sqlite", pytest.param("dynamodb", marks=pytest.mark.slow)], indirect=True)
def test_every_write_costs_the_same_with_10_or_10000_domains_per_publication(
        services: Services) -> None:
    client = create_app(services).test_client()
    ca = LocalCA()
    seed(services, "pub_small", 10)
    seed(services, "pub_big", BIG)
    costs(services, client, "pub_warm", ca)  # what a process reads once (its first request)
    small = costs(services, client, "pub_small", ca)
    big = costs(services, client, "pub_big", ca)
    assert small == big, {name: (small[name], big[name]) for name in small
                          if small[name] != big[name]}
    assert len(services.domains.list_for("pub_big", limit=BIG + 10).items) == BIG + 1


def test_the_cap_on_unproven_claims_reads_only_the_claims(services_with: ServicesWith) -> None:
    """The cap counts unproven claims alone, through the sparse index: a publication's verified
    domains, claims past their time and claims that got verified are not in it."""
    services = services_with(max_pending_domains=3, claim_ttl_seconds=86400.0)
    for n in range(2):
        services.domains.connect(f"p{n}.example.test", "pub_1")
    done, _ = services.domains.connect("v.example.test", "pub_1")
    services.domains.transition(done, "verified", "seeded")
    repository = services.domains.repository
    assert {d["hostname"] for d in repository.pending_claims("pub_1", 0, 10)} == {
        "p0.example.test", "p1.example.test"}
    services.domains.connect("p2.example.test", "pub_1")
    with pytest.raises(Exception, match="pub_1"):
        services.domains.connect("p3.example.test", "pub_1")
    # An old claim (past its time) no longer counts against the cap.
    old = services.domains.get("p0.example.test")
    repository.write(old, {**old, "claimed_at": time.time() - 2 * 86400})
    services.domains.connect("p3.example.test", "pub_1")
    assert repository.pending_claims("pub_2", 0, 10) == []


def test_claims_and_redirects_from_before_the_indexes_enter_them_by_the_migration(
        services_with: ServicesWith) -> None:
    """A store from before: claims and redirects written without the index fields (as the
    release before, or a v0.1.0 replica during the upgrade, wrote them) are invisible to the
    cap and to the redirect check until migration 3 puts them back."""
    from control import migrations

    services = services_with(max_pending_domains=2)
    repository = services.domains.repository
    now = time.time()
    for n in range(2):
        claim = services.domains._claim(f"old{n}.example.test", "pub_1", now, None)
        repository.table.put(claim)  # raw: no pending_for, as before this release
    target = {**services.domains._claim("t.example.test", "pub_1", now, None),
              "status": "active"}
    repository.table.put(target)
    repository.table.put({**services.domains._claim("r.example.test", "pub_1", now, None),
                          "status": "active", "redirect_to": "t.example.test"})
    assert repository.pending_claims("pub_1", 0, 10) == []
    assert migrations.reindex_domains(services.backend) == 3
    assert len(repository.pending_claims("pub_1", 0, 10)) == 2
    with pytest.raises(Exception, match="pub_1"):
        services.domains.connect("new.example.test", "pub_1")
    assert [d["hostname"] for d in repository.redirecting_to("t.example.test", "pub_1")] == [
        "r.example.test"]
    assert migrations.reindex_domains(services.backend) == 1, "only the redirect is put again"


def test_a_store_that_cannot_add_the_new_indexes_reads_as_before_them(
        services_with: ServicesWith, settings: Settings, dynalite: str) -> None:
    """dynalite accepts adding an index to an existing table and ignores it: a domains table
    made before ``pending`` and ``redirected`` opens without them (a v0.1.0 fleet's store in
    the rolling upgrade), and the cap and the redirect check read the publication's domains."""
    prefix = f"old{uuid.uuid4().hex[:8]}_"
    before = dataclasses.replace(DOMAINS, optional=(), ranges=tuple(
        index for index in DOMAINS.ranges if index.name not in DOMAINS.optional))
    DynamoBackend(dynamo_client(dynalite), prefix=prefix).table(before)
    on_dynalite = dataclasses.replace(settings, storage_backend="dynamodb",
                                      dynamodb_endpoint_url=dynalite,
                                      dynamodb_table_prefix=prefix)
    services = services_with(base=on_dynalite, max_pending_domains=2,
                             claim_ttl_seconds=86400.0)
    repository = services.domains.repository
    assert repository.table.lacking == {"pending", "redirected"}
    for n in range(2):
        services.domains.connect(f"p{n}.example.test", "pub_1")
    with pytest.raises(Exception, match="pub_1"):
        services.domains.connect("p2.example.test", "pub_1")
    assert len(repository.pending_claims("pub_1", 0, 10)) == 2
    target = repository.get("p0.example.test")
    repository.write(target, {**target, "redirect_to": "p1.example.test"})
    assert [d["hostname"] for d in repository.redirecting_to("p1.example.test", "pub_1")] == [
        "p0.example.test"]
    assert list(repository.redirecting_to("p1.example.test", "pub_2")) == []
