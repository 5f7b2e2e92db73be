"""The metric names a PromQL expression reads, and the names a live scrape exports: what the
dashboards and alert rules in deploy/ are checked against."""
from __future__ import annotations

import re

import requests
from prometheus_client.parser import text_string_to_metric_families

from control.wiring import Services
from kit.x509 import self_signed

_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
             "group_right", "bool", "offset", "inf", "nan"}
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPINGS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_VARIABLES = re.compile(r"\$\{?\w+\}?")
_NAME = re.compile(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?")


def metric_names(expr: str) -> set[str]:
    """Every metric name ``expr`` selects (functions, keywords, labels and durations left out)."""
    text = _STRINGS.sub('""', expr)
    text = _MATCHERS.sub("", text)
    text = _RANGES.sub("", text)
    text = _GROUPINGS.sub("", text)
    text = _VARIABLES.sub("", text)
    names = set()
    for match in _NAME.finditer(text):
        name, call = match.group(1), match.group(2)
        if call is None and name.lower() not in _KEYWORDS:
            names.add(name)
    return names


def exported_names(text: str) -> set[str]:
    """The sample names of a Prometheus text exposition."""
    return {sample.name for family in text_string_to_metric_families(text)
            for sample in family.samples}


def control_scrape(services: Services, url: str) -> set[str]:
    """The names a live control service exports once it has a certificate, an edge node and
    an issuance result (families with labels have no sample before)."""
    cert, combined = self_signed("metrics.example.test")
    key = combined[len(cert):].encode()
    services.certificates.save(["metrics.example.test"], cert, key)
    services.edge_state.report("node-1", None, None, True)
    assert services.issuer.stats is not None
    services.issuer.stats.record("failed")
    return exported_names(requests.get(f"{url}/metrics", timeout=10).text)
