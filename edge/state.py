"""The desired state of an edge node as plain data, with a content version.

On the wire a route names its certificate by SHA-256 only (``RouteRef``); an agent fetches
the PEM of a certificate it does not serve yet, so unchanged certificates never travel again.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from typing import Any, Iterable


def fingerprint(pem: str) -> str:
    return hashlib.sha256(pem.encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class RouteRef:
    hostname: str
    publication_id: str
    cert_sha256: str
    extras: str = ""
    """What the edge does besides routing (``edge/extras.py``): canonical JSON, or empty."""


@dataclasses.dataclass(frozen=True)
class Route:
    hostname: str
    publication_id: str
    pem: str = dataclasses.field(repr=False)
    """Certificate chain followed by its private key: the file HAProxy loads."""
    extras: str = ""
    """A redirect, an origin pool, metadata headers (``edge/extras.py``); empty: none."""

    @functools.cached_property
    def ref(self) -> RouteRef:
        return RouteRef(self.hostname, self.publication_id, fingerprint(self.pem), self.extras)


@dataclasses.dataclass(frozen=True)
class Redirect:
    """A plain short link HAProxy answers by itself: ``host/slug`` -> ``code`` ``target``,
    until ``expires`` (epoch seconds; 0: never), which HAProxy checks itself on each visit.
    ``devices``: empty, or the targets for iOS, Android and desktop (each filled with
    ``target`` where the link has none), which HAProxy picks by User-Agent."""

    host: str
    slug: str
    code: int
    target: str
    expires: int = 0
    devices: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.host}/{self.slug}"

    @property
    def value(self) -> str:
        # "|" separates the fields in the map: "code|expires|target", or with device targets
        # "d<code>|expires|target|ios|android|desktop" (the "d" costs a plain link one check in
        # HAProxy); spaces are refused by the link rules.
        return "|".join([f"d{self.code}" if self.devices else str(self.code), str(self.expires)]
                        + [url.replace("|", "%7C") for url in (self.target, *self.devices)])

    @classmethod
    def from_map(cls, key: str, value: str) -> "Redirect":
        host, _, slug = key.partition("/")
        code, expires, *targets = value.split("|")
        return cls(host, slug, int(code.removeprefix("d")), targets[0], int(expires),
                   tuple(targets[1:]))


DIGEST_MODULUS = 2 ** 128


def route_hash(ref: RouteRef) -> int:
    """One route's share of the routes digest."""
    fields = [ref.hostname, ref.publication_id, ref.cert_sha256]
    body = json.dumps(fields + [ref.extras] if ref.extras else fields).encode()
    return int(hashlib.sha256(body).hexdigest()[:32], 16)


def redirect_hash(key: str, value: str) -> int:
    """One redirect's share of the redirects digest (kept like the routes digest)."""
    return int(hashlib.sha256(f"{key} {value}".encode()).hexdigest()[:32], 16)


def redirects_digest(redirects: Iterable[Redirect]) -> int:
    return sum(redirect_hash(r.key, r.value) for r in redirects) % DIGEST_MODULUS


def routes_digest(refs: Iterable[RouteRef]) -> int:
    """A digest of a set of routes that one route's change updates in O(1) (a sum of the
    routes' hashes modulo 2**128: order does not matter, and removing a route subtracts its
    hash), so the control service keeps it without reading every route."""
    return sum(route_hash(ref) for ref in refs) % DIGEST_MODULUS


@dataclasses.dataclass(frozen=True)
class EdgeConfig:
    """Everything in the desired state but the routes and redirects: small, and the same on
    every node."""

    app_servers: tuple[str, ...]
    control_servers: tuple[str, ...]
    sso_keys: tuple[str, ...] = ()
    short_domains: tuple[str, ...] = ()
    shortlink_servers: tuple[str, ...] = ()
    origin_pools: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """Named server lists a route may send its requests to instead of ``app_servers``."""

    def to_json(self) -> dict[str, Any]:
        return {"app_servers": list(self.app_servers),
                "control_servers": list(self.control_servers),
                "sso_keys": list(self.sso_keys),
                "short_domains": sorted(self.short_domains),
                "shortlink_servers": list(self.shortlink_servers),
                **pools_json(self.origin_pools)}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "EdgeConfig":
        return cls(tuple(doc.get("app_servers") or ()), tuple(doc.get("control_servers") or ()),
                   tuple(doc.get("sso_keys") or ()), tuple(doc.get("short_domains") or ()),
                   tuple(doc.get("shortlink_servers") or ()),
                   pools_of(doc.get("origin_pools")))


def pools_json(pools: tuple[tuple[str, tuple[str, ...]], ...]) -> dict[str, Any]:
    """Only when there are pools, so states without them keep their wire form."""
    return {"origin_pools": {name: list(servers) for name, servers in pools}} if pools else {}


def pools_of(pools: dict[str, list[str]] | None) -> tuple[tuple[str, tuple[str, ...]], ...]:
    return tuple(sorted((name, tuple(servers)) for name, servers in (pools or {}).items()))


def state_version(digest: int, config: EdgeConfig, redirects: int = 0) -> str:
    """The content version of a desired state: its routes digest, its redirects digest and
    its config."""
    body: dict[str, Any] = {"routes": f"{digest:032x}", "app_servers": list(config.app_servers),
                            "control_servers": list(config.control_servers)}
    if redirects:
        body["redirects"] = f"{redirects:032x}"
    if config.sso_keys:
        body["sso_keys"] = list(config.sso_keys)
    if config.short_domains:  # only when set, so states without short links keep their version
        body["short_domains"] = sorted(config.short_domains)
        body["shortlink_servers"] = list(config.shortlink_servers)
    if config.origin_pools:
        body["origin_pools"] = [[name, list(servers)] for name, servers in config.origin_pools]
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
    origin_pools: tuple[tuple[str, tuple[str, ...]], ...] = ()
    known_version: str | None = dataclasses.field(default=None, compare=False, repr=False)
    """The version, when the caller checked it already (an agent keeps the routes digest by
    each change): then :attr:`version` hashes no route. A copy with other routes or config
    (``dataclasses.replace``) must set it to None."""

    @functools.cached_property
    def config(self) -> EdgeConfig:
        return EdgeConfig(self.app_servers, self.control_servers, self.sso_keys,
                          self.short_domains, self.shortlink_servers, self.origin_pools)

    @functools.cached_property
    def version(self) -> str:
        return self.known_version or state_version(routes_digest(r.ref for r in self.routes),
                                                   self.config,
                                                   redirects_digest(self.redirects))

    def summary(self) -> dict[str, Any]:
        """The wire form without private keys: routes name their certificate by fingerprint."""
        return {"version": self.version,
                "routes": [dataclasses.asdict(r.ref)
                           for r in sorted(self.routes, key=lambda r: r.hostname)],
                "app_servers": list(self.app_servers),
                "control_servers": list(self.control_servers),
                "short_domains": sorted(self.short_domains),
                "shortlink_servers": list(self.shortlink_servers),
                **pools_json(self.origin_pools)}


@dataclasses.dataclass(frozen=True)
class StateDelta:
    """Changes that take a node from the state ``base`` (the version it serves) to
    ``version``: only the routes and redirects that changed (None: removed), and the config."""

    base: str
    version: str
    config: EdgeConfig
    routes: dict[str, Route | None]
    redirects: dict[str, Redirect | None]
