"""Where an edge node's exporters listen: HAProxy's (``edge_stats_port``) and the agent's
(``edge_metrics_port``) answer anyone who reaches them with each publication's request counts,
so they take an address of their own (``edge_metrics_bind``), not the visitors' one."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
import requests

from devtools.sample_app import SampleApp
from edge.node import EdgeNode
from edge.state import Route
from edgectl.ops.config_check import check
from kit.procs import free_port
from kit.x509 import self_signed
from tests.test_edge_node import app, state  # noqa: F401 (app: the fixture, shared)


def test_haproxys_exporter_listens_on_the_metrics_address_only(
        edge_node: Callable[..., EdgeNode], app: SampleApp) -> None:
    node = edge_node(bind="127.0.0.1", stats_port=free_port(), stats_bind="127.0.0.2")
    node.apply(state(app, Route("one.example.test", "pub_1", self_signed("one.example.test")[1])))
    port = node.layout.stats_port
    assert requests.get(f"http://127.0.0.2:{port}/healthz", timeout=5).status_code == 200
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)


@pytest.mark.parametrize("lines, warned", [
    ("EDGE_EDGE_BIND=0.0.0.0\n", True),
    ("EDGE_EDGE_BIND=0.0.0.0\nEDGE_EDGE_STATS_PORT=0\n", False),
    ("EDGE_EDGE_BIND=0.0.0.0\nEDGE_EDGE_METRICS_BIND=10.0.0.10\n", False),
    ("EDGE_EDGE_BIND=10.0.0.10\nEDGE_EDGE_METRICS_PORT=9101\n", False),
    ("EDGE_EDGE_BIND=::\nEDGE_EDGE_STATS_PORT=0\nEDGE_EDGE_METRICS_PORT=9101\n", True)])
def test_config_check_warns_of_exporters_on_every_address(
        tmp_path: Path, lines: str, warned: bool) -> None:
    env = tmp_path / "agent.env"
    env.write_text(lines)
    env.chmod(0o600)
    warnings = [w for w in check([str(env)], "agent").warnings if "edge_metrics_bind" in w]
    assert bool(warnings) == warned, warnings
