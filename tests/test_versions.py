"""What crosses releases carries a version (DESIGN.md "Versions and upgrades"): the edge feed's
protocol (an agent of the release before gets only what it can apply, a newer one a 426) and
the store's schema (ordered, idempotent migrations under a lease; serve refuses a newer schema;
the certificates' re-key keeps every one downloadable by old and new agents)."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import requests
from cryptography.fernet import Fernet

from admin_app import create_app
from control import migrations
from control.wiring import Services
from domains.repository import DOMAINS
import edge.protocol
from edge.agent import EdgeAgent
from edge.node import EdgeNode
from edge.protocol import CERT_BATCH_KEY, HEADER, PROTOCOL
from edge.state import EdgeConfig, RouteRef, fingerprint, routes_digest, state_version
from edge.state_changes import cert_key
from edge.state_store import (EDGE_CERTS, EDGE_NODES, EDGE_REDIRECTS, EDGE_ROUTES, EDGE_STATE,
                              EDGE_VISIT_REPORTS, EdgeStateStore)
from edgectl.cli import main
from edgectl.migrate import check_schema
from kit.procs import ManagedProcess, free_port
from kit.settings import Settings
from kit.vault import KeyVault
from kit.x509 import self_signed
from store import SPREAD_SCHEMA, Backend, open_backend
from store.dynamo import DynamoBackend
from store.sqlite import SqliteBackend
from devtools.probe import https_get
from tests.conftest import serving, wait_until
from tests.v010 import v010_command

ROOT = Path(__file__).resolve().parent.parent
EDGE = {"Authorization": "Bearer edge-token-0123456789"}
SHORT = "go.example.test"


@pytest.fixture
def control(services_with: Callable[..., Services]) -> Iterator[tuple[Services, str]]:
    """The control app over HTTP, with a short domain whose links the edge answers."""
    services = services_with(short_domains=[SHORT])
    with serving(create_app(services)) as url:
        yield services, url


def publish(services: Services) -> None:
    """A route for the short domain, a plain link and a device link (``d<code>|...``)."""
    services.edge_state.change({SHORT: ("pub_1", self_signed(SHORT)[1])},
                               services.publisher.config())
    services.links.create(SHORT, "https://example.com/plain", "pub_1", slug="plain")
    services.links.create(SHORT, "https://example.com/desk", "pub_1", slug="phone",
                          rules={"device_targets": {"ios": "https://example.com/ios"}})


def state(url: str, protocol: str | None, **params: Any) -> requests.Response:
    headers = {**EDGE, **({HEADER: protocol} if protocol is not None else {})}
    return requests.get(f"{url}/api/v1/edge/state", params=params, headers=headers, timeout=40)


def consistent(doc: dict[str, Any]) -> bool:
    """What every agent checks before applying a snapshot: the version is its routes', its
    config's and the redirects digest it was sent."""
    refs = [RouteRef(r["hostname"], r["publication_id"], r["cert_sha256"], r.get("extras") or "")
            for r in doc["routes"]]
    return state_version(routes_digest(refs), EdgeConfig.from_json(doc),
                         int(doc["redirects_digest"], 16)) == doc["version"]


@pytest.fixture
def device_links_are_new(monkeypatch: pytest.MonkeyPatch) -> None:
    """The forms for older agents wait for a map value format v0.1.0 cannot read: these tests
    exercise them by pretending device links came with protocol 1."""
    monkeypatch.setattr(edge.protocol, "DEVICE_LINKS", 1)


def test_an_agent_of_the_release_before_gets_the_same_state_today(
        control: tuple[Services, str]) -> None:
    services, url = control
    publish(services)
    new, old = state(url, str(PROTOCOL)).json(), state(url, None).json()
    assert old == new and any(value.startswith("d") for _, value in old["redirects"])
    assert state(url, None, have=old["version"], wait=0.2).status_code == 304


def test_an_agent_of_the_release_before_gets_only_the_map_values_it_reads(
        control: tuple[Services, str], device_links_are_new: None) -> None:
    services, url = control
    publish(services)
    new = state(url, str(PROTOCOL)).json()
    old = state(url, None).json()  # v0.1.0 sends no header
    assert sorted(key for key, _ in new["redirects"]) == [f"{SHORT}/phone", f"{SHORT}/plain"]
    assert any(value.startswith("d") for _, value in new["redirects"])
    assert old["redirects"] == [[f"{SHORT}/plain", "302|0|https://example.com/plain"]]
    assert old["routes"] == new["routes"]
    # Another state, so another version, consistent with what it holds.
    assert old["version"] != new["version"] and consistent(old) and consistent(new)
    assert new["version"] == services.edge_state.current_version()
    # Its long poll waits while its form of the state has not moved.
    assert state(url, None, have=old["version"], wait=0.2).status_code == 304
    assert state(url, str(PROTOCOL), have=old["version"]).status_code == 200
    # A delta: a link that gains device targets leaves its map (it may hold the plain value).
    services.links.update(SHORT, "plain",
                          {"device_targets": {"android": "https://example.com/android"}})
    delta = state(url, None, since=old["revision"], have=old["version"]).json()
    assert delta["delta"] and delta["redirect_changes"] == [[f"{SHORT}/plain", None]]
    assert state(url, "1", since=old["revision"]).json()["redirect_changes"][0][1].startswith("d")
    # A node that reports the old form of the desired state is in sync.
    requests.post(f"{url}/api/v1/edge/nodes/old", headers=EDGE, timeout=10, json={
        "applied_version": delta["version"], "haproxy_running": True}).raise_for_status()
    assert [n["in_sync"] for n in services.edge_state.list_nodes()] == [True]


def test_a_newer_agent_gets_426_and_a_malformed_protocol_400(
        control: tuple[Services, str]) -> None:
    services, url = control
    publish(services)
    refused = state(url, str(PROTOCOL + 1))
    assert refused.status_code == 426
    assert "upgrade the control replicas before the agents" in refused.json()["error"]
    assert state(url, "one").status_code == 400
    assert state(url, str(PROTOCOL)).status_code == 200


def old_agent(node: EdgeNode, url: str) -> EdgeAgent:
    """The release before's agent as the control service sees it: no protocol header, and a
    sync file without one."""
    agent = EdgeAgent(node, url, "edge-token-0123456789", node_id="n1")
    del agent._session.headers[HEADER]
    return agent


def test_an_upgraded_agent_takes_the_links_its_old_form_left_out_without_a_reload(
        control: tuple[Services, str], node: EdgeNode, device_links_are_new: None) -> None:
    services, url = control
    publish(services)
    assert old_agent(node, url).sync()
    assert sorted(node.existing_redirects()) == [f"{SHORT}/plain"]
    sync_file = node.directory / "agent_sync.json"
    sync_file.write_text(sync_file.read_text().replace(', "protocol": 1', ""))
    reloads = node.reloads
    upgraded = EdgeAgent(node, url, "edge-token-0123456789", node_id="n1")
    assert upgraded.sync()
    assert sorted(node.existing_redirects()) == [f"{SHORT}/phone", f"{SHORT}/plain"]
    assert node.applied_version == services.edge_state.current_version()
    assert node.reloads == reloads, "the left-out links came hot"


@pytest.mark.slow
def test_a_v010_agent_serves_what_the_new_control_service_sends_it(
        control: tuple[Services, str], tmp_path: Path) -> None:
    """The release before's own agent (its code, its process) against this control service:
    it applies the state (device links too, which it reads), downloads its certificates by
    hostname (one GET each: it reads past the batch offer, edge/protocol.py), and reports in
    sync."""
    services, url = control
    publish(services)
    https_port = free_port()
    argv, env, cwd = v010_command("agent", "--node-id", "old")
    agent = ManagedProcess("v010-agent", argv, tmp_path / "agent.log", cwd=cwd, env={
        **env, "EDGE_CONTROL_URL": url, "EDGE_EDGE_TOKEN": "edge-token-0123456789",
        "EDGE_DATA_DIR": str(tmp_path / "data"), "EDGE_EDGE_DIR": str(tmp_path / "edge"),
        "EDGE_EDGE_HTTP_PORT": str(free_port()), "EDGE_EDGE_HTTPS_PORT": str(https_port),
        "EDGE_EDGE_STATS_PORT": str(free_port()), "EDGE_WORKER_INTERVAL": "0.2"})
    try:
        def in_sync() -> bool:
            nodes = services.edge_state.list_nodes()
            return bool(nodes) and all(node["in_sync"] for node in nodes)

        wait_until(in_sync, 60, "the v0.1.0 agent in sync", why=agent.tail)
        assert state(url, None).json()[CERT_BATCH_KEY], "it reads past the batch offer"
        plain = https_get(https_port, SHORT, "/plain")
        assert plain.status == 302 and plain.headers["location"] == "https://example.com/plain"
        assert "x-request-id" not in plain.headers, "answered from its map"
        node = EdgeNode(tmp_path / "edge")
        assert sorted(node.existing_redirects()) == [f"{SHORT}/phone", f"{SHORT}/plain"]
        # A change made now reaches it as a delta, in its form.
        services.links.create(SHORT, "https://example.com/later", "pub_1", slug="later")
        wait_until(lambda: https_get(https_port, SHORT, "/later").status == 302, 30,
                   "a new link on the v0.1.0 node", why=agent.tail)
        assert "Traceback" not in agent.output()
    finally:
        agent.stop()


# --- the store's schema ---------------------------------------------------------------------


def config_file(settings: Settings, path: Path) -> str:
    """A settings file naming only the store: what `edgectl migrate` needs."""
    lines = [f'storage_backend = "{settings.storage_backend}"',
             f'sqlite_path = "{settings.sqlite_path}"']
    if settings.storage_backend == "dynamodb":
        lines += [f'dynamodb_endpoint_url = "{settings.dynamodb_endpoint_url}"',
                  f'dynamodb_table_prefix = "{settings.dynamodb_table_prefix}"']
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def edgectl(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """The exit code, and what it printed (not its log lines)."""
    try:
        code = main(list(argv))
    except SystemExit as exited:  # argparse's refusals
        code = int(exited.code or 0)
    captured = capsys.readouterr()
    return code, captured.out + "\n".join(
        line for line in captured.err.splitlines() if not line.startswith("{"))


def test_migrate_plans_and_applies_once_under_a_lease(
        any_backend: Settings, services_with: Callable[..., Services], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    services = services_with(base=any_backend)
    config = config_file(any_backend, tmp_path / "store.toml")
    code, out = edgectl(capsys, "--config", config, "migrate", "--plan")
    assert code == 0 and "store schema 0; this release knows 6" in out and "6 pending" in out
    assert migrations.schema_version(services.backend) == 0, "a plan changes nothing"
    lease = migrations.MigrationLease(services.backend, holder="replica-a")
    lease.take()
    code, out = edgectl(capsys, "--config", config, "migrate", "--apply")
    assert code == 1 and "replica-a is migrating the store" in out
    lease.release()
    code, out = edgectl(capsys, "--config", config, "migrate", "--apply")
    assert code == 0 and out.strip().endswith("store schema 6"), out
    assert migrations.pending(services.backend) == []
    assert migrations.apply(services.backend) == []  # again: nothing to do
    code, out = edgectl(capsys, "--config", config, "migrate", "--apply")
    assert code == 0 and "0 pending" in out
    # Each step is idempotent on its own too: a run cut short before recording repeats it.
    assert [m.run(services.backend) for m in migrations.MIGRATIONS] == [0, 0, 0, 0, 0, 0]
    code, out = edgectl(capsys, "--config", config, "migrate")
    assert code == 2  # neither --plan nor --apply: argparse's sentence


def test_serve_refuses_a_schema_newer_than_it_knows(settings: Settings, tmp_path: Path) -> None:
    store = tmp_path / "store.db"
    backend = SqliteBackend(str(store))
    backend.table(migrations.META).put({"name": migrations.SCHEMA_ITEM,
                                        "schema_version": migrations.SCHEMA + 1})
    backend.close()
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "EDGE_API_TOKEN": "a" * 24,
           "EDGE_EDGE_TOKEN": "e" * 24, "EDGE_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
           "EDGE_SQLITE_PATH": str(store), "EDGE_DATA_DIR": str(tmp_path / "data"),
           "EDGE_LISTEN_PORT": str(free_port())}
    done = subprocess.run([sys.executable, "-m", "edgectl.cli", "serve"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert f"the store's schema is {migrations.SCHEMA + 1}, newer than this release knows " \
           f"({migrations.SCHEMA})" in done.stderr
    assert "Traceback" not in done.stderr



def test_serve_stamps_a_new_store_with_its_schema_and_leaves_an_old_one_to_migrate(
        any_backend: Settings) -> None:
    """A new store has nothing to migrate: at schema 0 it would keep the oldest layout (on
    DynamoDB, index keys unspread) until someone ran `edgectl migrate --apply`."""
    old = dataclasses.replace(any_backend, sqlite_path=f"{any_backend.sqlite_path}.old.db",
                              dynamodb_table_prefix=f"o{any_backend.dynamodb_table_prefix}")
    backend = open_backend(old)  # the release before's store: one domain, no schema item
    backend.table(DOMAINS).put({"hostname": "old.example.com", "status": "active"})
    backend.close()
    for settings, schema in ((any_backend, migrations.SCHEMA), (old, 0)):
        check_schema(settings)  # what serve does first
        backend = open_backend(settings)
        try:
            assert migrations.schema_version(backend) == schema
            if isinstance(backend, DynamoBackend):
                assert backend.spreads() == (schema >= SPREAD_SCHEMA)
        finally:
            backend.close()
    check_schema(any_backend)  # again: nothing changes

# --- the certificates' re-key ---------------------------------------------------------------


def edge_store(backend: Backend, vault: KeyVault) -> EdgeStateStore:
    return EdgeStateStore(backend.table(EDGE_STATE), backend.table(EDGE_ROUTES),
                          backend.table(EDGE_CERTS), backend.table(EDGE_NODES), vault,
                          backend.table(EDGE_VISIT_REPORTS),
                          redirects=backend.table(EDGE_REDIRECTS))


def test_the_rekey_keeps_every_certificate_downloadable_by_old_and_new_agents(
        backend: Backend) -> None:
    vault = KeyVault([Fernet.generate_key().decode()])
    edge = edge_store(backend, vault)
    config = EdgeConfig(("127.0.0.1:9",), ("127.0.0.1:9",))
    pems = {f"h{n}.example.test": self_signed(f"h{n}.example.test")[1] for n in range(3)}
    edge.change({host: ("pub_1", pem) for host, pem in pems.items()}, config)
    # The store as the release before left it: certificates under their bare hostname only.
    for host, pem in pems.items():
        assert edge.certs.delete(cert_key(host, fingerprint(pem)))
    # A hot-link item of the releases before the change feed: a snapshot cannot read it.
    edge.redirects.put({"key": "go.example.test/x", "host": "go.example.test", "slug": "x",
                        "code": 302, "target": "https://example.com/x"})

    def every_one_downloads() -> bool:
        return all(edge.certificate(host) is not None
                   and edge.certificate(host)["pem"] == pem  # type: ignore[index]
                   and (edge.certificate(host, fingerprint(pem)) or {}).get("pem") == pem
                   for host, pem in pems.items())

    assert every_one_downloads(), "before the migration, from the bare-hostname items"
    done = migrations.apply(backend)
    spread = 0 if isinstance(backend, SqliteBackend) else 3  # the route items' feed keys
    assert [(m.number, changed) for m, changed in done] == [(1, 3), (2, 1), (3, spread), (4, 0),
                                                         (5, 0), (6, 0)]
    assert every_one_downloads()
    assert edge.load() is not None  # the snapshot reads the table again
    # The next release drops the bare-hostname items: the keyed ones carry on alone.
    for host in pems:
        assert edge.certs.delete(host)
    assert every_one_downloads()
    # A renewal: the route's new certificate for both; the replaced one for an agent still on
    # the route's earlier revision, by fingerprint, for a while.
    host, before = "h0.example.test", pems["h0.example.test"]
    renewed = self_signed(host)[1]
    edge.change({host: ("pub_1", renewed)}, config)
    assert edge.certificate(host)["pem"] == renewed  # type: ignore[index]
    assert edge.certificate(host, fingerprint(renewed))["pem"] == renewed  # type: ignore[index]
    replaced = edge.certs.get(cert_key(host, fingerprint(before)))
    assert replaced is not None and replaced["expires_at"] > 0
    assert edge.certificate(host, fingerprint(before))["pem"] == before  # type: ignore[index]
    # A removal drops the route's keys, in both forms.
    edge.change({host: None}, config)
    assert edge.certificate(host) is None
    assert edge.certificate(host, fingerprint(renewed)) is None
