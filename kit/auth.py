"""Bearer-token authentication for the machine APIs.

Two tokens: the platform's (publisher API, operator calls) and the edge agents' (desired state
and certificates with their private keys), so an app server never holds a key to every site.
Publisher and short-link views also take a publication's own token (``kit/tokens.py``); they
read the publication it is restricted to from ``scope()`` (None: the platform's token, no
restriction).
"""
from __future__ import annotations

import functools
import hmac
from typing import Any, Callable, TypeVar

from flask import Response, current_app, g, request

from kit import logs
from kit.tokens import PublicationTokens
from kit.web import api_error, use

F = TypeVar("F", bound=Callable[..., Any])


def _bearer() -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token if scheme.lower() == "bearer" and token else None


def _is(token: str | None, config_key: str) -> bool:
    expected = current_app.config[config_key]
    return bool(expected and token and hmac.compare_digest(token.encode(), expected.encode()))


def _unauthorized() -> Response:
    response, _ = api_error("a valid bearer token is required", 401, "unauthorized")
    response.status_code = 401
    response.headers["WWW-Authenticate"] = "Bearer"
    return response


def _requiring(config_key: str) -> Callable[[F], F]:
    def decorator(view: F) -> F:
        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if not _is(_bearer(), config_key):
                return _unauthorized()
            return view(*args, **kwargs)
        return wrapped  # type: ignore[return-value]
    return decorator


def require_platform_or_publication(view: F) -> F:
    """The platform's token (no restriction) or a publication's token (``scope()`` is its id)."""
    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        token = _bearer()
        if _is(token, "EDGE_API_TOKEN"):
            g.publication_scope = None
        else:
            publication = use(PublicationTokens).publication_of(token) if token else None
            if publication is None:
                return _unauthorized()
            g.publication_scope = publication
            logs.bind(publication_id=publication)
        return view(*args, **kwargs)
    return wrapped  # type: ignore[return-value]


def scope() -> str | None:
    """The publication the current request is restricted to; None for the platform's token."""
    publication: str | None = g.get("publication_scope")
    return publication


require_platform_token = _requiring("EDGE_API_TOKEN")
"""The platform's token only: operator calls (edge nodes, forcing a plan)."""
def require_edge_token(view: F) -> F:
    """The edge agents' token only: the desired state and certificates with their private
    keys. With ``EDGE_AGENT_CLIENT_CERTS`` (the ``control_client_ca`` setting), also a client
    certificate the TLS server verified against that CA (mTLS): a leaked token alone reads
    no key."""
    checked = _requiring("EDGE_EDGE_TOKEN")(view)

    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if current_app.config.get("EDGE_AGENT_CLIENT_CERTS") and \
                request.environ.get("SSL_CLIENT_VERIFY") != "SUCCESS":
            return api_error("a client certificate from the agents' CA is required", 403,
                             "client_certificate_required")
        return checked(*args, **kwargs)
    return wrapped  # type: ignore[return-value]
