"""What /metrics exports for the dashboards and alert rules (deploy/grafana, deploy/prometheus):
failing domains, certificates by expiry, issuance results, and each edge node's sync state."""
from __future__ import annotations

import dataclasses
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client.parser import text_string_to_metric_families

from admin_app import create_app
from control.wiring import Services
from kit.x509 import self_signed

KEY = ec.generate_private_key(ec.SECP256R1())
KEY_PEM = KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())


@pytest.fixture
def services(services_both: Services) -> Services:
    return services_both


def scrape(services: Services) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics scrape: (name, sorted labels) -> value."""
    text = create_app(services).test_client().get("/metrics").get_data(as_text=True)
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_failing_domains_are_counted_on_every_change(services: Services) -> None:
    first, _ = services.domains.connect("a.metrics.example.test", "pub_1")
    services.domains.connect("b.metrics.example.test", "pub_1")
    assert scrape(services)[("edge_domains_failing", ())] == 0
    failed = services.domains.defer(first, [{"message": "no CNAME"}])
    again = services.domains.defer(failed, [{"message": "still no CNAME"}])
    assert scrape(services)[("edge_domains_failing", ())] == 1  # counted once
    services.domains.transition(again, "verified", "DNS is right", last_error=None)
    assert scrape(services)[("edge_domains_failing", ())] == 0
    other = services.domains.get("b.metrics.example.test")
    services.domains.defer(other, [{"message": "no CNAME"}])
    services.lifecycle.remove("b.metrics.example.test")
    assert services.domains.failing() == 0
    # A store from before this count: the first process to open it counts what is there.
    services.domains.defer(services.domains.get("a.metrics.example.test"), [{"message": "x"}])
    services.domains.counts.table.delete("failing")  # type: ignore[union-attr]
    reopened = Services.from_settings(services.settings)
    try:
        assert reopened.domains.failing() == 1
        before = reopened.backend.requests
        reopened.domains.failing()
        assert reopened.backend.requests - before == 1
    finally:
        reopened.close()


def test_certificates_by_expiry_come_from_one_ordered_query(services: Services) -> None:
    assert ("edge_certificate_next_expiry_timestamp_seconds", ()) not in scrape(services)
    for hostname, days in (("soon.example.test", 3), ("month.example.test", 20),
                           ("later.example.test", 80)):
        services.certificates.save([hostname], self_signed(hostname, KEY, days=days)[0], KEY_PEM)
    samples = scrape(services)
    assert samples[("edge_certificates_expiring", (("within", "7d"),))] == 1
    assert samples[("edge_certificates_expiring", (("within", "30d"),))] == 2
    soonest = samples[("edge_certificate_next_expiry_timestamp_seconds", ())]
    assert abs(soonest - (time.time() + 3 * 86400)) < 600
    assert [host for host, _ in services.certificates.expiring(time.time() + 30 * 86400)] == [
        "soon.example.test", "month.example.test"]
    services.certificates.delete("soon.example.test")
    assert scrape(services)[("edge_certificates_expiring", (("within", "7d"),))] == 0


def test_issuance_results_are_prometheus_counters(services: Services) -> None:
    assert services.issuer.stats is not None
    for result in ("issued", "issued", "failed"):
        services.issuer.stats.record(result)
    samples = scrape(services)
    assert samples[("edge_certificate_issuance_total", (("result", "issued"),))] == 2
    assert samples[("edge_certificate_issuance_total", (("result", "failed"),))] == 1


def test_each_node_reports_its_sync_state_and_lag(services: Services) -> None:
    services.lifecycle.publish_routes()
    desired = services.edge_state.meta()["edge_version"]  # type: ignore[index]
    services.edge_state.report("node-a", desired, None, True)
    services.edge_state.report("node-b", "0" * 8, "haproxy -c failed", False)
    samples = scrape(services)
    assert samples[("edge_nodes", ())] == 2 and samples[("edge_nodes_in_sync", ())] == 1
    assert samples[("edge_node_in_sync", (("node", "node-a"),))] == 1
    assert samples[("edge_node_in_sync", (("node", "node-b"),))] == 0
    assert samples[("edge_node_lag_seconds", (("node", "node-a"),))] == 0
    assert samples[("edge_node_lag_seconds", (("node", "node-b"),))] >= 0
    assert samples[("edge_node_haproxy_running", (("node", "node-b"),))] == 0
    assert samples[("edge_node_last_seen_seconds", (("node", "node-a"),))] < 60


def test_short_link_totals_are_kept_not_counted(services: Services) -> None:
    with_links = Services.from_settings(dataclasses.replace(
        services.settings, short_domains=["go.metrics.example.test"]))
    try:
        for slug in ("a", "b", "c"):
            with_links.links.create("go.metrics.example.test", "https://example.com/", "pub_1",
                                    slug=slug)
        with_links.links.update("go.metrics.example.test", "b", {"disabled": True})
        with_links.links.add_visits({"go.metrics.example.test/a": 4})
        with_links.links.delete("go.metrics.example.test", "c")
        samples = scrape(with_links)
        assert samples[("edge_short_links", (("state", "all"),))] == 2
        assert samples[("edge_short_links", (("state", "disabled"),))] == 1
        assert samples[("edge_short_link_visits", ())] == 4
    finally:
        with_links.close()


def _by_table(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float],
              table: str | None = None) -> float:
    return sum(value for (name, labels), value in samples.items()
               if name == "edge_store_requests_by_table_total"
               and (table is None or dict(labels)["table"] == table))


def test_store_requests_are_counted_by_table_and_operation(services: Services) -> None:
    before = scrape(services)
    services.domains.connect("c.metrics.example.test", "pub_1")
    after = scrape(services)
    assert _by_table(after, "domains") > _by_table(before, "domains")
    assert _by_table(after, "domain_events") > _by_table(before, "domain_events")  # its event
    # Every request is in one (table, op) series: they add up to the process's total.
    assert _by_table(after) == after[("edge_store_requests", ())]
    ops = {dict(labels)["op"] for (name, labels) in after
           if name == "edge_store_requests_by_table_total" and dict(labels)["table"] == "domains"}
    assert ops & {"put", "PutItem", "UpdateItem"}, ops
