"""What the app factory hands each blueprint, looked up by type so mypy sees the real class.

``admin_app.create_app`` calls ``provide(app, domains, lifecycle, ...)`` once; a view calls
``use(DomainService)``. A part names only its own classes (or the kit's), so no part has to
know the object that wires them all.
"""
from __future__ import annotations

import re
from typing import Any, TypeVar, cast

from flask import Flask, Response, current_app, jsonify, request
from flask.json.provider import DefaultJSONProvider

T = TypeVar("T")
_EXTENSION = "edge.provided"
MAX_JSON_DEPTH = 32
"""Far more than any body our APIs take, far below what Python's parser can recurse into."""
_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


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
    error shape (``{"error": ...}``) before any view sees it."""
    app.json = BoundedJSONProvider(app)

    @app.before_request
    def refuse_deep_json() -> tuple[Response, int] | None:
        if request.is_json and json_too_deep(request.get_data(cache=True)):
            return jsonify(error=f"the JSON body nests deeper than {MAX_JSON_DEPTH} levels"), 400
        return None
