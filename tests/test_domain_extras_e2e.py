"""Redirect domains, a www/apex pair, an origin pool with metadata headers, end to end: the
publisher API, Pebble certificates, HAProxy answering from its maps, the app fleet and a
canary pool, all real processes on loopback."""
from __future__ import annotations

import json
import time
from typing import Any, Callable, Iterator

import pytest

from devtools.demo import LocalStack
from devtools.pebble import PebbleStack
from devtools.probe import Probe, https_get
from devtools.sample_app import SampleApp

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("extras-stack")]


@pytest.fixture(scope="module")
def canary() -> Iterator[SampleApp]:
    app = SampleApp("canary", 0)
    yield app
    app.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pebble: PebbleStack,
          canary: SampleApp) -> Iterator[LocalStack]:
    local = LocalStack(tmp_path_factory.mktemp("extras"), pebble=pebble, extra_env={
        "EDGE_ORIGIN_POOLS": json.dumps({"canary": [canary.address]}),
        "EDGE_METADATA_KEYS": "plan,region"})
    yield local
    local.stop()


def connected(stack: LocalStack, hostname: str, **extra: Any) -> dict[str, Any]:
    """Connect ``hostname``, create the records it (and its pair) asks for, wait until active."""
    created = stack.api("POST", "/api/v1/domains",
                        json={"hostname": hostname, "publication_id": "pub_1", **extra})
    assert created.status_code == 201, created.text
    domain = created.json()
    stack.create_records(domain["dns_records"] + (domain["pair"] or {}).get("dns_records", []))
    stack.wait_active(hostname)
    if domain["pair"]:
        stack.wait_active(domain["pair"]["hostname"])
    return domain


def until(probe: Callable[[], Probe], accept: Callable[[Probe], bool],
          timeout: float = 60.0) -> Probe:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = answer = probe()
            if accept(answer):
                return answer
        except OSError as exc:
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"not seen in {timeout}s; last: {last}")


def get(stack: LocalStack, hostname: str, path: str = "/",
        headers: dict[str, str] | None = None) -> Probe:
    return https_get(stack.edge_https_port, hostname, path, cafile=str(stack.pebble.root_path),
                     headers=headers)


def test_a_redirect_domain_answers_from_haproxy_with_its_own_certificate(
        stack: LocalStack) -> None:
    connected(stack, "main.example.test", with_www="none")
    stack.wait_served("main.example.test")
    connected(stack, "old.example.test", redirect_to="main.example.test")
    moved = until(lambda: get(stack, "old.example.test", "/p/1?x=1&y=%20"),
                  lambda probe: probe.status == 308)
    assert moved.headers["location"] == \
        f"https://main.example.test:{stack.edge_https_port}/p/1?x=1&y=%20"
    assert moved.certificate.subject.rfc4514_string() == "CN=old.example.test"
    assert "Pebble" in moved.certificate.issuer.rfc4514_string()

    changed = stack.api("PATCH", "/api/v1/domains/old.example.test",
                        json={"redirect_status_code": 302})
    assert changed.status_code == 200, changed.text
    until(lambda: get(stack, "old.example.test", "/a"), lambda probe: probe.status == 302)
    cleared = stack.api("PATCH", "/api/v1/domains/old.example.test", json={"redirect_to": None})
    assert cleared.json()["redirect_to"] is None
    served = until(lambda: get(stack, "old.example.test", "/a"), lambda p: p.status == 200)
    assert served.json()["publication_id"] == "pub_1"

    # Loops, chains, other publications' domains, unknown fields: a 400 naming the field.
    assert stack.api("PATCH", "/api/v1/domains/old.example.test",
                     json={"redirect_to": "main.example.test"}).status_code == 200
    for body, field, code in [
            ({"redirect_to": "old.example.test"}, "redirect_to", "redirect_loop"),
            ({"redirect_to": "elsewhere.example.test"}, "redirect_to", "redirect_target"),
            ({"redirects": "x"}, "redirects", "unknown_field")]:
        answer = stack.api("PATCH", "/api/v1/domains/main.example.test", json=body)
        assert answer.status_code == 400, answer.text
        assert (answer.json()["field"], answer.json()["code"]) == (field, code)
    chained = stack.api("POST", "/api/v1/domains", json={
        "hostname": "older.example.test", "publication_id": "pub_1",
        "redirect_to": "old.example.test"})
    assert (chained.status_code, chained.json()["code"]) == (400, "redirect_chain")


def test_an_apex_and_its_www_move_together(stack: LocalStack) -> None:
    domain = connected(stack, "duo.test")
    assert domain["pair"]["hostname"] == "www.duo.test"
    stack.wait_served("duo.test")
    moved = until(lambda: get(stack, "www.duo.test", "/read?id=7"), lambda p: p.status == 308)
    assert moved.headers["location"] == f"https://duo.test:{stack.edge_https_port}/read?id=7"
    assert moved.certificate.subject.rfc4514_string() == "CN=www.duo.test"

    removed = stack.api("DELETE", "/api/v1/domains/duo.test")
    assert removed.json() == {"removed": "duo.test", "pair_removed": "www.duo.test"}
    for name in ("duo.test", "www.duo.test"):  # unverified: only the default cert is left
        until(lambda: https_get(stack.edge_https_port, name), lambda p: p.status == 404)
        assert stack.api("GET", f"/api/v1/domains/{name}").status_code == 404


def test_an_origin_pool_gets_the_requests_with_the_metadata_headers(stack: LocalStack) -> None:
    connected(stack, "canary.example.test", origin_pool="canary",
              metadata={"plan": "pro", "region": "eu-1"})
    spoofed = {"X-Edge-Meta-Plan": "enterprise", "X-Edge-Meta-Admin": "yes"}
    seen = until(lambda: get(stack, "canary.example.test", "/x", spoofed),
                 lambda p: p.status == 200)
    assert seen.json()["instance"] == "canary"
    assert seen.json()["meta"] == {"plan": "pro", "region": "eu-1"}
    assert seen.json()["publication_id"] == "pub_1"

    patched = stack.api("PATCH", "/api/v1/domains/canary.example.test",
                        json={"metadata": {"plan": "free"}, "origin_pool": None})
    assert patched.status_code == 200, patched.text
    # The pool and the metadata live in two maps that the edge changes one after the other,
    # so a request in between may meet the new pool with the old metadata: wait for both.
    def changed(probe: Probe) -> bool:
        return probe.json()["instance"] != "canary" and probe.json()["meta"] == {"plan": "free"}
    moved = until(lambda: get(stack, "canary.example.test", "/x", spoofed), changed)
    assert moved.json()["publication_id"] == "pub_1"
    assert changed(get(stack, "canary.example.test", "/x", spoofed))

    for body, field in [({"origin_pool": "legacy"}, "origin_pool"),
                        ({"metadata": {f"k{n}": "v" for n in range(9)}}, "metadata"),
                        ({"metadata": {"plan": "x" * 129}}, "metadata.plan")]:
        answer = stack.api("PATCH", "/api/v1/domains/canary.example.test", json=body)
        assert (answer.status_code, answer.json()["field"]) == (400, field), answer.text
