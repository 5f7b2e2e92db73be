"""Errors of the domains part; the API maps each to a 4xx with its message."""
from __future__ import annotations

from dnsops.errors import DnsError, InvalidHostname
from kit.errors import EdgeRouterError

__all__ = ["DnsError", "InvalidHostname", "DomainError", "HostnameTaken", "DomainNotFound",
           "TooManyPending", "PUBLISHER_ERRORS"]


class DomainError(EdgeRouterError):
    """Root of the domains errors."""

    status = 400


class HostnameTaken(DomainError):
    status = 409

    def __init__(self, hostname: str) -> None:
        super().__init__(f"{hostname} is already connected to another publication")
        self.hostname = hostname


class DomainNotFound(DomainError):
    status = 404

    def __init__(self, hostname: str) -> None:
        super().__init__(f"{hostname} is not connected")
        self.hostname = hostname


class TooManyPending(DomainError):
    status = 429

    def __init__(self, publication_id: str, limit: int) -> None:
        super().__init__(f"publication {publication_id} already has {limit} domains waiting for "
                         "their DNS records; finish or remove one of them first")
        self.publication_id = publication_id


PUBLISHER_ERRORS = (DomainError, DnsError)
"""What a publisher-facing view answers with its status and message."""
