"""A joining node downloads its certificates in batches (``POST /api/v1/edge/certs``, gzip'd,
edge/protocol.py) when the control service offers them, one GET each when it does not (v0.1.0):
the same files either way, under the same authorisation, with keys never logged."""
from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path
from typing import Any, Callable

import pytest
import requests
from cryptography.fernet import Fernet

import edge.protocol
from admin_app import create_app
from control.wiring import Services
from edge.agent import EdgeAgent
from edge.node import EdgeNode
from edge.protocol import CERT_BATCH, CERT_BATCH_KEY, CERT_BATCH_MAX
from edge.state import EdgeConfig, fingerprint
from kit.procs import ManagedProcess, free_port, wait_for_port
from kit.vault import KeyVault
from kit.x509 import self_signed
from tests.conftest import ServicesWith, serving, wait_until
from tests.v010 import v010_command

EDGE_TOKEN = "edge-token-0123456789"
EDGE = {"Authorization": f"Bearer {EDGE_TOKEN}"}
PLATFORM = {"Authorization": "Bearer test-token-0123456789"}
CONFIG = EdgeConfig(("127.0.0.1:9",), ("127.0.0.1:9",))


def hosts(count: int, start: int = 0) -> dict[str, str]:
    names = [f"h{n}.batch.test" for n in range(start, start + count)]
    return {name: self_signed(name)[1] for name in names}


def publish(services: Services, pems: dict[str, str]) -> None:
    services.edge_state.change({host: ("pub_1", pem) for host, pem in pems.items()}, CONFIG)


def files(node: EdgeNode) -> dict[str, bytes]:
    """What a node's release holds that does not name its ports (the config and its digests):
    certificates, crt-list, maps (its journal folded in first), its own path taken out."""
    node.compact()
    release = node.current.resolve()
    return {str(path.relative_to(release)): path.read_bytes().replace(bytes(release), b"<r>")
            for path in sorted(release.rglob("*"))
            if path.is_file() and path.name not in ("haproxy.cfg", "STRUCTURE", "OWN_FILES")}


def batch(url: str, certs: list[dict[str, str]], headers: dict[str, str] | None = None,
          **body: object) -> requests.Response:
    return requests.post(f"{url}/api/v1/edge/certs", headers=EDGE if headers is None else headers,
                         json={"format": CERT_BATCH, "certs": certs, **body}, timeout=30)


def test_a_batch_download_yields_the_same_files_as_one_get_each(
        control: tuple[Services, str], edge_node: Callable[..., EdgeNode],
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    services, url = control
    monkeypatch.setattr(edge.protocol, "CERT_BATCH_MAX", 10)  # offered: several batches
    pems = hosts(25)
    publish(services, pems)
    caplog.set_level(logging.DEBUG)
    batched = EdgeAgent(edge_node("batched"), url, EDGE_TOKEN, node_id="batched")
    assert batched.sync()
    assert (batched.certificates.batches, batched.certificates.batched,
            batched.certificates.singles) == (3, 25, 0)
    # The same state through the path of an agent whose control service offers no batch.
    single = EdgeAgent(edge_node("single"), url, EDGE_TOKEN, node_id="single", batches=False)
    assert single.sync()
    assert (single.certificates.batches, single.certificates.singles) == (0, 25)
    assert batched.node.applied_version == single.node.applied_version \
        == services.edge_state.current_version()
    assert files(batched.node) == files(single.node)
    # A delta's new and renewed certificates come in a batch too; only those are fetched.
    monkeypatch.undo()
    monkeypatch.setattr(edge.protocol, "CERT_BATCH_MAX", 10)
    renewed = {"h3.batch.test": self_signed("h3.batch.test")[1], **hosts(4, start=100)}
    publish(services, renewed)
    assert batched.sync()
    assert (batched.certificates.batches, batched.certificates.batched,
            batched.certificates.singles) == (4, 30, 0)
    assert batched.node.existing_routes()["h3.batch.test"].pem == renewed["h3.batch.test"]
    assert "PRIVATE KEY" not in caplog.text, "a key reached the log"
    at_rest = [item for item in services.edge_state.certs.scan(limit=500).items]
    assert at_rest and not any("PRIVATE KEY" in repr(item) for item in at_rest), \
        "keys are encrypted in the store"


def test_the_batch_answers_what_the_single_gets_do_to_whom_they_do(
        control: tuple[Services, str]) -> None:
    services, url = control
    pems = hosts(3)
    publish(services, pems)
    state = requests.get(f"{url}/api/v1/edge/state", headers=EDGE, timeout=30).json()
    assert state[CERT_BATCH_KEY] == {"format": CERT_BATCH, "max": CERT_BATCH_MAX}
    wanted = [{"hostname": host, "sha256": fingerprint(pem)} for host, pem in pems.items()]
    answer = batch(url, wanted)
    assert answer.status_code == 200 and answer.headers["Content-Encoding"] == "gzip"
    assert answer.headers["Cache-Control"] == "no-store"
    singles = {host: requests.get(f"{url}/api/v1/edge/certs/{host}", headers=EDGE, timeout=30,
                                  params={"sha256": fingerprint(pem)}).json()
               for host, pem in pems.items()}
    assert {cert["hostname"]: cert for cert in answer.json()["certs"]} == singles
    assert all(cert["pem"] == pems[host] for host, cert in singles.items())
    # Authorisation: what the single GET lets in, and only that.
    for headers in ({}, PLATFORM, {"Authorization": "Bearer wrong"}):
        single = requests.get(f"{url}/api/v1/edge/certs/h0.batch.test", headers=headers,
                              timeout=30)
        refused = batch(url, wanted, headers=headers)
        assert refused.status_code == single.status_code and refused.status_code in (401, 403)
        assert "PRIVATE KEY" not in refused.text
    # One not stored (removed, or a stale fingerprint) is listed, not a failed batch.
    gone = {"hostname": "h0.batch.test", "sha256": "0" * 64}
    answer = batch(url, [gone, wanted[1]])
    assert answer.status_code == 200 and answer.json()["missing"] == [gone]
    assert [cert["hostname"] for cert in answer.json()["certs"]] == ["h1.batch.test"]
    # Bounded and validated, with a sentence.
    too_many = batch(url, [wanted[0]] * (CERT_BATCH_MAX + 1))
    assert too_many.status_code == 400 and "certs" in too_many.json().get("field", "certs")
    for bad in (batch(url, []), batch(url, [{"hostname": "h0.batch.test", "sha256": "xyz"}]),
                batch(url, [{"hostname": "../etc", "sha256": "0" * 64}]),
                batch(url, wanted, format=CERT_BATCH + 1)):
        assert bad.status_code == 400 and bad.json()["error"], bad.text


def test_a_batch_costs_one_store_request_per_hundred_certificates(
        services_both: Services) -> None:
    """A cold start's downloads read the certificates table in batches (BatchGetItem on
    DynamoDB, where a GetItem each would bill every certificate as a request): 150 certificates
    in one POST are 2 requests, and a certificate stored by the release before (its hostname
    alone) one more, for all such certificates of the batch."""
    services = services_both
    pems = hosts(150)
    publish(services, pems)
    wanted = [{"hostname": host, "sha256": fingerprint(pem)} for host, pem in pems.items()]
    old = hosts(1, start=900)  # as the release before stored it: under its hostname alone
    services.edge_state.certs.put({"hostname": "h900.batch.test",
                                   "cert_sha256": fingerprint(old["h900.batch.test"]),
                                   "pem_enc": KeyVault(services.settings.encryption_keys).encrypt(
                                       old["h900.batch.test"].encode())})
    backend = services.backend

    def certs_requests() -> int:
        return sum(n for (table, _), n in backend.operations.items() if table == "edge_certs")

    with serving(create_app(services)) as url:
        before = certs_requests()
        answer = batch(url, wanted).json()
        assert certs_requests() - before == 2, "ceil(150 / 100) batch reads"
        assert [cert["hostname"] for cert in answer["certs"]] == list(pems)
        assert all(cert["pem"] == pems[cert["hostname"]] for cert in answer["certs"])
        before = certs_requests()
        gone = {"hostname": "h1.batch.test", "sha256": "0" * 64}
        answer = batch(url, [*wanted[:3], gone, {"hostname": "h900.batch.test",
                                                 "sha256": fingerprint(old["h900.batch.test"])}]
                       ).json()
        assert certs_requests() - before == 2, "one batch, then one of bare hostnames"
        assert answer["missing"] == [gone]
        assert [cert["hostname"] for cert in answer["certs"]][-1] == "h900.batch.test"
        assert answer["certs"][-1]["pem"] == old["h900.batch.test"]


def test_a_replica_without_the_batch_endpoint_is_asked_one_get_each(
        services_with: ServicesWith, edge_node: Callable[..., EdgeNode]) -> None:
    """During an upgrade the state may come from a replica that offers batches and the batch
    go to one of the release before, which answers 404: the agent asks that one by GETs."""
    services = services_with()
    app = create_app(services)

    def release_before(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ["REQUEST_METHOD"] == "POST" and environ["PATH_INFO"] == "/api/v1/edge/certs":
            start_response("404 NOT FOUND", [("Content-Type", "application/json")])
            return [b'{"error": "the requested URL was not found", "code": "not_found"}']
        return app(environ, start_response)

    pems = hosts(4)
    publish(services, pems)
    with serving(release_before) as url:
        agent = EdgeAgent(edge_node(), url, EDGE_TOKEN, node_id="n1")
        assert agent.sync()
    assert (agent.certificates.batches, agent.certificates.singles) == (0, 4)
    assert {host: route.pem for host, route in agent.node.existing_routes().items()} == pems


@pytest.mark.slow
def test_a_new_agent_against_a_v010_control_service_gets_one_certificate_per_get(
        tmp_path: Path, edge_node: Callable[..., EdgeNode]) -> None:
    """The release before's control service (its code, its process, its store) offers no batch:
    this release's agent downloads each certificate by its own GET, and serves them all."""
    port = free_port()
    env = {"EDGE_API_TOKEN": "v010-api-token-0123456789", "EDGE_EDGE_TOKEN": EDGE_TOKEN,
           "EDGE_DATA_DIR": str(tmp_path / "control"), "EDGE_LISTEN_PORT": str(port),
           "EDGE_CONTROL_SERVERS": f"127.0.0.1:{port}", "EDGE_APP_SERVERS": "127.0.0.1:9",
           "EDGE_WORKER_INTERVAL": "0.2", "EDGE_DNS_SERVERS": "127.0.0.1",
           "EDGE_ENCRYPTION_KEYS": Fernet.generate_key().decode()}
    argv, imports, cwd = v010_command("serve")
    control = ManagedProcess("v010-serve", argv, tmp_path / "serve.log", cwd=cwd,
                             env={**env, **imports})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_port(port, process=control, timeout=120)
        wait_until(lambda: requests.get(f"{url}/api/v1/edge/state", headers=EDGE,
                                        timeout=5).status_code == 200, 60,
                   "v0.1.0 publishes its first (empty) state", why=control.tail)
        pems = hosts(5)
        seed = "; ".join([
            "import json, sys", "from control.wiring import Services",
            "from kit.settings import load_settings",
            "services = Services.from_settings(load_settings())",
            "pems = json.load(sys.stdin)",
            "services.edge_state.change({h: ('pub_1', p) for h, p in pems.items()}, "
            "services.publisher.config())", "services.close()"])
        done = subprocess.run([argv[0], "-c", seed], input=json.dumps(pems), text=True,
                              cwd=cwd, env={**os.environ, **env, **imports},
                              capture_output=True, timeout=120)
        assert done.returncode == 0, done.stderr
        state = requests.get(f"{url}/api/v1/edge/state", headers=EDGE, timeout=30).json()
        assert CERT_BATCH_KEY not in state and len(state["routes"]) == 5
        agent = EdgeAgent(edge_node(), url, EDGE_TOKEN, node_id="new")
        assert agent.sync()
        assert (agent.certificates.batches, agent.certificates.singles) == (0, 5)
        assert agent.node.applied_version == state["version"]
        assert {host: route.pem for host, route in agent.node.existing_routes().items()} == pems
        assert "Traceback" not in control.output()
    finally:
        control.stop()
