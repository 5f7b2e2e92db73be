"""The desired state of an edge node as plain data, with a content version.

On the wire a route names its certificate by SHA-256 only (``RouteRef``); an agent fetches
the PEM of a certificate it does not serve yet, so unchanged certificates never travel again.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from typing import Any


def fingerprint(pem: str) -> str:
    return hashlib.sha256(pem.encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class RouteRef:
    hostname: str
    publication_id: str
    cert_sha256: str


@dataclasses.dataclass(frozen=True)
class Route:
    hostname: str
    publication_id: str
    pem: str = dataclasses.field(repr=False)
    """Certificate chain followed by its private key: the file HAProxy loads."""

    @functools.cached_property
    def ref(self) -> RouteRef:
        return RouteRef(self.hostname, self.publication_id, fingerprint(self.pem))


@dataclasses.dataclass(frozen=True)
class Redirect:
    """A hot short link HAProxy answers by itself: ``host/slug`` -> ``code`` ``target``."""

    host: str
    slug: str
    code: int
    target: str

    @property
    def key(self) -> str:
        return f"{self.host}/{self.slug}"

    @property
    def value(self) -> str:
        # "|" separates code and target in the map; spaces are refused by the link rules.
        return f"{self.code}|{self.target.replace('|', '%7C')}"


def version_of(refs: list[RouteRef], app_servers: tuple[str, ...],
               control_servers: tuple[str, ...],
               redirects: tuple[Redirect, ...] = (), sso_keys: tuple[str, ...] = (),
               short_domains: tuple[str, ...] = (),
               shortlink_servers: tuple[str, ...] = ()) -> str:
    body: dict[str, Any] = {
        "routes": [dataclasses.astuple(r) for r in sorted(refs, key=lambda r: r.hostname)],
        "app_servers": list(app_servers), "control_servers": list(control_servers)}
    if redirects:
        body["redirects"] = sorted(dataclasses.astuple(r) for r in redirects)
    if sso_keys:
        body["sso_keys"] = list(sso_keys)
    if short_domains:  # only when set, so states without short links keep their version
        body["short_domains"] = sorted(short_domains)
        body["shortlink_servers"] = list(shortlink_servers)
    return hashlib.sha256(json.dumps(body).encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class DesiredState:
    routes: tuple[Route, ...]
    app_servers: tuple[str, ...]
    control_servers: tuple[str, ...]
    redirects: tuple[Redirect, ...] = ()
    sso_keys: tuple[str, ...] = ()
    """Public keys (PEM) the edge verifies SSO session cookies with; empty: no SSO."""
    short_domains: tuple[str, ...] = ()
    """Hosts served by the short-link redirect app (``shortlink_servers``), not the app fleet."""
    shortlink_servers: tuple[str, ...] = ()

    @functools.cached_property
    def version(self) -> str:
        return version_of([r.ref for r in self.routes], self.app_servers, self.control_servers,
                          self.redirects, self.sso_keys, self.short_domains,
                          self.shortlink_servers)

    def summary(self) -> dict[str, Any]:
        """The wire form without private keys: routes name their certificate by fingerprint."""
        return {"version": self.version,
                "routes": [dataclasses.asdict(r.ref)
                           for r in sorted(self.routes, key=lambda r: r.hostname)],
                "app_servers": list(self.app_servers),
                "control_servers": list(self.control_servers),
                "short_domains": sorted(self.short_domains),
                "shortlink_servers": list(self.shortlink_servers)}
