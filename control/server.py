"""The HTTP server of `edgectl serve`: cheroot, a production thread-pool WSGI server (CherryPy's)
that also speaks TLS, which the agents' channel needs (waitress, used for the short links, has
no TLS). A stop is graceful, for rolling deploys behind a load balancer:

1. *drain*: /healthz answers 503 while every request is still served, so health checks take
   this replica out before anything is refused;
2. *close*: the listener closes, idle keep-alive connections are closed, and the requests in
   flight get ``shutdown_seconds`` to finish.
"""
from __future__ import annotations

import logging
import ssl
import threading
from typing import Any

from cheroot.ssl.builtin import BuiltinSSLAdapter
from cheroot.wsgi import Server

log = logging.getLogger(__name__)
_cheroot_log = logging.getLogger("cheroot")


class _Server(Server):
    """cheroot writes its messages straight to stderr, between our log lines and in no format
    of ours. Here they are log records: what it says at INFO (a client that left during the
    TLS handshake, plain HTTP on the TLS port: scanners, health checks) is noise at DEBUG;
    warnings and errors keep their level and traceback."""

    def error_log(self, msg: str = "", level: int = logging.INFO,
                  traceback: bool = False) -> None:
        _cheroot_log.log(logging.DEBUG if level <= logging.INFO else level, "%s", msg,
                         exc_info=traceback)


class Draining:
    """Set once a stop began: /healthz says so, the rest of the app serves as usual."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def begin(self) -> None:
        self._event.set()

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

    def stop(self) -> None:
        """Stop accepting, close idle connections, wait for the requests in flight."""
        self._server.stop()
        self._thread.join(timeout=5)
