"""The desired state of an edge node as plain data, with a content version."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from typing import Any


@dataclasses.dataclass(frozen=True)
class Route:
    hostname: str
    publication_id: str
    pem: str = dataclasses.field(repr=False)
    """Certificate chain followed by its private key: the file HAProxy loads."""


@dataclasses.dataclass(frozen=True)
class DesiredState:
    routes: tuple[Route, ...]
    app_servers: tuple[str, ...]
    control_servers: tuple[str, ...]

    @functools.cached_property
    def version(self) -> str:
        return hashlib.sha256(json.dumps(self._body(), sort_keys=True).encode()).hexdigest()[:16]

    def _body(self) -> dict[str, Any]:
        ordered = sorted(self.routes, key=lambda r: r.hostname)
        return {"routes": [{"hostname": r.hostname, "publication_id": r.publication_id,
                            "pem": r.pem} for r in ordered],
                "app_servers": list(self.app_servers),
                "control_servers": list(self.control_servers)}

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, **self._body()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "DesiredState":
        return cls(routes=tuple(Route(**r) for r in data["routes"]),
                   app_servers=tuple(data["app_servers"]),
                   control_servers=tuple(data["control_servers"]))
