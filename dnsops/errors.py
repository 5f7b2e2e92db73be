"""Errors of the DNS part. The publisher API answers each with its ``status`` and message, as it
does the domains part's own errors."""
from __future__ import annotations

from kit.errors import EdgeRouterError


class DnsError(EdgeRouterError):
    """Root of the DNS part's errors (hostnames, registrars)."""

    status = 400


class InvalidHostname(DnsError):
    def __init__(self, hostname: object, reason: str) -> None:
        super().__init__(f"{hostname!r} cannot be connected: {reason}")
        self.hostname = hostname
        self.reason = reason
