"""A tiny stand-in for the platform's app fleet: it echoes what the edge told it, as JSON."""
from __future__ import annotations

import json
import logging
import threading
from typing import Any, Callable, Iterable

from werkzeug.serving import BaseWSGIServer, make_server

StartResponse = Callable[..., Any]


def make_app(name: str) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        body = json.dumps({
            "instance": name,
            "host": environ.get("HTTP_HOST"),
            "path": environ.get("PATH_INFO"),
            "publication_id": environ.get("HTTP_X_PUBLICATION_ID"),
            "request_id": environ.get("HTTP_X_REQUEST_ID"),
            "forwarded_for": environ.get("HTTP_X_FORWARDED_FOR"),
            "user": environ.get("HTTP_X_EDGE_USER"),
        }).encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    return app


class SampleApp:
    """One instance of the sample app on a loopback port, served from a background thread."""

    def __init__(self, name: str, port: int, host: str = "127.0.0.1") -> None:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per health check
        self.server: BaseWSGIServer = make_server(host, port, make_app(name), threaded=True)
        self.address = f"{host}:{self.server.server_port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
