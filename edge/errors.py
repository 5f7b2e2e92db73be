"""The root of the edge part's errors (HAProxy, plans, rendering, the agent, sign-on)."""
from __future__ import annotations

from kit.errors import EdgeRouterError


class EdgeError(EdgeRouterError):
    """Root of the edge errors."""
