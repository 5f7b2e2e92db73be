"""What a route may carry besides its publication: a redirect to another domain, an origin
pool, metadata headers for the app. The domains part writes them, the edge serves them; both
hold them to these rules, as the values end up in HAProxy map files and request headers.

On the wire the extras are one canonical JSON text (``encode``), so a route compares, hashes
and travels as plain strings: ``{"meta": {"plan": "pro"}, "pool": "canary",
"redirect": {"code": 308, "to": "example.org"}}``; a route without extras has ``""``.
"""
from __future__ import annotations

import json
import re
from typing import Any

REDIRECT_CODES = (301, 302, 307, 308)
DEFAULT_REDIRECT_CODE = 308
POOL_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
"""An origin pool's name (it becomes part of a backend name in haproxy.cfg)."""
META_KEY = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
"""A metadata key: the end of a header name (``X-Edge-Meta-<key>``); lowercase, as header names
do not tell case apart, and no ``_``, which the edge strips from every header."""
META_VALUE = re.compile(r"[A-Za-z0-9._:/@+=,~-]{1,128}")
"""A metadata value: a header value and a map-file word, so no spaces, quotes or controls."""
MAX_META = 8
META_HEADER = "X-Edge-Meta-"


class ExtrasError(ValueError):
    """Extras that break the rules; ``field`` names the one at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def meta_problem(metadata: dict[str, Any]) -> ExtrasError | None:
    """Why ``metadata`` may not be carried, or None."""
    if len(metadata) > MAX_META:
        return ExtrasError("metadata", f"at most {MAX_META} metadata pairs, not {len(metadata)}")
    for key, value in metadata.items():
        if not isinstance(key, str) or not META_KEY.fullmatch(key):
            return ExtrasError(f"metadata.{key}", "a metadata key is 1-32 lowercase letters, "
                               "digits or '-', starting with a letter or digit")
        if not isinstance(value, str) or not META_VALUE.fullmatch(value):
            return ExtrasError(f"metadata.{key}", "a metadata value is 1-128 letters, "
                               "digits or . _ : / @ + = , ~ - (no spaces)")
    return None


def encode(redirect_to: str | None = None, redirect_code: int | None = None,
           pool: str | None = None, meta: dict[str, str] | None = None) -> str:
    """The canonical text of these extras ("" when there are none)."""
    doc: dict[str, Any] = {}
    if redirect_to:
        doc["redirect"] = {"to": redirect_to, "code": int(redirect_code or DEFAULT_REDIRECT_CODE)}
    if pool:
        doc["pool"] = pool
    if meta:
        doc["meta"] = dict(sorted(meta.items()))
    return json.dumps(doc, sort_keys=True, separators=(",", ":")) if doc else ""


def decode(text: str) -> dict[str, Any]:
    """The extras of a route as a dict (``{}`` for ""); raises ExtrasError if malformed."""
    if not text:
        return {}
    try:
        doc = json.loads(text)
    except ValueError:
        raise ExtrasError("extras", "route extras are not JSON") from None
    if not isinstance(doc, dict) or set(doc) - {"redirect", "pool", "meta"}:
        raise ExtrasError("extras", "route extras hold unknown fields")
    redirect = doc.get("redirect")
    if redirect is not None and (not isinstance(redirect, dict)
                                 or redirect.get("code") not in REDIRECT_CODES
                                 or not isinstance(redirect.get("to"), str)):
        raise ExtrasError("redirect", "a redirect needs a target and a code of 301/302/307/308")
    if redirect is not None and set(redirect) - {"to", "code"}:
        raise ExtrasError("redirect", "a redirect holds only a target and a code")
    pool = doc.get("pool")
    if pool is not None and (not isinstance(pool, str) or not POOL_NAME.fullmatch(pool)):
        raise ExtrasError("pool", f"origin pool name {pool!r} is not a valid name")
    meta = doc.get("meta")
    if meta is not None:
        problem = meta_problem(meta) if isinstance(meta, dict) else \
            ExtrasError("metadata", "metadata is an object")
        if problem is not None:
            raise problem
    return doc


def canonical(doc: dict[str, Any]) -> str:
    """The canonical text (``encode``) of extras ``decode`` returned. Extras equal to their
    canonical text are ASCII (``json.dumps`` escapes the rest) on one line: nothing in them
    that ``str.splitlines`` splits on, in a file of one route a line."""
    redirect = doc.get("redirect") or {}
    return encode(redirect.get("to"), redirect.get("code"), doc.get("pool"), doc.get("meta"))
