"""What the app factory hands each blueprint, looked up by type so mypy sees the real class.

``admin_app.create_app`` calls ``provide(app, domains, lifecycle, ...)`` once; a view calls
``use(DomainService)``. A part names only its own classes (or the kit's), so no part has to
know the object that wires them all.
"""
from __future__ import annotations

from typing import Any, TypeVar, cast

from flask import Flask, current_app

T = TypeVar("T")
_EXTENSION = "edge.provided"


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
