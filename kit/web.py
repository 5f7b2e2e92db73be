"""What the app factory hands each blueprint, looked up by type so mypy sees the real class.

``edgectl.app.create_app`` calls ``provide(app, domains, lifecycle, ...)`` once; a view calls
``use(DomainService)``. A part names only its own classes (or the kit's), so no part has to
know the object that wires them all.
"""
from __future__ import annotations

import logging
import re
import time
from typing import Any, TypeVar, cast

from flask import Flask, Response, current_app, g, jsonify, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.routing import Rule

from kit import logs

T = TypeVar("T")
_EXTENSION = "edge.provided"
MAX_JSON_DEPTH = 32
"""Far more than any body our APIs take, far below what Python's parser can recurse into."""
_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')
REQUEST_ID_HEADER = "X-Request-ID"
access_log = logging.getLogger("edgectl.access")


class LazyRule(Rule):
    """A URL rule whose builders (the two functions werkzeug compiles a rule for ``url_for``)
    are compiled at its first URL built, not as the app is made: making the app (95 rules)
    took 0.053 CPU-s, now 0.012, paid by each process and test that makes one, and most rules
    never build a URL. An app sets it as its ``url_rule_class``."""

    def _compile_builder(self, append_unknown: bool = True) -> Any:
        def build_first(rule: Rule, **values: Any) -> Any:
            built = Rule._compile_builder(rule, append_unknown).__get__(rule, None)
            setattr(rule, "_build_unknown" if append_unknown else "_build", built)
            return built(**values)
        return build_first


def provide(app: Flask, *objects: Any) -> None:
    """Make each object available to views as ``use(type(object))``; None is skipped (an
    optional part that is off, e.g. single sign-on)."""
    provided: dict[type, Any] = app.extensions.setdefault(_EXTENSION, {})
    for found in objects:
        if found is not None:
            provided[type(found)] = found


def use(kind: type[T]) -> T:
    """In a request: the object of class ``kind`` the app was given."""
    return provided(current_app, kind)


def find(kind: type[T]) -> T | None:
    """In a request: the object of class ``kind``, or None when that optional part is off."""
    return cast("T | None", current_app.extensions.get(_EXTENSION, {}).get(kind))


def provided(app: Flask, kind: type[T]) -> T:
    """The object of class ``kind`` given to ``app``; a LookupError names a wiring mistake."""
    found = app.extensions.get(_EXTENSION, {}).get(kind)
    if found is None:
        raise LookupError(f"the app was not given a {kind.__name__}")
    return cast(T, found)


_STATUS_CODES = {400: "invalid", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                 405: "method_not_allowed", 409: "conflict", 413: "too_large",
                 429: "too_many_requests", 503: "unavailable"}


def api_error(message: str, status: int, code: str | None = None,
              field: str | None = None) -> tuple[Response, int]:
    """An API error in the one shape every /api/v1 answer shares: ``{"error", "field"?,
    "code"}`` (``code`` defaults from the status: ``not_found``, ``conflict``...)."""
    body: dict[str, Any] = {"error": message}
    if field is not None:
        body["field"] = field
    body["code"] = code or _STATUS_CODES.get(status, "invalid")
    return jsonify(body), status


def json_too_deep(data: str | bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether arrays and objects nest more than ``limit`` levels in ``data`` (strings
    skipped): one regular-expression pass, no parsing, cheap on any input."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    for match in _JSON_TOKENS.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > limit:
                return True
        elif token in "]}":
            depth -= 1
    return False


class BoundedJSONProvider(DefaultJSONProvider):
    """Flask's JSON, refusing deep nesting as malformed: Python's parser recurses, and 100,000
    levels (195 KiB) would raise RecursionError, a 500, where every API answers 400."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        if json_too_deep(s):
            raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None


def bound_json(app: Flask) -> None:
    """Every JSON body in ``app``: nested at most MAX_JSON_DEPTH levels, or a 400 in the APIs'
    error shape (``{"error", "code": "too_deep"}``) before any view sees it."""
    app.json = BoundedJSONProvider(app)

    @app.before_request
    def refuse_deep_json() -> tuple[Response, int] | None:
        if request.is_json and json_too_deep(request.get_data(cache=True)):
            return api_error(f"the JSON body nests deeper than {MAX_JSON_DEPTH} levels", 400,
                             "too_deep")
        return None


def _quiet(path: str, status: int) -> bool:
    """Requests that come every few seconds when all is well (health checks, scrapes, the
    agents' long polls and reports): logged at DEBUG, so INFO shows what changes things."""
    if path in ("/healthz", "/metrics"):
        return True
    return status < 400 and path.startswith(("/api/v1/edge/state", "/api/v1/edge/nodes/"))


def trace_requests(app: Flask) -> None:
    """Every request of ``app`` runs under a request id: HAProxy's (``X-Request-ID``, set by
    each edge frontend after deleting the client's) or, for a request straight from an API
    client, the client's own if it is a plain token (a correlation id, never trusted for
    anything else), else a new one. The id, and the hostname of a ``<hostname>`` URL, go on
    every log line of the request; views add the publication once they know it
    (``logs.bind``). The response carries the id back, and one access line is logged.

    Register it before other ``before_request`` hooks: one that answers early (a 400) stops
    the hooks after it."""

    @app.before_request
    def bind_request() -> None:
        g.request_started = time.monotonic()
        g.request_id = logs.request_id_from(request.headers.get(REQUEST_ID_HEADER))
        hostname = (request.view_args or {}).get("hostname")
        g.log_context = logs.replace({"request_id": g.request_id})
        logs.bind(hostname=hostname.lower() if isinstance(hostname, str) else None)

    @app.after_request
    def log_request(response: Response) -> Response:
        request_id = g.get("request_id")
        if request_id is None:  # a hook before ours answered: no context was bound
            return response
        response.headers[REQUEST_ID_HEADER] = request_id
        elapsed = time.monotonic() - g.get("request_started", time.monotonic())
        path = logs.strip_escapes(request.path)  # a client's text
        access_log.log(logging.DEBUG if _quiet(path, response.status_code) else logging.INFO,
                       "%s %s %d", request.method, path, response.status_code,
                       extra={"method": request.method, "path": path,
                              "status": response.status_code,
                              "duration_ms": round(elapsed * 1000, 1)})
        return response

    @app.teardown_request
    def unbind_request(exc: BaseException | None) -> None:
        token = g.pop("log_context", None)
        if token is not None:
            try:
                logs.reset(token)
            except ValueError:  # set in another context (a test client quirk): start clean
                logs.replace({})
