"""schemathesis against a live `edgectl serve` over HTTP, with real Pebble and DNS servers: every /api/v1 operation of the
served contract, with the platform's token and with a publication's token (and the edge
agents' token for the edge operations). No answer may be a 5xx or break the contract, and
publication B's answers must never carry publication A's data.

DNS checks ask Pebble's challtestsrv on 127.0.0.1, so the fuzzer never reaches the world. The number of generated cases is printed (run with ``-s``)."""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any, Iterator

import pytest
import requests
import schemathesis
from cryptography.fernet import Fernet
from hypothesis import HealthCheck, Phase, settings
from schemathesis import checks

from control.wiring import Services
from domains.errors import DomainNotFound
from devtools.pebble import PebbleStack
from kit.procs import ManagedProcess, free_port, wait_for_port
from kit.settings import load_settings
from shortlinks.links import InvalidLink, LinkNotFound

# Its time is CPU, so it scales with the machine's load: 90-130 s beside the whole suite, past
# the 300 s default when two busy loops at a higher priority took the cores.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

PLATFORM = "test-token-0123456789"
EDGE = "edge-token-0123456789"
MAX_EXAMPLES = int(os.environ.get("EDGE_FUZZ_EXAMPLES", "12"))
"""Per operation and phase; raise it for a deeper run (and its timeout with it)."""
CHECKS = [checks.not_a_server_error, checks.status_code_conformance,
          checks.content_type_conformance, checks.response_schema_conformance,
          checks.response_headers_conformance]
# Publication A's data, made with the platform's token before the fuzzing. Its id, hostname
# and slug are the contract's own examples, so the fuzzer asks for them by name.
SECRETS = {"publication": "pub_1", "target": "https://example.com/secret-a-target"}
A_HOSTNAME, A_DOMAIN, A_SLUG = "news.example.org", "acme.link", "spring"


@dataclasses.dataclass
class Live:
    url: str
    services: Services
    publication_token: str
    secrets: list[str]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, pebble: PebbleStack) -> Iterator[Live]:
    """A real `edgectl serve` (its worker on, asking Pebble's DNS server and CA), and this
    process's own Services on the same SQLite store to set the scene between cases."""
    directory = tmp_path_factory.mktemp("fuzz")
    port = free_port()
    env = {"EDGE_API_TOKEN": PLATFORM, "EDGE_EDGE_TOKEN": EDGE,
           "EDGE_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
           "EDGE_DATA_DIR": str(directory / "data"), "EDGE_LISTEN_PORT": str(port),
           "EDGE_PLATFORM_DOMAINS": "platform.test", "EDGE_EDGE_CNAME_TARGET": "edge.platform.test",
           "EDGE_EDGE_ADDRESSES": "127.0.0.1", "EDGE_SHORT_DOMAINS": "acme.link,shared.link",
           "EDGE_DNS_SERVERS": "127.0.0.1", "EDGE_DNS_PORT": str(pebble.dns_port),
           "EDGE_DNS_TIMEOUT": "0.5", "EDGE_ACME_DIRECTORY_URL": pebble.directory_url,
           "EDGE_ACME_CA_BUNDLE": str(pebble.listener_ca), "EDGE_WORKER_INTERVAL": "0.5",
           "EDGE_DRAIN_SECONDS": "0"}  # no load balancer to drain for: 5 s at each stop
    serve = ManagedProcess("serve", [sys.executable, "-m", "edgectl", "serve"],
                           directory / "serve.log", env=env)
    services = None
    try:
        wait_for_port(port, process=serve, timeout=60)
        services = Services.from_settings(load_settings(env=env))
        url = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {PLATFORM}"}
        made = requests.post(f"{url}/api/v1/domains", headers=headers, timeout=10, json={
            "hostname": A_HOSTNAME, "publication_id": SECRETS["publication"]})
        assert made.status_code == 201, made.text
        link = requests.post(f"{url}/api/v1/links", headers=headers, timeout=10, json={
            "domain": A_DOMAIN, "slug": A_SLUG, "target": SECRETS["target"],
            "owner": SECRETS["publication"]})
        assert link.status_code == 201, link.text
        token, _ = services.tokens.create("pub_b")
        state = Live(url, services, token, [])
        _restore(state)
        yield state
    finally:
        serve.stop()
        if services is not None:
            services.close()
    assert "Traceback" not in (directory / "serve.log").read_text(), serve.tail(60)
    print(f"\nschemathesis: {LIVE_COUNTS['cases']} generated cases, "
          f"{LIVE_COUNTS['calls']} requests")


LIVE_COUNTS = {"cases": 0, "calls": 0}


@pytest.fixture(scope="module")
def contract(live: Live) -> Any:
    return schemathesis.openapi.from_url(f"{live.url}/api/v1/openapi.json")


schema = schemathesis.pytest.from_fixture("contract")


def _restore(live: Live) -> None:
    """Put publication A's domain and link back as they were: the platform's token, being
    fuzzed too, may have removed or changed them."""
    services, owner = live.services, SECRETS["publication"]
    try:
        domain = services.domains.get(A_HOSTNAME)
    except DomainNotFound:
        domain = None
    if domain is not None and domain["publication_id"] != owner:
        services.lifecycle.remove(A_HOSTNAME)
        domain = None
    if domain is None:
        domain, _ = services.domains.connect(A_HOSTNAME, owner)
    try:
        link = services.links.get(A_DOMAIN, A_SLUG)
        if link["owner"] != owner or link["target"] != SECRETS["target"]:
            services.links.delete(A_DOMAIN, A_SLUG)
            raise LinkNotFound("changed")
    except LinkNotFound:
        services.links.create(A_DOMAIN, SECRETS["target"], owner, slug=A_SLUG)
    live.secrets = [*SECRETS.values(),
                    *(r["value"] for r in domain["dns_records"] if r["type"] == "TXT")]


def _echoed(case: Any) -> str:
    """What the request itself carried: an answer that repeats it leaks nothing."""
    return json.dumps([case.formatted_path, case.path_parameters, case.query, case.body],
                      default=str)


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck),
          phases=[Phase.explicit, Phase.generate])
def test_the_api_keeps_its_contract(case: Any, live: Live) -> None:
    LIVE_COUNTS["cases"] += 1
    tokens = [live.publication_token, PLATFORM]  # B first, while A's data is surely there
    if case.operation.path.startswith("/api/v1/edge/") and \
            case.operation.path not in ("/api/v1/edge/nodes", "/api/v1/edge/force"):
        tokens.append(EDGE)
    for token in tokens:
        LIVE_COUNTS["calls"] += 1
        if "wait" in (case.query or {}):  # a long poll: keep the run short
            case.query["wait"] = 0.05
        response = case.call(base_url=live.url, timeout=20,
                             headers={"Authorization": f"Bearer {token}"})
        case.validate_response(response, checks=CHECKS)
        if token == live.publication_token:
            echoed = _echoed(case)
            leaked = [s for s in (*live.secrets, A_HOSTNAME, f"{A_DOMAIN}/{A_SLUG}")
                      if s in response.text and s not in echoed]
            assert not leaked, (case.method, case.formatted_path, response.status_code, leaked)
    _restore(live)


def test_the_contract_and_its_error_shape(live: Live) -> None:
    doc = requests.get(f"{live.url}/api/v1/openapi.json", timeout=10).json()
    assert doc["openapi"].startswith("3.1")
    assert doc["components"]["schemas"]["ErrorBody"]["required"] == ["error", "code"]
    # 3: certificate, 1: config, 1: PATCH, 2: link stats, 3: ops, 2: takeover, 3: tokens,
    # 1: edge certificate batch, 1: edge router map, 6: shards (a force of the routers)
    assert len([op for path in doc["paths"].values() for op in path]) == 41
    config = doc["paths"]["/api/v1/domains/{hostname}/config"]["get"]
    assert config["responses"]["200"]["content"]["application/json"]["schema"]["$ref"] \
        .endswith("/DomainConfig")
    answer = requests.post(f"{live.url}/api/v1/domains", timeout=10,
                           headers={"Authorization": f"Bearer {PLATFORM}"},
                           json={"hostname": "x.example.com", "publication_id": "p",
                                 "redirect_target": "y.example.com"})
    assert answer.status_code == 400
    assert answer.json() == {"error": "redirect_target: unknown field", "field": "redirect_target",
                             "code": "unknown_field"}
    auth = {"Authorization": f"Bearer {PLATFORM}", "Content-Type": "application/json"}
    for body, status, code in ((b'{"hostname": "' + b"x" * 2_000_000 + b'"}', 413, "too_large"),
                               (b"[" * 40 + b"]" * 40, 400, "too_deep"),
                               (b'{"hostname": 7, "publication_id": "p"}', 400, "invalid_hostname"),
                               (b'{"hostname": "a.example.org", "publication_id": 7}', 400,
                                "invalid_publication_id")):
        answer = requests.post(f"{live.url}/api/v1/domains", data=body, headers=auth, timeout=10)
        assert answer.status_code == status and answer.json()["code"] == code, answer.text
    wrong = requests.post(f"{live.url}/api/v1/links", timeout=10, headers=auth, json={
        "domain": "acme.link", "target": "https://example.com/", "owner": "p", "max_visits": "9"})
    assert wrong.status_code == 400 and wrong.json()["field"] == "max_visits"
    # Found by the fuzzer: a null code was stored, and the resolver's int(None) failed every
    # visit of that link. The model refuses it, and so does the service (the admin uses it).
    nulled = requests.patch(f"{live.url}/api/v1/links/{A_DOMAIN}/{A_SLUG}", timeout=10,
                            headers=auth, json={"code": None})
    assert nulled.status_code == 400 and nulled.json()["field"] == "code"
    with pytest.raises(InvalidLink):
        live.services.links.update(A_DOMAIN, A_SLUG, {"code": None})
