"""An edge agent against the real control app over HTTP, driving a real HAProxy."""
from __future__ import annotations

import shutil
import time
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from control.wiring import Services
from admin_app import create_app
from devtools.probe import https_get
from devtools.sample_app import SampleApp
from edge.agent import EdgeAgent
from edge.haproxy import ConfigRejected
from edge.metrics import serve_metrics
from edge import feed_log
from edge.node import EdgeNode
from edge.plan import CertificateRejected, UnsafePlan
from edge.state import DesiredState, Route
from kit.procs import free_port
from kit.settings import Settings
from kit.x509 import self_signed
from tests.conftest import ServicesWith, serving

API = {"Authorization": "Bearer test-token-0123456789"}


@pytest.fixture
def control(any_backend: Settings, services_with: ServicesWith) -> Iterator[tuple[Services, str]]:
    """The control app over HTTP on each backend, the nemesis' weather among them."""
    services = services_with(base=any_backend)
    with serving(create_app(services)) as url:
        yield services, url


@pytest.fixture
def agent(control: tuple[Services, str], tmp_path: Path) -> Iterator[EdgeAgent]:
    node = EdgeNode(tmp_path / "edge", http_port=free_port(), https_port=free_port())
    yield EdgeAgent(node, control[1], "edge-token-0123456789", node_id="n1")
    node.stop()


@pytest.fixture
def app() -> Iterator[SampleApp]:
    instance = SampleApp("app", 0)
    yield instance
    instance.stop()


def publish(services: Services, app: SampleApp, routes: dict[str, Route]) -> DesiredState:
    desired = DesiredState(tuple(routes.values()), (app.address,), ("127.0.0.1:9",))
    services.edge_state.save(desired)
    return desired


def some_routes(count: int) -> dict[str, Route]:
    return {f"h{n}.example.test": Route(f"h{n}.example.test", "pub_1",
                                        self_signed(f"h{n}.example.test")[1])
            for n in range(count)}


def node_report(control_url: str) -> dict[str, object]:
    return dict(requests.get(f"{control_url}/api/v1/edge/nodes", headers=API,
                             timeout=5).json()["nodes"][0])


def test_only_new_certificates_cross_the_wire(control: tuple[Services, str],
                                              agent: EdgeAgent, app: SampleApp) -> None:
    services, url = control
    routes = some_routes(3)
    publish(services, app, routes)
    assert agent.sync() is True and agent.downloads == 3
    assert agent.sync() is False, "unchanged: 304, nothing applied"
    cert, pem = self_signed("h0.example.test")
    routes["h0.example.test"] = Route("h0.example.test", "pub_1", pem)
    routes["h1.example.test"] = Route("h1.example.test", "pub_7", routes["h1.example.test"].pem)
    desired = publish(services, app, routes)
    assert agent.sync() is True
    assert agent.downloads == 4, "only the renewed certificate was fetched"
    assert https_get(agent.node.layout.https_port, "h0.example.test", cadata=cert).status == 200
    assert https_get(agent.node.layout.https_port, "h1.example.test").json()["publication_id"] \
        == "pub_7"
    report = node_report(url)
    assert report["applied_version"] == desired.version and report["in_sync"] is True
    assert report["lag_seconds"] == 0 and report["haproxy_running"] is True


def test_refused_certificate_is_reported_and_the_node_keeps_serving(
        control: tuple[Services, str], agent: EdgeAgent, app: SampleApp) -> None:
    services, url = control
    cert, pem = self_signed("ok.example.test")
    good = publish(services, app, {"ok.example.test": Route("ok.example.test", "pub_1", pem)})
    agent.sync()
    _, other = self_signed("bad.example.test")
    broken = self_signed("bad.example.test")[0] + other[other.index("-----BEGIN PRIVATE"):]
    publish(services, app, {"ok.example.test": Route("ok.example.test", "pub_1", pem),
                            "bad.example.test": Route("bad.example.test", "pub_2", broken)})
    with pytest.raises(CertificateRejected):
        agent.sync()
    report = node_report(url)
    assert report["applied_version"] == good.version and report["in_sync"] is False
    assert "bad.example.test" in str(report["error"]) and float(str(report["lag_seconds"])) >= 0
    probe = https_get(agent.node.layout.https_port, "ok.example.test", cadata=cert)
    assert (probe.status, probe.json()["publication_id"]) == (200, "pub_1")


def test_unsafe_plan_waits_for_an_operator_to_force_it(control: tuple[Services, str],
                                                       agent: EdgeAgent, app: SampleApp) -> None:
    services, url = control
    routes = some_routes(10)
    publish(services, app, routes)
    agent.sync()
    shrunk = publish(services, app, dict(list(routes.items())[:2]))
    with pytest.raises(UnsafePlan):
        agent.sync()
    assert "removes 8 of 10" in str(node_report(url)["error"])
    assert https_get(agent.node.layout.https_port, "h9.example.test").status == 200
    forced = requests.post(f"{url}/api/v1/edge/force", headers=API, timeout=5,
                           json={"version": shrunk.version})
    assert forced.status_code == 200
    assert requests.post(f"{url}/api/v1/edge/force", headers=API, timeout=5,
                         json={"version": "0" * 16}).status_code == 409
    assert agent.sync() is True
    assert https_get(agent.node.layout.https_port, "h9.example.test").status == 404
    assert node_report(url)["in_sync"] is True


def test_keys_are_encrypted_and_items_stay_small(control: tuple[Services, str],
                                                 app: SampleApp, settings: Settings) -> None:
    services, _ = control
    publish(services, app, some_routes(50))
    raw = b"".join(p.read_bytes() for p in Path(settings.sqlite_path).parent.glob("edge.db*"))
    assert b"PRIVATE KEY" not in raw
    meta = services.edge_state.meta()
    assert meta is not None and len(str(meta)) < 1000 + feed_log.KEYS_BYTES, \
        "the version item does not grow past its recent keys' bound"


def test_node_reports_are_validated(control: tuple[Services, str]) -> None:
    _, url = control
    edge = {"Authorization": "Bearer edge-token-0123456789"}
    for node_id, body in [("bad id", {}), ("n1", []), ("n1", {"applied_version": 5}),
                          ("n1", {"haproxy_running": "yes"}), ("n1", {"error": "x" * 5000})]:
        response = requests.post(f"{url}/api/v1/edge/nodes/{node_id}", json=body, headers=edge,
                                 timeout=5)
        assert response.status_code in (400, 404), (node_id, body, response.status_code)


def test_broken_template_is_reported_and_the_node_keeps_serving(
        control: tuple[Services, str], agent: EdgeAgent, app: SampleApp, tmp_path: Path) -> None:
    services, url = control
    cert, pem = self_signed("ok.example.test")
    good = publish(services, app, {"ok.example.test": Route("ok.example.test", "pub_1", pem)})
    agent.sync()
    broken = tmp_path / "templates"
    shutil.copytree(resources.files("haproxy_templates"), broken)
    config = broken / "haproxy.cfg.j2"
    config.write_text(config.read_text().replace("timeout connect 5s", "timeout connect soon"))
    restarted = EdgeNode(agent.node.directory, http_port=agent.node.layout.http_port,
                         https_port=agent.node.layout.https_port, templates=broken)
    restarted.start()  # takes over the HAProxy running, as a restarted agent does
    rendering = EdgeAgent(restarted, url, "edge-token-0123456789", node_id="n1")
    spare = SampleApp("spare", 0)
    try:
        services.edge_state.save(DesiredState(
            (Route("ok.example.test", "pub_1", pem),), (app.address, spare.address),
            ("127.0.0.1:9",)))
        with pytest.raises(ConfigRejected):
            rendering.sync()
    finally:
        spare.stop()
    report = node_report(url)
    assert report["applied_version"] == good.version and report["in_sync"] is False
    assert "timeout" in str(report["error"])
    probe = https_get(agent.node.layout.https_port, "ok.example.test", cadata=cert)
    assert (probe.status, probe.json()["publication_id"]) == (200, "pub_1")


def test_an_agent_restarted_with_new_templates_serves_them_with_no_change_published(
        control: tuple[Services, str], agent: EdgeAgent, app: SampleApp, tmp_path: Path) -> None:
    """An upgrade's templates (or a changed listening setting) reach HAProxy at the agent's
    restart: it asks for the whole state and renders it, rather than wait on the long poll
    for a change that on a quiet shard may be days away."""
    services, url = control
    cert, pem = self_signed("ok.example.test")
    publish(services, app, {"ok.example.test": Route("ok.example.test", "pub_1", pem)})
    agent.sync()
    newer = tmp_path / "templates"
    shutil.copytree(resources.files("haproxy_templates"), newer)
    config = newer / "haproxy.cfg.j2"
    config.write_text(config.read_text().replace(
        "balance roundrobin", "balance roundrobin\n    http-response set-header X-Release next"))
    restarted = EdgeNode(agent.node.directory, http_port=agent.node.layout.http_port,
                         https_port=agent.node.layout.https_port, templates=newer)
    restarted.start()  # takes over the HAProxy running, as a restarted agent does
    upgraded = EdgeAgent(restarted, url, "edge-token-0123456789", node_id="n1", watch=5.0)
    assert upgraded.sync(), "the state it already served, rendered with the new templates"
    probe = https_get(agent.node.layout.https_port, "ok.example.test", cadata=cert)
    assert (probe.status, probe.headers.get("x-release")) == (200, "next")
    assert node_report(url)["in_sync"] is True


def _answers_by_path(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """An app server that answers the status its path names: /500 -> 500, /404 -> 404."""
    status = {"/500": "500 Internal Server Error", "/404": "404 Not Found"}.get(
        environ["PATH_INFO"], "200 OK")
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", "0")])
    return []


def test_requests_and_errors_per_publication_are_exported(
        control: tuple[Services, str], agent: EdgeAgent) -> None:
    services, _ = control
    routes = some_routes(3)
    routes["h2.example.test"] = Route("h2.example.test", "pub_2", routes["h2.example.test"].pem)
    with serving(_answers_by_path) as app_url:
        services.edge_state.save(DesiredState(tuple(routes.values()),
                                              (app_url.removeprefix("http://"),),
                                              ("127.0.0.1:9",)))
        assert agent.sync() is True
        metrics_port = serve_metrics(agent.node.runtime, "127.0.0.1", 0)
        for host, path, status in (("h0.example.test", "/", 200), ("h1.example.test", "/", 200),
                                   ("h1.example.test", "/404", 404),
                                   ("h2.example.test", "/500", 500),
                                   ("nobody.example.test", "/", 404)):  # no publication
            assert https_get(agent.node.layout.https_port, host, path).status == status
        text = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    samples = {(s.name, s.labels["publication"]): s.value
               for family in text_string_to_metric_families(text) for s in family.samples
               if s.name.endswith("_total")}
    assert samples == {
        ("edge_publication_http_requests_total", "pub_1"): 3,
        ("edge_publication_http_requests_total", "pub_2"): 1,
        ("edge_publication_http_client_errors_total", "pub_1"): 1,
        ("edge_publication_http_client_errors_total", "pub_2"): 0,
        ("edge_publication_http_server_errors_total", "pub_1"): 0,
        ("edge_publication_http_server_errors_total", "pub_2"): 1}


def test_a_watching_agent_takes_the_next_change_without_its_pause(
        control: tuple[Services, str], tmp_path: Path, app: SampleApp) -> None:
    """After applying a change, or after a long poll that waited, a watching agent asks again
    at once: the next change is not held for the agent's interval (here an hour: it would
    never arrive)."""
    import threading

    services, url = control
    node = EdgeNode(tmp_path / "watching", http_port=free_port(), https_port=free_port())
    watching = EdgeAgent(node, url, "edge-token-0123456789", node_id="w1", watch=1.0)
    routes = some_routes(1)
    publish(services, app, routes)
    unchanged = threading.Event()
    fetch = watching.fetch

    def noting_unchanged(have: str | None = None) -> Any:
        answer = fetch(have)
        if answer is None:
            unchanged.set()
        return answer

    watching.fetch = noting_unchanged  # type: ignore[method-assign]
    stop = threading.Event()
    runner = threading.Thread(target=watching.run, args=(3600.0, stop), daemon=True)
    runner.start()
    try:
        for n in range(3):
            if n == 2:  # a long poll (1 s) answers "no change" first
                unchanged.clear()
                # (60 s: a round that failed under load pauses up to MAX_BACKOFF, 30 s)
                assert unchanged.wait(60), "the long poll never answered"
            cert, pem = self_signed("h0.example.test")
            routes["h0.example.test"] = Route("h0.example.test", "pub_1", pem)
            desired = publish(services, app, routes)
            deadline = time.monotonic() + 60
            while not served(node, cert) or node.applied_version != desired.version:
                assert time.monotonic() < deadline, f"change {n} not applied"
                time.sleep(0.05)
    finally:
        stop.set()
        runner.join(15)
        node.stop()


def served(node: EdgeNode, cert: str) -> bool:
    """Whether the node answers h0.example.test with ``cert`` (verified against it)."""
    try:
        return https_get(node.layout.https_port, "h0.example.test", cadata=cert).status == 200
    except OSError:  # not listening yet, or another certificate (ssl.SSLError is an OSError)
        return False


def test_files_that_cannot_start_leave_the_agent_running_and_the_state_served_anew(
        control: tuple[Services, str], tmp_path: Path, app: SampleApp) -> None:
    """A restarted agent whose node's files HAProxy refuses (a damaged release) says so and
    goes on: its first sync serves the state as a new release, not the same files again."""
    import threading

    services, url = control
    ports = {"http_port": free_port(), "https_port": free_port()}
    node = EdgeNode(tmp_path / "edge", **ports)
    routes = some_routes(2)
    publish(services, app, routes)
    EdgeAgent(node, url, "edge-token-0123456789", node_id="d1").sync()
    node.stop()
    (node.current / "haproxy.cfg").write_text("not a haproxy configuration\n")
    restarted = EdgeNode(tmp_path / "edge", **ports)
    agent = EdgeAgent(restarted, url, "edge-token-0123456789", node_id="d1")
    stop = threading.Event()
    runner = threading.Thread(target=agent.run, args=(0.2, stop), daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 30
        while not serves_h1(ports["https_port"]):
            assert runner.is_alive(), "the agent died on the damaged files"
            assert time.monotonic() < deadline, "the state was never served again"
            time.sleep(0.1)
        assert "not a haproxy" not in (restarted.current / "haproxy.cfg").read_text()
    finally:
        stop.set()
        runner.join(15)
        restarted.stop()


def serves_h1(port: int) -> bool:
    try:
        return https_get(port, "h1.example.test").json()["publication_id"] == "pub_1"
    except (OSError, ValueError):  # not listening yet
        return False
