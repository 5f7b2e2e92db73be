"""The ARI proxy (tests/ari_proxy.py) with the faults a real CA can show: a renewalInfo answer
that is not what RFC 9773 says, and a 500 to a challenge's answer. It also counts the new
orders it refuses (``rate_limit``) and those the CA created."""
from __future__ import annotations

import io
import json
from typing import Any

from werkzeug.wrappers import Request, Response

from tests.ari_proxy import AriProxy


class FaultyCa(AriProxy):
    ari_body: str | None = None
    """When set, renewalInfo is answered with this body (else the window, as AriProxy does)."""
    ari_headers: dict[str, str] = {}
    fail_challenge_answers = False
    """When set, answering a challenge (POST {}, not POST-as-GET) gets a 500."""
    orders_refused = 0
    """New orders answered with a 429 (``rate_limit``)."""
    orders_created = 0
    """New orders the CA created (a badNonce retry is no second one)."""
    challenge_answers_failed = 0

    def app(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        if request.path.startswith("/renewal-info/") and self.ari_body is not None:
            self.renewal_info_requests += 1
            return Response(self.ari_body, content_type="application/json",
                            headers=self.ari_headers)(environ, start_response)
        if request.path == "/order-plz":
            if self.rate_limit is not None:
                self.orders_refused += 1
            else:
                return super().app(environ, self._counting(start_response))
        if request.path.startswith("/chalZ/") and self.fail_challenge_answers:
            body = request.get_data()
            environ["wsgi.input"] = io.BytesIO(body)  # read again by the proxying below
            if not json.loads(body)["payload"]:
                return super().app(environ, start_response)
            self.challenge_answers_failed += 1
            problem = {"type": "urn:ietf:params:acme:error:serverInternal", "detail": "boom"}
            return Response(json.dumps(problem), status=500,
                            content_type="application/problem+json")(environ, start_response)
        return super().app(environ, start_response)

    def _counting(self, start_response: Any) -> Any:
        def counted(status: str, *args: Any) -> Any:
            if status.startswith("201"):
                self.orders_created += 1
            return start_response(status, *args)
        return counted
