"""Bearer-token authentication for the machine APIs.

Two tokens: the platform's (publisher API, operator calls) and the edge agents' (desired state
and certificates with their private keys), so an app server never holds a key to every site.
"""
from __future__ import annotations

import functools
import hmac
from typing import Any, Callable, TypeVar

from flask import current_app, jsonify, request

F = TypeVar("F", bound=Callable[..., Any])


def _requiring(config_key: str) -> Callable[[F], F]:
    def decorator(view: F) -> F:
        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            expected = current_app.config[config_key]
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            if not expected or scheme.lower() != "bearer" or \
                    not hmac.compare_digest(token.encode(), expected.encode()):
                response = jsonify(error="a valid bearer token is required")
                response.status_code = 401
                response.headers["WWW-Authenticate"] = "Bearer"
                return response
            return view(*args, **kwargs)
        return wrapped  # type: ignore[return-value]
    return decorator


require_token = _requiring("EDGE_API_TOKEN")
require_edge_token = _requiring("EDGE_EDGE_TOKEN")
