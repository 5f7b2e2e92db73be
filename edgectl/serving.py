"""`edgectl serve`: the control service and its worker in one process, started once the
store answers, stopped gracefully (drain, then close) on SIGTERM or SIGINT."""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from flask import Flask

from control.replicas import LoneReplica
from control.server import ControlServer, Draining, stop_gracefully
from control.wiring import Services, platform_certificates
from control.worker import shard_moves, start_worker
from domains.counts import CountRepair
from edgectl import migrate
from edgectl.app import create_app
from kit import procs
from kit.backoff import until_it_answers
from kit.settings import Settings
from store import StoreError

log = logging.getLogger("edgectl")


def when_the_store_answers(settings: Settings,
                           stop: threading.Event) -> tuple[Services, Draining, Flask] | None:
    """Services built from settings, reconciled with the edge, and the app on them (its admin
    pages open tables too), once the store answers: a replica that starts in a store outage,
    or meets one while it starts, waits for it instead of exiting. None if stopped first."""
    def start() -> tuple[Services, Draining, Flask]:
        migrate.check_schema(settings)  # before this release writes a thing
        services = Services.from_settings(settings)
        try:
            services.lifecycle.publish_routes()  # reconcile once at start; then changes only
            draining = Draining(services.edge_shards.drain)
            return services, draining, create_app(services, draining=draining)
        except BaseException:
            services.close()
            raise
    return until_it_answers(start, stop, StoreError, log)


def count_repair(services: Services) -> list[Callable[[], None]]:
    """The weekly recount of the kept domain counts (domains/counts.py ``CountRepair``): a
    worker step that reads one item when a recount is due, and recounts on one replica."""
    repository = services.domains.repository
    if repository.counts is None:
        return []
    return [CountRepair(repository.counts, lambda status: repository.each_with_status(
        status, limit=1000), clock=services.clock).tick]


def serve(settings: Settings) -> int:
    """Run the control service and its worker until SIGTERM/SIGINT, then stop gracefully."""
    stop = procs.stop_on_signals(settings.drain_seconds + settings.shutdown_seconds)
    started = when_the_store_answers(settings, stop)
    if started is None:
        return 0
    services, draining, app = started
    try:
        server = ControlServer(app, settings.listen_host, settings.listen_port,
                               threads=settings.serve_threads,
                               shutdown_seconds=settings.shutdown_seconds,
                               tls_cert=settings.control_tls_cert,
                               tls_key=settings.control_tls_key,
                               client_ca=settings.control_client_ca)
        steps = [services.lifecycle.tick, platform_certificates(services).tick,
                 *shard_moves(services.moves)]
        if services.sweeper is not None:
            steps.append(services.sweeper.tick)
        if services.custom_certificates is not None:
            steps.append(services.custom_certificates.tick)  # uploads due to fall back
        steps.extend(count_repair(services))
        if not settings.control_servers:
            steps.append(LoneReplica(services.edge_state, settings.edge_control_servers).tick)
        worker = start_worker(steps, settings.worker_interval, stop, *(
            [services.shards.once] if services.shards else []))
        if services.webhooks.enabled:
            services.webhooks.start(stop)
        server.start()
        log.info("control service on %s://%s:%d", server.scheme, settings.listen_host,
                 server.port)
        procs.wait_for_stop(stop)
        stop_gracefully(server, draining, worker, services.lifecycle.release_leases,
                        settings.drain_seconds, settings.shutdown_seconds, time.monotonic())
        log.info("control service stopped")
    finally:
        services.close()
    return 0
