"""What the short-link part refuses, each with the HTTP status the API answers it with."""
from __future__ import annotations

from kit.errors import EdgeRouterError


class ShortlinkError(EdgeRouterError):
    """Root of the short-link errors; ``status`` is the HTTP answer the API gives."""

    status = 400


class InvalidLink(ShortlinkError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class SlugTaken(ShortlinkError):
    status = 409


class LinkNotFound(ShortlinkError):
    status = 404


class NotYours(ShortlinkError):
    status = 403


class LinkBusy(ShortlinkError):
    """Edits won every attempt of a delete: the client asks again."""

    status = 409
