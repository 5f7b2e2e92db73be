"""Debian's Pebble 2.4 has no renewalInfo: this HTTPS proxy in front of it adds ARI (and can
answer new orders with a 429, which Pebble never does, or hold a request as a hung CA would).

Every request goes on to Pebble unchanged with the proxy's Host header, so the URLs Pebble
builds (and checks in each JWS) are the proxy's; the directory gains ``renewalInfo``, served
here from ``window`` (seconds relative to now), and new orders' payloads are recorded.
"""
from __future__ import annotations

import base64
import datetime
import json
import threading
from typing import Any

import requests
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from devtools.pebble import PebbleStack

HOP_BY_HOP = {"connection", "transfer-encoding", "content-length", "content-encoding",
              "keep-alive"}


class AriProxy:
    def __init__(self, pebble: PebbleStack) -> None:
        self.pebble = pebble
        self.window = (-3600.0, 3600.0)
        self.new_orders: list[dict[str, Any]] = []
        self.renewal_info_requests = 0
        self.rate_limit: str | None = None
        """When set, new orders get a 429 with this Retry-After value."""
        self.stalled: str | None = None
        """Requests to this path wait (a CA that stopped answering) until ``released`` is set."""
        self.released = threading.Event()
        cert_dir = pebble.listener_ca.parent
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True,
                                  ssl_context=(str(cert_dir / "listener.pem"),
                                               str(cert_dir / "listener.key")))
        self.port = self.server.server_port
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def stop(self) -> None:
        self.server.shutdown()

    def app(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        if request.path.startswith("/renewal-info/"):
            self.renewal_info_requests += 1
            now = datetime.datetime.now(datetime.timezone.utc)
            start, end = (now + datetime.timedelta(seconds=s) for s in self.window)
            body = {"suggestedWindow": {"start": start.isoformat(), "end": end.isoformat()}}
            return Response(json.dumps(body), content_type="application/json")(
                environ, start_response)
        if request.path == "/order-plz" and self.rate_limit is not None:
            problem = {"type": "urn:ietf:params:acme:error:rateLimited",
                       "detail": "too many new orders recently"}
            return Response(json.dumps(problem), status=429,
                            content_type="application/problem+json",
                            headers={"Retry-After": self.rate_limit})(environ, start_response)
        if request.path == self.stalled:
            self.released.wait(120)
        if request.path == "/order-plz":
            payload = json.loads(request.get_data())["payload"]
            self.new_orders.append(json.loads(base64.urlsafe_b64decode(payload + "==")))
        upstream = requests.request(
            request.method, f"https://127.0.0.1:{self.pebble.acme_port}{request.full_path}",
            data=request.get_data(), verify=str(self.pebble.listener_ca), timeout=30,
            headers={**{k: v for k, v in request.headers.items() if k.lower() != "host"},
                     "Host": f"127.0.0.1:{self.port}"})
        content = upstream.content
        if request.path == "/dir":
            directory = json.loads(content)
            directory["renewalInfo"] = f"https://127.0.0.1:{self.port}/renewal-info"
            content = json.dumps(directory).replace(
                f"127.0.0.1:{self.pebble.acme_port}", f"127.0.0.1:{self.port}").encode()
        headers = [(k, v) for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP]
        return Response(content, status=upstream.status_code, headers=headers)(
            environ, start_response)
