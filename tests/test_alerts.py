"""The alert rules in deploy/prometheus: promtool accepts them and their unit tests pass
(alerts_test.yml covers every alert), and every metric they read is exported by a live
control service."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from control.wiring import Services
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


def test_every_metric_the_rules_read_exists_in_a_live_scrape(
        control: tuple[Services, str]) -> None:
    wanted = {name for expr in alerts().values() for name in metric_names(expr)}
    scraped = control_scrape(*control)
    assert wanted and not wanted - scraped, f"not exported by /metrics: {sorted(wanted - scraped)}"
