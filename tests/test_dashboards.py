"""The Grafana dashboards in deploy/grafana: well-formed dashboard JSON, and every metric their
queries read is exported by a live control service, a live HAProxy exporter or a live agent."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from control.wiring import Services
from devtools.probe import https_get
from devtools.sample_app import SampleApp
from edge.agent import EdgeAgent
from edge.metrics import serve_metrics
from edge.node import EdgeNode
from edge.state import DesiredState, Route
from kit.procs import free_port
from kit.x509 import self_signed
from tests.promql import control_scrape, exported_names, metric_names

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = sorted((ROOT / "deploy" / "grafana").glob("*.json"))
PANEL_TYPES = {"row", "stat", "timeseries", "table", "gauge", "bargauge", "text"}


def load(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row holds its panels


def expressions(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in panels(dashboard) for target in panel.get("targets", [])]


def test_there_are_dashboards_for_the_control_service_and_the_edge() -> None:
    assert {path.name for path in DASHBOARDS} == {"edge-control.json", "edge-haproxy.json"}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda path: path.name)
def test_a_dashboard_is_well_formed(path: Path) -> None:
    dashboard = load(path)
    assert dashboard["uid"] == path.stem and dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    cells: set[tuple[int, int]] = set()
    for panel in panels(dashboard):
        assert panel["type"] in PANEL_TYPES and panel["title"]
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        mine = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [target["refId"] for target in panel["targets"]]
        assert panel["targets"] and len(refs) == len(set(refs))
        for target in panel["targets"]:
            assert target["expr"].strip() and metric_names(target["expr"]), target["expr"]


def test_every_control_metric_exists_in_a_live_scrape(control: tuple[Services, str]) -> None:
    services, url = control
    wanted = {name for path in DASHBOARDS for expr in expressions(load(path))
              for name in metric_names(expr) if name.startswith("edge_")
              and not name.startswith("edge_publication_")}
    assert wanted, "the control dashboard reads the control service's metrics"
    scraped = control_scrape(services, url)
    assert not wanted - scraped, f"not exported by /metrics: {sorted(wanted - scraped)}"


@pytest.fixture
def edge_scrapes(control: tuple[Services, str], tmp_path: Path) -> Iterator[set[str]]:
    """The names exported by a live edge node: HAProxy's exporter and the agent's, after a
    routed request (the per-publication table has a row only then)."""
    services, url = control
    app = SampleApp("app", 0)
    node = EdgeNode(tmp_path / "edge", http_port=free_port(), https_port=free_port(),
                    stats_port=free_port())
    try:
        pem = self_signed("blog.example.test")[1]
        services.edge_state.save(DesiredState((Route("blog.example.test", "pub_1", pem),),
                                              (app.address,), ("127.0.0.1:9",)))
        assert EdgeAgent(node, url, "edge-token-0123456789", node_id="n1").sync() is True
        agent_port = serve_metrics(node.runtime, "127.0.0.1", 0)
        assert https_get(node.layout.https_port, "blog.example.test").status == 200
        yield exported_names(requests.get(
            f"http://127.0.0.1:{node.layout.stats_port}/metrics", timeout=10).text) | \
            exported_names(requests.get(f"http://127.0.0.1:{agent_port}/metrics", timeout=10).text)
    finally:
        node.stop()
        app.stop()


def test_every_edge_metric_exists_in_a_live_scrape(edge_scrapes: set[str]) -> None:
    wanted = {name for path in DASHBOARDS for expr in expressions(load(path))
              for name in metric_names(expr)
              if name.startswith(("haproxy_", "edge_publication_"))}
    assert any(n.startswith("haproxy_") for n in wanted) and \
        any(n.startswith("edge_publication_") for n in wanted)
    assert not wanted - edge_scrapes, f"not exported: {sorted(wanted - edge_scrapes)}"


def test_every_metric_is_checked_against_some_scrape() -> None:
    every = {name for path in DASHBOARDS for expr in expressions(load(path))
             for name in metric_names(expr)}
    assert all(name.startswith(("edge_", "haproxy_")) for name in every), every


def test_metric_names_leave_out_functions_labels_and_keywords() -> None:
    expr = ('topk(20, sum by (publication) (rate(a_total{code="5xx", x=~"b|c"}[$__rate_interval]))'
            ' / on (publication) group_left max without (instance) (b:rule)) > 0.2 and c offset 5m'
            ' or vector(1) * time()')
    assert metric_names(expr) == {"a_total", "b:rule", "c"}
