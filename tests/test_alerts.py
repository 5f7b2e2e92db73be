"""The alert rules in deploy/prometheus: promtool accepts them and their unit tests pass
(alerts_test.yml covers every alert), and every metric they read is exported by a live
control service."""
from __future__ import annotations

import dataclasses
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from admin_app import create_app
from control.worker import run_worker
from control.wiring import Services
from kit.settings import Settings
from store import Throttled
from tests.conftest import ServicesWith, serving
from tests.dynamo_nemesis import Nemesis
from tests.promql import control_scrape, metric_names

RULES = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"


def promtool(*args: str) -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: `scripts/bootstrap.sh --test` installs it (prometheus)"
    done = subprocess.run([found, *args], cwd=RULES, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def alerts() -> dict[str, str]:
    """alert name -> expression"""
    document = yaml.safe_load((RULES / "alerts.yml").read_text())
    return {rule["alert"]: rule["expr"] for group in document["groups"]
            for rule in group["rules"] if "alert" in rule}


def test_promtool_checks_the_rules() -> None:
    assert f"SUCCESS: {len(alerts())} rules found" in promtool("check", "rules", "alerts.yml")


def test_promtool_unit_tests_pass_and_cover_every_alert() -> None:
    assert "SUCCESS" in promtool("test", "rules", "alerts_test.yml")
    tests = yaml.safe_load((RULES / "alerts_test.yml").read_text())["tests"]
    tested = {case["alertname"] for test in tests for case in test.get("alert_rule_test", [])
              if case.get("exp_alerts")}
    assert tested == set(alerts()), "each alert has a test where it fires"


def test_the_alerts_asked_for_are_there() -> None:
    assert {"EdgeCertificateExpiringSoon", "EdgeNodeOutOfSync", "EdgeDomainFailing",
            "EdgeIssuanceErrorRate"} <= set(alerts())


@pytest.fixture
def control(dynamo_nemesis: Nemesis, nemesis: str, settings: Settings,
            services_with: ServicesWith) -> Iterator[tuple[Services, str]]:
    """A live control service on DynamoDB whose updates the test can throttle (what
    ``edge_store_throttled_total`` counts)."""
    services = services_with(base=dataclasses.replace(
        settings, storage_backend="dynamodb", dynamodb_endpoint_url=nemesis,
        dynamodb_table_prefix=f"a{threading.get_ident() % 100000}_"))
    dynamo_nemesis.fail_rate, dynamo_nemesis.only = 0.0, ("UpdateItem",)
    dynamo_nemesis.failures = ("throughput", "throttling")
    with serving(create_app(services)) as url:
        yield services, url


def test_every_metric_the_rules_read_exists_in_a_live_scrape(
        control: tuple[Services, str], dynamo_nemesis: Nemesis) -> None:
    wanted = {name for expr in alerts().values() for name in metric_names(expr)}
    # One update throttled past the client's retries (a third of every update, as before,
    # failed a scrape's own writes now and then: 0.3 ** 5 each).
    dynamo_nemesis.fail_rate = 1.0
    with pytest.raises(Throttled):
        control[0].edge_state.report("node-0", None, None, True)
    dynamo_nemesis.fail_rate = 0.0
    scraped = control_scrape(*control)
    assert wanted and not wanted - scraped, f"not exported by /metrics: {sorted(wanted - scraped)}"


def test_a_throttled_worker_slows_down_and_speeds_up_again() -> None:
    """Throttling past the client's retries ends the round and doubles the pause (the work
    stays due: nothing is failed); a round that goes through brings the pace back."""
    stop, started = threading.Event(), []
    throttle = [True] * 4 + [False] * 100

    def step() -> None:
        started.append(time.monotonic())
        if throttle.pop(0):
            raise Throttled("throttled")
        if len(started) >= 7:
            stop.set()

    run_worker([step], 0.05, stop)
    gaps = [b - a for a, b in zip(started, started[1:])]
    assert gaps[0] >= 0.1 and gaps[2] >= 0.4, gaps  # 2x, 4x, 8x, 16x the interval
    assert gaps[-1] < 0.2, "back to its pace"
