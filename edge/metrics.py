"""Requests and errors per publication, for Prometheus: HAProxy's own exporter counts per
frontend, backend and server only, so HAProxy tracks each publication in the
``publication_requests`` stick table and the agent exports that table on its own port.

The counters live in one HAProxy worker and restart from zero when a reload starts a new one;
Prometheus' ``rate()`` takes such resets in its stride. A publication idle for a day leaves the
table (and the scrape).
"""
from __future__ import annotations

import logging
from typing import Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, Metric

from edge.errors import EdgeError
from edge.runtime import RuntimeAPI

log = logging.getLogger(__name__)
TABLE = "publication_requests"
COUNTERS = {
    "http_req_cnt": ("edge_publication_http_requests", "HTTP requests this edge node routed "
                     "to the publication's hosts"),
    "http_err_cnt": ("edge_publication_http_client_errors", "Of those, answers with a 4xx "
                     "status"),
    "http_fail_cnt": ("edge_publication_http_server_errors", "Of those, 5xx answers of the app "
                      "servers (HAProxy 2.6 does not count its own 503 when no server answers "
                      "here: its exporter's per-backend figures have those)"),
}


class PublicationMetrics:
    """A Prometheus collector that reads the stick table at each scrape."""

    def __init__(self, runtime: RuntimeAPI) -> None:
        self._runtime = runtime

    def collect(self) -> Iterator[Metric]:
        for counter, (name, help_text) in COUNTERS.items():
            family = CounterMetricFamily(name, help_text, labels=["publication"])
            try:
                counts = self._runtime.show_table(TABLE, counter)
            except (OSError, EdgeError) as exc:  # HAProxy is not running (yet): no samples
                log.debug("cannot read %s: %s", TABLE, exc)
                counts = {}
            for publication, count in sorted(counts.items()):
                family.add_metric([publication], count)
            yield family


def serve_metrics(runtime: RuntimeAPI, host: str, port: int) -> int:
    """Serve the per-publication metrics at ``http://host:port/metrics`` from a daemon thread;
    returns the port (``port`` 0 picks a free one)."""
    registry = CollectorRegistry()
    registry.register(PublicationMetrics(runtime))  # type: ignore[arg-type]
    server, _ = start_http_server(port, addr=host, registry=registry)
    return int(server.server_port)
