"""Bearer-token authentication for the machine APIs (publisher API, edge agents)."""
from __future__ import annotations

import functools
import hmac
from typing import Any, Callable, TypeVar

from flask import current_app, jsonify, request

F = TypeVar("F", bound=Callable[..., Any])


def require_token(view: F) -> F:
    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        expected = current_app.config["EDGE_API_TOKEN"]
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), expected.encode()):
            response = jsonify(error="a valid bearer token is required")
            response.status_code = 401
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        return view(*args, **kwargs)
    return wrapped  # type: ignore[return-value]
