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
from store import ABSENT, VERSION, ConflictError, Item, StoreError, Table, Throttled

log = logging.getLogger(__name__)


ORDER_LEASE_SECONDS = 300.0
"""How long a platform host's order lease lasts: longer than an order takes (its validation and
finalization wait at most 90 s, certs/issuer.py ``ORDER_TIMEOUT``), short enough that a replica
that died mid-order holds up the others for minutes, not the CA's week of duplicate limits.
An order that outlasts it all the same is resumed by the next holder from the order journal
(certs/orders.py), not ordered again, once the CA has given it its URL."""
ORDER_LEASE_FORMAT = 1
"""The lease item's ``v``. Any live item under the name holds the lease, whatever its ``v``:
a later release may add fields without the replicas of this one ordering beside it."""


class OrderLease:
    """One replica at a time orders a platform host's certificate: an item of ``store_meta``
    named after the host, created only where none is live (a conditional write) and expiring
    after ``seconds``, so a holder that died frees it. It says who orders, not what is stored:
    the holder looks at the stored certificate again before it orders, as one may have been
    stored by the holder before it. Expiry is the store's: wall-clock time."""

    def __init__(self, table: Table, holder: str, seconds: float = ORDER_LEASE_SECONDS) -> None:
        self._table = table
        self.holder = holder
        self._seconds = seconds

    @staticmethod
    def name(host: str) -> str:
        return f"platform_order|{host}"

    def take(self, host: str) -> int | None:
        """The held lease's version, or None while another replica holds it."""
        try:
            return int(self._table.put({"name": self.name(host), "v": ORDER_LEASE_FORMAT,
                                        "holder": self.holder,
                                        "expires_at": time.time() + self._seconds},
                                       expected_version=ABSENT)[VERSION])
        except ConflictError:
            return None

    def release(self, host: str, held: int) -> None:
        try:
            self._table.delete(self.name(host), expected_version=held)
        except ConflictError:
            pass  # it ran out and another replica took it: that one's now


class PlatformCertificates:
    """The platform's own domain (SSO, publisher pages) needs a certificate at the edge too.
    The operator declared it, so there is no DNS verification: issue, renew, publish.

    Only once an edge node serves (``edge_up``): the CA's HTTP-01 request goes through the
    edge, and each validation that fails before counts against the CA's rate limits.

    Every replica runs this step, and they reach the first issuance and each renewal together:
    with ``lease``, one orders and the others wait, then publish the route to what it stored
    (a CA limits duplicate certificates: Let's Encrypt, 5 a week for the same names). Without
    one (a lone process), it orders as soon as it is due."""

    def __init__(self, hosts: tuple[str, ...], issuer: IssuerChain,
                 certificates: CertificateStore, publisher: EdgePublisher,
                 retry_seconds: float = 5.0, check_seconds: float = 3600.0,
                 edge_up: Callable[[], bool] = lambda: True,
                 lease: OrderLease | None = None) -> None:
        self._edge_up = edge_up
        self._hosts = hosts
        self._issuer = issuer
        self._certificates = certificates
        self._publisher = publisher
        self._retry = retry_seconds
        self._check = check_seconds
        self._lease = lease
        self._next: dict[str, float] = {}
        self._awaited: set[str] = set()
        """Hosts another replica was ordering for: their route is published once it stored."""

    def tick(self) -> None:
        for host in self._hosts:
            if time.monotonic() < self._next.get(host, 0.0):
                continue
            try:  # one host's failure must not hold up the hosts after it
                seen = self._certificates.raw(host)
                due = seen is None or self._issuer.renewal_due(host)
                if not due and host in self._awaited:
                    self._publish(host)  # the holder did too, unless it died first
            except Exception:
                log.exception("cannot tell whether platform domain %s needs a certificate; "
                              "retrying", host)
                self._next[host] = time.monotonic() + self._retry
                continue
            if not due:
                self._awaited.discard(host)
                self._next[host] = time.monotonic() + self._check  # not every round
                continue
            if not self._edge_up():
                return
            self._order(host, seen)

    def _order(self, host: str, seen: Item | None) -> None:
        """Order ``host``'s certificate under the lease, unless one was stored since ``seen``
        (the certificate read when it was found due)."""
        held = self._lease.take(host) if self._lease is not None else None
        if self._lease is not None and held is None:
            if host not in self._awaited:
                log.info("another replica orders the certificate of platform domain %s", host)
            self._awaited.add(host)
            self._next[host] = time.monotonic() + self._retry
            return
        try:
            stored = self._certificates.raw(host) if held is not None else seen
            if _serial(stored) == _serial(seen):  # else the holder before us stored one
                self._issuer.issue([host])
            self._publish(host)
            self._awaited.discard(host)
            log.info("platform domain %s has its certificate", host)
        except Exception:
            log.exception("certificate for platform domain %s failed; retrying", host)
            self._next[host] = time.monotonic() + self._retry
        finally:
            if self._lease is not None and held is not None:
                self._lease.release(host, held)

    def _publish(self, host: str) -> None:
        self._publisher.route_changes({host: PLATFORM_PUBLICATION})


def _serial(item: Item | None) -> str | None:
    return None if item is None else str(item.get("serial"))


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
