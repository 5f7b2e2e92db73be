"""The HTTP server of `edgectl serve`: cheroot, a production thread-pool WSGI server (CherryPy's)
that also speaks TLS, which the agents' channel needs (waitress, used for the short links, has
no TLS). A stop is graceful, for rolling deploys behind a load balancer:

1. *drain*: /healthz answers 503 while every request is still served, so health checks take
   this replica out before anything is refused; the agents' long polls are answered at once
   and new ones refused (503), so no request outlasts the drain by a long poll;
2. *close*: the listener closes, idle keep-alive connections are closed, and the requests in
   flight get ``shutdown_seconds`` to finish.
"""
from __future__ import annotations

import logging
import ssl
import sys
import threading
import time
from typing import Any, Callable

from cheroot.server import HTTPConnection, HTTPRequest
from cheroot.ssl.builtin import BuiltinSSLAdapter
from cheroot.wsgi import Server

log = logging.getLogger(__name__)
_cheroot_log = logging.getLogger("cheroot")


_HANGUPS = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError, BrokenPipeError)
"""A client that closed its TLS connection without a close_notify, or reset it: HAProxy's TLS
health checks do so every 2 s, and so do load balancers and scanners."""


class _HeadWithBody:
    """A connection's writer for one response that sends the first two writes as one: the
    response's head and the start of its body (or its end: an empty body, the chunked
    trailer). cheroot writes them in two sends; a replica killed between the two would leave
    HAProxy with a head and no body, which it has already passed on to the visitor and cannot
    retry. In one send, a kill leaves either the whole answer (a small one, as nearly all of
    ours are: 16 KiB fits one TLS record) or nothing, which HAProxy asks the other replica
    for (``retry-on empty-response``). A streamed body goes on in its own sends."""

    def __init__(self, wfile: Any) -> None:
        self._wfile = wfile
        self._head: bytes | None = None

    def write(self, data: bytes) -> int:
        if self._head is None:
            self._head = bytes(data)
            return len(data)
        head, self._head = self._head, b""
        self._wfile.write(head + data)
        return len(data)

    def finish(self) -> None:
        """Send a head still held: a response with no body."""
        if self._head:
            self._wfile.write(self._head)
        self._head = b""

    def __getattr__(self, name: str) -> Any:  # flush, bytes_written, ...
        return getattr(self._wfile, name)


class _Request(HTTPRequest):  # type: ignore[misc]
    def respond(self) -> None:
        wfile = self.conn.wfile
        self.conn.wfile = joined = _HeadWithBody(wfile)
        try:
            super().respond()
        finally:
            self.conn.wfile = wfile
            joined.finish()


class _Connection(HTTPConnection):  # type: ignore[misc]
    RequestHandlerClass = _Request


class _Server(Server):
    """Responses go out by :class:`_HeadWithBody`.

    cheroot writes its messages straight to stderr, between our log lines and in no format
    of ours. Here they are log records: what it says at INFO (a client that left during the
    TLS handshake, plain HTTP on the TLS port: scanners, health checks) is noise at DEBUG, and
    so is the "socket.error" WARNING it logs, with a traceback, for a client that hung up
    between two requests; other warnings and errors keep their level and traceback."""

    def error_log(self, msg: str = "", level: int = logging.INFO,
                  traceback: bool = False) -> None:
        if level <= logging.INFO or isinstance(sys.exc_info()[1], _HANGUPS):
            _cheroot_log.debug("%s", msg)
            return
        _cheroot_log.log(level, "%s", msg, exc_info=traceback)

    ConnectionClass = _Connection


class Draining:
    """Set once a stop began: /healthz says so, the rest of the app serves as usual, and each
    of ``on_begin`` is called once (the edge watch answers its long polls)."""

    def __init__(self, *on_begin: Callable[[], None]) -> None:
        self._event = threading.Event()
        self._on_begin = on_begin

    def begin(self) -> None:
        if self._event.is_set():
            return
        self._event.set()
        for hook in self._on_begin:
            hook()

    def __bool__(self) -> bool:
        return self._event.is_set()


class ControlServer:
    def __init__(self, app: Any, host: str, port: int, *, threads: int = 16,
                 shutdown_seconds: float = 20.0, tls_cert: str = "", tls_key: str = "",
                 client_ca: str = "") -> None:
        """``client_ca``: ask TLS clients for a certificate and verify it against this CA
        (optional at the TLS level, as browsers and the publisher API have none; the edge API
        then refuses agents without one)."""
        self._server = _Server((host, port), app, numthreads=threads,
                               shutdown_timeout=max(1, round(shutdown_seconds)),
                               server_name="edgectl")
        if tls_cert:
            adapter = BuiltinSSLAdapter(tls_cert, tls_key)
            adapter.context.minimum_version = ssl.TLSVersion.TLSv1_2
            if client_ca:
                adapter.context.load_verify_locations(client_ca)
                adapter.context.verify_mode = ssl.CERT_OPTIONAL
            self._server.ssl_adapter = adapter
        self.scheme = "https" if tls_cert else "http"
        self._server.prepare()  # binds now: a taken port fails here, not in a thread
        self.port: int = self._server.bind_addr[1]
        self._thread = threading.Thread(target=self._server.serve, name="control-http",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> bool:
        """Stop accepting, close idle connections, wait for the requests in flight (at most
        ``timeout`` seconds when given: a request that hangs on the store does not hold the
        process). True if everything stopped in time."""
        stopping = threading.Thread(target=self._server.stop, name="control-http-stop",
                                    daemon=True)
        started = time.monotonic()
        stopping.start()
        stopping.join(timeout)
        left = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
        self._thread.join(5 if left is None else min(5, left))
        return not (stopping.is_alive() or self._thread.is_alive())


def stop_gracefully(server: ControlServer, draining: Draining, worker: threading.Thread,
                    hand_back: Callable[[], int], drain: float, shutdown: float,
                    signalled_at: float) -> None:
    """A rolling deploy's stop, over within ``drain + shutdown`` seconds of the signal
    whatever the store does: out of the load balancer first (:class:`Draining`) while the
    worker finishes its round and, once it has, hands back its leases (another replica goes on
    with those domains at once); then the listener closes and the requests in flight get what
    is left. Leases not handed back in time run out on their own."""
    deadline = signalled_at + drain + shutdown - 0.2  # the process still has to exit
    draining.begin()
    log.info("stopping: draining for %.1f s, then closing", drain)

    def wind_down() -> None:
        worker.join(max(0.0, deadline - time.monotonic()))
        if worker.is_alive():
            log.info("the worker's round outlasts the stop: its leases run out on their own")
            return
        try:
            hand_back()
        except Exception as exc:  # the store is away: the leases run out on their own
            log.info("leases not handed back (%s); they run out on their own", exc)

    winding = threading.Thread(target=wind_down, name="hand-back", daemon=True)
    winding.start()
    time.sleep(max(0.0, signalled_at + drain - time.monotonic()))
    if not server.stop(timeout=max(0.0, deadline - time.monotonic())):
        log.warning("requests still in flight after %.1f s are cut", shutdown)
    winding.join(max(0.0, deadline - time.monotonic()))
