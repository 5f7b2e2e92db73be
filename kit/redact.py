"""Secrets never reach a repr, so never a log line or a traceback's locals either.

A dataclass marks its secret fields with ``metadata=SECRET`` and sets
``__repr__ = redacted_repr``: the repr then names every field, and shows a secret only as
``'***'`` (or its empty value, so a missing secret is still visible while debugging).
"""
from __future__ import annotations

import dataclasses
from typing import Any

SECRET = {"secret": True}
MASK = "'***'"


def redacted_repr(self: Any) -> str:
    shown = []
    for field in dataclasses.fields(self):
        if not field.repr:
            continue
        value = getattr(self, field.name)
        secret = field.metadata.get("secret") and value
        shown.append(f"{field.name}={MASK if secret else repr(value)}")
    return f"{type(self).__name__}({', '.join(shown)})"
