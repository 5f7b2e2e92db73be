"""The background loop of `edgectl serve`: drives domains forward every few seconds."""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Callable, ContextManager

from certs.chain import IssuerChain
from certs.store import CertificateStore
from control.publisher import PLATFORM_PUBLICATION, EdgePublisher
from edge.moves import Mover
from store import StoreError, Throttled

log = logging.getLogger(__name__)


class PlatformCertificates:
    """The platform's own domain (SSO, publisher pages) needs a certificate at the edge too.
    The operator declared it, so there is no DNS verification: issue, renew, publish.

    Only once an edge node serves (``edge_up``): the CA's HTTP-01 request goes through the
    edge, and each validation that fails before counts against the CA's rate limits."""

    def __init__(self, hosts: tuple[str, ...], issuer: IssuerChain,
                 certificates: CertificateStore, publisher: EdgePublisher,
                 retry_seconds: float = 5.0, check_seconds: float = 3600.0,
                 edge_up: Callable[[], bool] = lambda: True) -> None:
        self._edge_up = edge_up
        self._hosts = hosts
        self._issuer = issuer
        self._certificates = certificates
        self._publisher = publisher
        self._retry = retry_seconds
        self._check = check_seconds
        self._next: dict[str, float] = {}

    def tick(self) -> None:
        for host in self._hosts:
            if time.monotonic() < self._next.get(host, 0.0):
                continue
            try:  # one host's failure must not hold up the hosts after it
                due = self._certificates.describe(host) is None \
                    or self._issuer.renewal_due(host)
            except Exception:
                log.exception("cannot tell whether platform domain %s needs a certificate; "
                              "retrying", host)
                self._next[host] = time.monotonic() + self._retry
                continue
            if not due:
                self._next[host] = time.monotonic() + self._check  # not every round
                continue
            if not self._edge_up():
                return
            try:
                self._issuer.issue([host])
                self._publisher.route_changes({host: PLATFORM_PUBLICATION})
                log.info("platform domain %s has its certificate", host)
            except Exception:
                log.exception("certificate for platform domain %s failed; retrying", host)
                self._next[host] = time.monotonic() + self._retry


def shard_moves(mover: Mover | None) -> list[Callable[[], None]]:
    """The worker's step for edge shard moves (edge/moves.py), if any: one read of the
    registry and one index query when no move is due; the moved hostnames are looked for only
    when the shard set changed."""
    def tick() -> None:
        assert mover is not None
        mover.tick()
    return [tick] if mover is not None else []


def run_worker(steps: list[Callable[[], None]], interval: float, stop: threading.Event,
               max_slowdown: float = 16.0,
               each_round: Callable[[], ContextManager[None]] = contextlib.nullcontext) -> None:
    """Run ``steps`` every ``interval`` seconds until ``stop``. A store outage is logged when
    it starts and when it ends, not every round; other failures with their traceback. A round
    the store throttled (past the client's retries) ends there and the next waits twice as
    long, up to ``max_slowdown`` times ``interval``: the work is left due, not failed, and
    fewer requests give the store's partitions room. ``each_round``: what a round runs inside
    (the shard registry's ``once``: one read of it a round, however many steps ask)."""
    store_down = False
    slowdown = 1.0
    while not stop.is_set():
        throttled = False
        with each_round():
            for step in steps:
                try:
                    step()
                    if store_down:
                        log.warning("the store answers again; the worker goes on")
                        store_down = False
                except Throttled as exc:
                    throttled = True
                    if slowdown == 1.0:
                        log.warning("the store throttles (%s); the worker slows down", exc)
                    break
                except StoreError as exc:
                    if not store_down:
                        log.error("the store does not answer (%s); the worker retries every "
                                  "round and says when it answers again", exc)
                    store_down = True
                    break
                except Exception:  # a bad round must not kill the loop; the next one retries
                    log.exception("worker round failed")
        if throttled:
            slowdown = min(slowdown * 2, max_slowdown)
        elif slowdown > 1.0:
            log.warning("the store no longer throttles; the worker is back to its pace")
            slowdown = 1.0
        stop.wait(interval * slowdown)


def start_worker(steps: list[Callable[[], None]], interval: float, stop: threading.Event,
                 each_round: Callable[[], ContextManager[None]] = contextlib.nullcontext
                 ) -> threading.Thread:
    thread = threading.Thread(target=run_worker, args=(steps, interval, stop, 16.0, each_round),
                              name="edge-worker", daemon=True)
    thread.start()
    return thread
