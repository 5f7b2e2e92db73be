"""The control service's Flask app factory (publisher API, edge API, ACME responder, health,
and the admin dashboard under /admin, whose blueprints live in the ``admin`` package).

This module stays the entry point that assembles every HTTP surface of `edgectl serve`.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterator

from flask import Flask, Response, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

import admin
from admin.ops_api import bp as ops_bp
from admin.shards_api import bp as shards_bp
from admin.tokens_api import bp as tokens_bp
from certs.challenges import bp as challenge_bp
from control.server import Draining
from control.wiring import Services
from publisher import byo_page, links_page, settings_page
from publisher.api import bp as domains_bp
from publisher.byo_api import bp as byo_bp
from publisher.takeover_api import bp as takeover_bp
from edge.control_api import VisitSink
from edge.control_api import bp as edge_bp
from edge.sso_views import bp as sso_bp
from kit.api import serve_contract
from kit.web import LazyRule, api_error, bound_json, provide, trace_requests
from shortlinks.api import bp as links_bp
from store import StoreError

log = logging.getLogger(__name__)


def create_app(services: Services, test_config: dict[str, Any] | None = None,
               draining: Draining | None = None) -> Flask:
    """``draining``: set when the server stops (control/server.py); /healthz then answers 503."""
    app = Flask(__name__)
    app.url_rule_class = LazyRule
    app.config.update(EDGE_API_TOKEN=services.settings.api_token,
                      EDGE_EDGE_TOKEN=services.settings.edge_token, JSON_SORT_KEYS=False,
                      EDGE_AGENT_CLIENT_CERTS=bool(services.settings.control_client_ca),
                      MAX_CONTENT_LENGTH=1024 * 1024)
    app.config.update(test_config or {})
    trace_requests(app)  # first: its hooks bind the request id before any hook can answer
    bound_json(app)
    provide(app, services, services.settings, services.domains, services.lifecycle,
            services.challenges, services.certificates, services.edge_state, services.links,
            services.tokens, services.platform, services.sso, services.custom_certificates,
            services.takeovers, services.edge_shards,
            VisitSink(services.links.add_visits))
    for blueprint in (domains_bp, takeover_bp, byo_bp, edge_bp, challenge_bp, links_bp, sso_bp,
                      ops_bp, tokens_bp, shards_bp):
        app.register_blueprint(blueprint)
    app.register_error_handler(StoreError, _store_unavailable)
    serve_contract(app)
    settings_page.init_app(app, services.settings.encryption_keys[0], services.clock)
    app.register_blueprint(byo_page.bp)
    app.register_blueprint(links_page.bp)
    admin.init_app(app, services)
    _register_health(app, services, draining)
    return app


def _store_unavailable(exc: StoreError) -> tuple[Response, int, dict[str, str]]:
    """The store did not answer: 503 and a sentence, so clients retry (no traceback: the
    worker already says when the store goes away and comes back)."""
    log.warning("a request failed: the store does not answer (%s)", exc)
    response, status = api_error("the store is unavailable right now; try again shortly", 503,
                                 "unavailable")
    return response, status, {"Retry-After": "2"}


class ControlMetrics:
    """What ``/metrics`` exports, read at each scrape. Every read is O(1) or follows the answer
    (kept counts, one ordered index query, the few edge nodes), never the whole fleet."""

    EXPIRY_WINDOWS = {"7d": 7 * 86400, "30d": 30 * 86400}

    def __init__(self, services: Services, clock: Callable[[], float] = time.time) -> None:
        self._services = services
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        services, now = self._services, self._clock()
        domains = GaugeMetricFamily("edge_domains", "Custom domains by status", labels=["status"])
        for status, count in services.domains.by_status().items():  # one read
            domains.add_metric([status], count)
        yield domains
        yield GaugeMetricFamily("edge_domains_failing", "Custom domains whose last step failed "
                                "(last_error set), whatever their status",
                                value=services.domains.failing())
        yield from self._certificates(now)
        issuance = CounterMetricFamily(
            "edge_certificate_issuance", "Certificate issuances this process attempted, by "
            "result (issued, failed)", labels=["result"])
        stats = services.issuer.stats
        for result, count in (stats.totals if stats else {}).items():
            issuance.add_metric([result], count)
        yield issuance
        yield from self._nodes()
        if services.links.totals is not None:
            kept = services.links.totals.totals()  # one read
            links = GaugeMetricFamily("edge_short_links", "Short links: all, and the disabled",
                                      labels=["state"])
            links.add_metric(["all"], kept["links"])
            links.add_metric(["disabled"], kept["disabled"])
            yield links
            yield GaugeMetricFamily("edge_short_link_visits", "Visits counted to the short links "
                                    "there are (both paths; a deleted link's leave)",
                                    value=kept["visits"])
        yield from self._webhooks(now)
        yield GaugeMetricFamily("edge_long_polls_waiting", "Agents' long polls this process "
                                "holds right now", value=services.edge_state.watch.waiting)
        yield GaugeMetricFamily("edge_store_requests", "Store requests this process has made (a "
                                "counter; DynamoDB bills each)", value=services.backend.requests)
        by_table = CounterMetricFamily(
            "edge_store_requests_by_table", "Store requests this process has made, by table and "
            "operation (SQLite: the table method; DynamoDB: the API call)", labels=["table", "op"])
        for (table, op), count in sorted(getattr(services.backend, "operations", {}).items()):
            by_table.add_metric([table, op], count)
        yield by_table
        throttled = CounterMetricFamily("edge_store_throttled", "Store requests the store "
                                        "throttled (DynamoDB), by table", labels=["table"])
        for table, count in sorted(getattr(services.backend, "throttled", {}).items()):
            throttled.add_metric([table], count)
        yield throttled

    def _webhooks(self, now: float) -> Iterator[Metric]:
        """The kept counts (one read) and the oldest queued event (one query per state)."""
        stats = self._services.webhooks.stats()
        if not stats:
            return
        queued = GaugeMetricFamily("edge_webhooks", "Webhooks queued for delivery (pending, or "
                                   "being sent)", labels=["state"])
        queued.add_metric(["pending"], max(0.0, stats["pending"]))
        yield queued
        outcomes = CounterMetricFamily(
            "edge_webhook_outcomes", "Webhooks delivered, failed for good (after "
            "webhook_retry_hours) and queued again by edgectl webhooks redeliver, by every "
            "replica", labels=["outcome"])
        for outcome in ("delivered", "failed", "redelivered"):
            outcomes.add_metric([outcome], stats[outcome])
        yield outcomes
        oldest = stats.get("oldest_pending_at")
        yield GaugeMetricFamily("edge_webhooks_oldest_pending_seconds", "Age of the oldest "
                                "queued webhook (0: none queued)",
                                value=max(0.0, now - oldest) if oldest is not None else 0.0)

    def _certificates(self, now: float) -> Iterator[Metric]:
        certificates = self._services.certificates
        soon = certificates.expiring(now + max(self.EXPIRY_WINDOWS.values()))
        expiring = GaugeMetricFamily(
            "edge_certificates_expiring", "Certificates whose not-after falls within the window "
            "(expired ones included)", labels=["within"])
        for window, seconds in self.EXPIRY_WINDOWS.items():
            expiring.add_metric([window], sum(1 for _, at in soon if at < now + seconds))
        yield expiring
        next_expiry = GaugeMetricFamily(
            "edge_certificate_next_expiry_timestamp_seconds",
            "The soonest not-after of any stored certificate (absent when there are none)")
        soonest = soon[0][1] if soon else certificates.next_expiry()
        if soonest is not None:
            next_expiry.add_metric([], soonest)
        yield next_expiry

    def _nodes(self) -> Iterator[Metric]:
        nodes = self._services.edge_state.list_nodes()
        yield GaugeMetricFamily("edge_nodes", "Edge nodes that have reported", value=len(nodes))
        yield GaugeMetricFamily("edge_nodes_in_sync", "Edge nodes serving the desired state",
                                value=sum(1 for n in nodes if n["in_sync"]))
        families = {
            "in_sync": GaugeMetricFamily("edge_node_in_sync", "1 if the node applied the "
                                         "desired state's version, else 0", labels=["node"]),
            "lag_seconds": GaugeMetricFamily("edge_node_lag_seconds", "Seconds since the desired "
                                             "version the node lacks was published (0: in sync)",
                                             labels=["node"]),
            "last_seen_seconds": GaugeMetricFamily("edge_node_last_seen_seconds", "Seconds since "
                                                   "the node's agent last reported",
                                                   labels=["node"]),
            "haproxy_running": GaugeMetricFamily("edge_node_haproxy_running", "1 if the node's "
                                                 "agent reported HAProxy running", labels=["node"]),
        }
        for node in nodes:
            for field, family in families.items():
                family.add_metric([node["node_id"]], float(node[field]))
        yield from families.values()


def _register_health(app: Flask, services: Services, draining: Draining | None) -> None:
    registry = CollectorRegistry()
    registry.register(ControlMetrics(services))  # type: ignore[arg-type]

    @app.get("/healthz")
    def healthz() -> Response | tuple[Response, int]:
        if draining:
            return jsonify(status="draining"), 503
        services.domains.find("healthz.invalid")  # the store answers
        return jsonify(status="ok")

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
