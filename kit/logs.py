"""Logging for every ``edgectl`` process: JSON lines for files and log shippers, text for a
terminal, and the context of the work at hand on every line.

The context (``request_id``, ``hostname``, ``publication_id``) lives in a contextvar: the
control service binds it per request (``kit/web.py``), the worker per domain step
(``domains/lifecycle.py``); :class:`ContextFilter` copies it onto each record, so a line logged
anywhere below (the certs part, boto3, ...) carries it without being passed along.

JSON lines come from python-json-logger: it is a formatter for the standard ``logging``
module, which every library we run already logs through (werkzeug, cheroot, waitress, acme,
botocore), so their lines are JSON too with no second logging system to bridge.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import re
import sys
import uuid
from datetime import datetime, timezone
from typing import IO, Any, Iterator

from pythonjsonlogger.json import JsonFormatter

FORMATS = ("auto", "json", "text")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
CONTEXT_FIELDS = ("request_id", "hostname", "publication_id")

_context: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("edge_log_context",
                                                                          default={})
_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-Z\\-_]|[\x00-\x08\x0b-\x1f\x7f-\x9f]")
"""ANSI/VT100 sequences (werkzeug colours its access lines) and control characters but tab and
newline (JSON escapes a newline; the text format indents the lines after the first), the 8-bit
ones (C1, which some terminals obey) included."""
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
"""A request id we accept from a client or the edge: printable, no spaces, bounded. HAProxy's
``unique-id-format`` gives hex, ``:`` and ``_`` (e.g. ``7F000001:D1A2_7F000001:20FB_...``)."""


def strip_escapes(text: str) -> str:
    """``text`` without terminal escape sequences or control characters (tab and newline
    stay)."""
    return _ESCAPES.sub("", text)


def request_id_from(header: str | None) -> str:
    """The id to log a request under: the one the edge (or an API client) sent if it is a
    plain token of at most 128 characters, else a new one. A client-supplied id is only a
    correlation id: it is never trusted for anything but finding log lines."""
    if header and _REQUEST_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex


def _clean(fields: dict[str, object]) -> dict[str, str]:
    """Context values as bounded text without escapes (a hostname from a URL is a client's)."""
    return {name: strip_escapes(str(value))[:256] for name, value in fields.items()
            if value is not None}


def context() -> dict[str, str]:
    """The fields bound now (a copy)."""
    return dict(_context.get())


def bind(**fields: object) -> None:
    """Add fields to the current context (None values are skipped), e.g. once a view knows
    the publication of the domain it works on. The context ends with the request or step
    that set it (:func:`bound`, :func:`replace`)."""
    new = _clean(fields)
    if new:
        _context.set({**_context.get(), **new})


def replace(fields: dict[str, object]) -> contextvars.Token[dict[str, str]]:
    """Start a new context with exactly ``fields`` (a request begins); reset it with the token."""
    return _context.set(_clean(fields))


def reset(token: contextvars.Token[dict[str, str]]) -> None:
    _context.reset(token)


@contextlib.contextmanager
def bound(**fields: object) -> Iterator[None]:
    """The fields on every line logged in the block (in this thread); restored afterwards."""
    token = _context.set({**_context.get(), **_clean(fields)})
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    """Copies the bound context onto each record; a field given with ``extra=`` wins."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _context.get().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonLineFormatter(JsonFormatter):
    """One JSON object a line: ``ts``, ``level``, ``event``, ``logger``, the context fields
    where known, any other ``extra=`` fields, and ``exc_info`` with a traceback."""

    def __init__(self) -> None:
        super().__init__(json_ensure_ascii=False)

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord,
                   message_dict: dict[str, Any]) -> None:
        # The standard fields first and in a fixed order (jq and eyes find them at once).
        log_data["ts"] = _timestamp(record)
        log_data["level"] = record.levelname
        log_data["event"] = strip_escapes(record.getMessage())
        log_data["logger"] = record.name
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                log_data[name] = value
        super().add_fields(log_data, record, message_dict)
        log_data.pop("message", None)  # it is "event" here
        for name in ("exc_info", "stack_info"):
            if isinstance(log_data.get(name), str):
                log_data[name] = strip_escapes(log_data[name])


class TextFormatter(logging.Formatter):
    """``<time> <LEVEL> <logger>: <event> [request_id=... hostname=...]`` for a terminal;
    never an escape sequence; lines after the first of an event are indented, so a message
    (a request path, say) cannot pass for a line of its own."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = strip_escapes(record.message).replace("\n", "\n    ")
        line = super().formatMessage(record)
        fields = " ".join(f"{name}={getattr(record, name)}" for name in CONTEXT_FIELDS
                          if getattr(record, name, None) is not None)
        return f"{line} [{fields}]" if fields else line


def resolve_format(log_format: str, stream: IO[str] | None = None) -> str:
    """``auto``: text on a terminal, JSON otherwise (a file, a pipe, journald)."""
    if log_format != "auto":
        return log_format
    stream = stream if stream is not None else sys.stderr
    try:
        return "text" if stream.isatty() else "json"
    except (AttributeError, ValueError):
        return "json"


def configure(log_format: str = "auto", level: str = "INFO",
              stream: IO[str] | None = None) -> str:
    """Route every logger of the process to one handler on ``stream`` (stderr) in
    ``log_format``; returns the format chosen. Called again, it replaces the handler."""
    if log_format not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}")
    chosen = resolve_format(log_format, stream)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonLineFormatter() if chosen == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Where boto3 found its credentials is said on every start of every command: not news.
    logging.getLogger("botocore.credentials").setLevel(
        max(logging.WARNING, logging.getLevelName(level.upper())))
    return chosen
