"""A real webhook receiver on loopback for the tests: records every request as it arrives."""
from __future__ import annotations

import collections
import json
import threading
from typing import Any, Callable, Iterable

from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response


class Receiver:
    """Records every request as it arrives; can answer an error status or hang for the first N."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self._plan: collections.deque[str | int] = collections.deque()
        self._lock = threading.Lock()
        self.release = threading.Event()
        self._server = make_server("127.0.0.1", 0, self._app, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}/hooks"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True)
        self._thread.start()

    def fail_next(self, count: int, status: int = 500) -> None:
        self._plan.extend([status] * count)

    def hang_next(self, count: int) -> None:
        self._plan.extend(["hang"] * count)

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        request = Request(environ)
        body = request.get_data()
        with self._lock:
            self.requests.append({"headers": dict(request.headers), "body": body})
            action = self._plan.popleft() if self._plan else 204
        if action == "hang":
            self.release.wait(10)
            action = 204
        return Response(status=int(action))(environ, start_response)

    def deliveries(self) -> list[str]:
        with self._lock:
            return [r["headers"]["X-Edge-Delivery"] for r in self.requests]

    def stop(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def received(self) -> list[dict[str, Any]]:
        """Each request's delivery id, event type and JSON body."""
        with self._lock:
            return [{"id": r["headers"]["X-Edge-Delivery"], "type": r["headers"]["X-Edge-Event"],
                     "body": json.loads(r["body"])} for r in self.requests]
