"""The root of the certs part's errors (issuance, rate budgets, the CA's 429s)."""
from __future__ import annotations

from kit.errors import EdgeRouterError


class CertsError(EdgeRouterError):
    """Root of the certs errors."""
