"""The control service's Flask app factory (publisher API, edge API, ACME responder, health,
and the admin dashboard under /admin, whose blueprints live in the ``admin`` package).

This module stays the entry point that assembles every HTTP surface of `edgectl serve`.
"""
from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

import admin
from certs.challenges import bp as challenge_bp
from control.server import Draining
from control.wiring import Services
from domains import settings_page
from domains.api import bp as domains_bp
from edge.control_api import VisitSink
from edge.control_api import bp as edge_bp
from edge.sso_views import bp as sso_bp
from kit.web import bound_json, provide, trace_requests
from shortlinks.api import bp as links_bp
from store import StoreError

log = logging.getLogger(__name__)


def create_app(services: Services, test_config: dict[str, Any] | None = None,
               draining: Draining | None = None) -> Flask:
    """``draining``: set when the server stops (control/server.py); /healthz then answers 503."""
    app = Flask(__name__)
    app.config.update(EDGE_API_TOKEN=services.settings.api_token,
                      EDGE_EDGE_TOKEN=services.settings.edge_token, JSON_SORT_KEYS=False,
                      MAX_CONTENT_LENGTH=1024 * 1024)
    app.config.update(test_config or {})
    trace_requests(app)  # first: its hooks bind the request id before any hook can answer
    bound_json(app)
    provide(app, services, services.settings, services.domains, services.lifecycle,
            services.challenges, services.certificates, services.edge_state, services.links,
            services.tokens, services.platform, services.sso,
            VisitSink(services.links.add_visits))
    for blueprint in (domains_bp, edge_bp, challenge_bp, links_bp, sso_bp):
        app.register_blueprint(blueprint)
    app.register_error_handler(StoreError, _store_unavailable)
    settings_page.init_app(app, services.settings.encryption_keys[0])
    admin.init_app(app, services)
    _register_health(app, services, draining)
    return app


def _store_unavailable(exc: StoreError) -> tuple[Response, int, dict[str, str]]:
    """The store did not answer: 503 and a sentence, so clients retry (no traceback: the
    worker already says when the store goes away and comes back)."""
    log.warning("a request failed: the store does not answer (%s)", exc)
    return (jsonify(error="the store is unavailable right now; try again shortly"), 503,
            {"Retry-After": "2"})


def _register_health(app: Flask, services: Services, draining: Draining | None) -> None:
    registry = CollectorRegistry()
    domains = Gauge("edge_domains", "Custom domains by status", ["status"], registry=registry)
    nodes = Gauge("edge_nodes_in_sync", "Edge nodes serving the desired state", registry=registry)
    requests = Gauge("edge_store_requests", "Store requests this process has made (a counter; "
                     "DynamoDB bills each)", registry=registry)
    requests.set_function(lambda: services.backend.requests)

    @app.get("/healthz")
    def healthz() -> Response | tuple[Response, int]:
        if draining:
            return jsonify(status="draining"), 503
        services.domains.domains.get("healthz.invalid")  # the store answers
        return jsonify(status="ok")

    @app.get("/metrics")
    def metrics() -> Response:
        for status, count in services.domains.by_status().items():  # one read
            domains.labels(status).set(count)
        nodes.set(sum(1 for n in services.edge_state.list_nodes() if n["in_sync"]))
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
