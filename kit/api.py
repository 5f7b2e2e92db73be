"""The /api/v1 contract: request and response models (pydantic v2) attached to the views that
take them, and the OpenAPI 3.1 document assembled from them (``GET /api/v1/openapi.json``).

A view declares what it takes and answers with ``@operation(...)``; the decorator validates the
JSON body (``body=``) and the query string (``query=``) before the view runs and passes the
parsed models as keyword arguments of the same names. A bad input is a 400 in the one error
shape every API answer shares, ``{"error", "field"?, "code"}`` (``ErrorBody``).

Why our own small assembly rather than spectree or flask-openapi3: both want to own the
blueprint or the app (APIBlueprint, their own auth and error hooks), while ours are plain Flask
blueprints wrapped in our auth decorators and mounted by one app factory; pydantic emits JSON
Schema 2020-12, which is what OpenAPI 3.1 uses, so the document is a walk over the URL map.
"""
from __future__ import annotations

import functools
import re
from typing import Any, Callable, Mapping, TypeVar

from flask import Flask, Response, jsonify, request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from werkzeug.exceptions import HTTPException

from kit.web import api_error

F = TypeVar("F", bound=Callable[..., Any])
_OPERATION = "__api_operation__"
API_PREFIX = "/api/v1"
VERSION_HEADER = "Api-Version"
ANSWER_VERSIONS = ("1", "2")
"""The answer shapes a versioned operation speaks (``Api-Version`` request header; none: 1, what
v0.1.0 clients read). 2: short links carry ``short_url`` and their times are ISO 8601."""
CONTRACT_PATH = API_PREFIX + "/openapi.json"
SECURITY: dict[str, list[dict[str, list[str]]]] = {"platform": [{"platform": []}], "edge": [{"edge": []}],
            "platform_or_publication": [{"platform": []}, {"publication": []}]}


class RequestModel(BaseModel):
    """A request body: unknown fields and wrong types are refused (no coercion of "5" to 5)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class QueryModel(BaseModel):
    """A query string: every value arrives as text, so numbers are parsed from it."""

    model_config = ConfigDict(extra="forbid")


class PageQuery(QueryModel):
    """A list's paging: at most ``limit`` items after ``cursor`` (the last answer's
    ``next_cursor``)."""

    limit: int = Field(100, ge=1, le=500)
    cursor: str | None = Field(None, max_length=2048)


class ErrorBody(BaseModel):
    """Every error answer of the API."""

    error: str
    """A sentence for a person."""
    field: str | None = None
    """The input at fault, when one is (``hostname``, ``visits.a/b``)."""
    code: str
    """Stable, for programs: invalid, unknown_field, invalid_type, too_long, too_deep,
    unauthorized, forbidden, not_found, method_not_allowed, conflict, too_large,
    too_many_requests, unavailable."""


_CODES = {"extra_forbidden": "unknown_field", "string_too_long": "too_long",
          "too_long": "too_long", "missing": "missing"}


def _code(kind: str) -> str:
    if kind in _CODES:
        return _CODES[kind]
    if kind.startswith("invalid_"):  # ours: invalid_hostname, invalid_target...
        return kind
    if kind.endswith("_type") or kind.endswith("_parsing") or kind == "model_type":
        return "invalid_type"
    return "invalid"


def validation_error(exc: ValidationError, where: str = "") -> tuple[Response, int]:
    """The first problem pydantic found, as a 400 naming the field."""
    first = exc.errors(include_url=False)[0]
    field = ".".join(str(part) for part in first["loc"]) or None
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "unknown field"
    text = f"{field}: {message}" if field else f"{where or 'body'}: {message}"
    return api_error(text, 400, _code(first["type"]), field=field)


def answer_version() -> str:
    """The answer shape this request asked for (``Api-Version``), "1" when it names none."""
    return request.headers.get(VERSION_HEADER, "").strip() or ANSWER_VERSIONS[0]


def operation(*, summary: str, auth: str | None, responses: Mapping[int, type[BaseModel] | None],
              body: type[RequestModel] | None = None, query: type[QueryModel] | None = None,
              context: Callable[[], dict[str, Any]] | None = None,
              media: Mapping[int, tuple[str, ...]] | None = None,
              versioned: bool = False) -> Callable[[F], F]:
    """Declare a view's contract. ``responses``: status -> the model of its JSON body (None: no
    body); every error status answers ``ErrorBody``. ``context``: what the models' validators
    need at request time (the hostname rules' platform domains, the short domains), passed to
    ``model_validate``. ``media``: a status answered in another type than JSON (a QR code).
    ``versioned``: the answer's shape follows the ``Api-Version`` header (see
    :func:`answer_version`); an unknown version is a 400."""

    def decorator(view: F) -> F:
        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if versioned and answer_version() not in ANSWER_VERSIONS:
                return api_error(f"{VERSION_HEADER}: one of {', '.join(ANSWER_VERSIONS)}", 400,
                                 "invalid", field=VERSION_HEADER)
            extra = context() if context else None
            if query is not None:
                try:
                    kwargs["query"] = query.model_validate(request.args.to_dict(), context=extra)
                except ValidationError as exc:
                    return validation_error(exc, "query")
            if body is not None:
                data = request.get_json(silent=True)
                if not isinstance(data, dict):
                    return api_error("send a JSON object as the body", 400, "invalid_type")
                try:
                    kwargs["body"] = body.model_validate(data, context=extra)
                except ValidationError as exc:
                    return validation_error(exc)
            return view(*args, **kwargs)

        setattr(wrapped, _OPERATION, {"summary": summary, "auth": auth, "body": body,
                                      "query": query, "responses": dict(responses),
                                      "media": dict(media or {}), "doc": view.__doc__,
                                      "versioned": versioned})
        return wrapped  # type: ignore[return-value]
    return decorator


PATH_EXAMPLES = {"hostname": "news.example.org", "domain": "acme.link", "slug": "spring",
                 "kind": "svg", "node_id": "edge-1"}
_PARAM = re.compile(r"<(?:[a-z]+:)?([a-z_]+)>")


def _schema(model: type[BaseModel], definitions: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    definitions.update(schema.pop("$defs", {}))
    definitions[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _query_parameters(model: type[QueryModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema()
    required = set(schema.get("required", []))
    return [{"name": name, "in": "query", "required": name in required, "schema": prop}
            for name, prop in schema.get("properties", {}).items()]


_VERSION_PARAMETER = {
    "name": VERSION_HEADER, "in": "header", "required": False,
    "description": "The answer's shape: 1 (the default, as v0.1.0 answered) or 2 (short links "
                   "with short_url, times in ISO 8601)",
    "schema": {"type": "string", "enum": list(ANSWER_VERSIONS), "default": ANSWER_VERSIONS[0]}}


def openapi_document(app: Flask, title: str = "edge-router publisher API",
                     version: str = "1") -> dict[str, Any]:
    """The OpenAPI 3.1 document of every view in ``app`` declared with ``@operation``."""
    definitions: dict[str, Any] = {}
    error_ref = _schema(ErrorBody, definitions)
    paths: dict[str, dict[str, Any]] = {}
    for rule in app.url_map.iter_rules():
        spec = getattr(app.view_functions.get(rule.endpoint), _OPERATION, None)
        if spec is None:
            continue
        path = _PARAM.sub(r"{\1}", rule.rule)
        params = [{"name": name, "in": "path", "required": True,
                   "schema": {"type": "string", "minLength": 1, "pattern": "^[^/.][^/]*$"},
                   **({"example": PATH_EXAMPLES[name]} if name in PATH_EXAMPLES else {})}
                  for name in _PARAM.findall(rule.rule)]
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            op: dict[str, Any] = {"summary": spec["summary"], "operationId": rule.endpoint,
                                  "responses": {}}
            if spec["doc"]:
                op["description"] = " ".join(spec["doc"].split())
            if spec["auth"]:
                op["security"] = SECURITY[spec["auth"]]
            parameters = params + (_query_parameters(spec["query"]) if spec["query"] else [])
            parameters += [_VERSION_PARAMETER] if spec["versioned"] else []
            if parameters:
                op["parameters"] = parameters
            if spec["body"]:
                op["requestBody"] = {"required": True, "content": {
                    "application/json": {"schema": _schema(spec["body"], definitions)}}}
            op["responses"] = _responses(spec, bool(params), definitions, error_ref)
            paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version,
                 "description": "Errors answer {\"error\", \"field\"?, \"code\"} (ErrorBody)."},
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": dict(sorted(definitions.items())), "securitySchemes": {
            "platform": {"type": "http", "scheme": "bearer",
                         "description": "The platform's API token: every publication"},
            "publication": {"type": "http", "scheme": "bearer",
                            "description": "A publication's token (ept_...): its own data only"},
            "edge": {"type": "http", "scheme": "bearer",
                     "description": "The edge agents' token"}}},
    }


def _responses(spec: dict[str, Any], has_params: bool, definitions: dict[str, Any],
               error_ref: dict[str, Any]) -> dict[str, Any]:
    """An operation's answers: those it declares, and the errors its inputs can bring."""
    statuses = dict(spec["responses"])
    errors = [400] if spec["body"] or spec["query"] or has_params or spec["versioned"] else []
    errors += [401] if spec["auth"] else []
    errors += [413] if spec["body"] else []
    errors += [503]
    for status in errors:
        statuses.setdefault(status, ErrorBody)
    responses: dict[str, Any] = {}
    for status, model in sorted(statuses.items()):
        model = ErrorBody if status >= 400 else model
        answer: dict[str, Any] = {"description": _REASONS.get(status, "answer")}
        if status in spec["media"]:  # JSON beside another type keeps its model
            answer["content"] = {kind: {"schema": _schema(model, definitions)
                                        if kind == "application/json" and model else {}}
                                 for kind in spec["media"][status]}
        elif model is ErrorBody:
            answer["content"] = {"application/json": {"schema": error_ref}}
        elif model is not None:
            answer["content"] = {"application/json": {"schema": _schema(model, definitions)}}
        responses[str(status)] = answer
    return responses


_REASONS = {200: "OK", 201: "Created", 304: "Not modified", 400: "Bad input", 401: "No valid "
            "token", 403: "Not this token's publication", 404: "Not found (or not yours)",
            409: "Conflict", 413: "Body larger than 1 MiB",
            429: "Too many pending domains, or calls (see Retry-After)",
            503: "The store is unavailable"}


def serve_contract(app: Flask) -> None:
    """``GET /api/v1/openapi.json`` (no token: the contract is public), and JSON errors in the
    shared shape for whatever Flask itself answers under /api/v1 (no route, wrong method, a
    body over MAX_CONTENT_LENGTH)."""
    cached: dict[str, Any] = {}

    def contract() -> Response:
        if "doc" not in cached:
            cached["doc"] = openapi_document(app)
        return jsonify(cached["doc"])

    app.add_url_rule(CONTRACT_PATH, "openapi_contract", contract, methods=["GET"])

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response | tuple[Response, int] | HTTPException:
        if not request.path.startswith(API_PREFIX + "/") or exc.code is None:
            return exc
        code = {404: "not_found", 405: "method_not_allowed",
                413: "too_large"}.get(exc.code, "invalid")
        return api_error(exc.description or exc.name, exc.code, code)
