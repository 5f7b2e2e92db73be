"""Which edge shard serves a hostname (docs/shards.md).

A shard is a group of ordinary edge nodes that holds only its own hostnames' routes,
certificates and short links. Every hostname is assigned by rendezvous (highest random weight)
hashing over the shards' names: each (shard, hostname) pair gets a stable score and the highest
wins, so adding or removing one of K shards moves only about 1/K of the hostnames, and every
replica computes the same answer with no table to read. An admin may pin a hostname to a shard
(an override), which wins over the hash. A wildcard (``*.example.com``) is on the shard
where routers send unknown hostnames: the default shard, else the first.

With no shard configured there is one, ``DEFAULT_SHARD``, and the edge is exactly what it is
without shards: its state keeps the keys it always had.
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import Iterable, Mapping

from edge.errors import EdgeError

DEFAULT_SHARD = "default"
SHARD_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
"""A shard's name: it becomes part of store keys, HAProxy backend names and map values. Match
it with ``fullmatch`` (``$`` also matches before a final newline); the anchors are for the
API's pattern (control_api.py), which pydantic searches for."""


def valid_shard_name(name: str) -> bool:
    return bool(SHARD_NAME.fullmatch(name))


def shard_name(name: str) -> str:
    """``name`` if it is a shard's name, else an EdgeError that says what one looks like."""
    if not valid_shard_name(name):
        raise EdgeError(f"{name!r} is not a shard name: a lowercase letter, then up to 30 "
                        "lowercase letters, digits or '-'")
    return name


def score(shard: str, hostname: str) -> int:
    """The pair's rendezvous weight: stable across processes and releases (never Python's
    ``hash``, which is salted per process)."""
    digest = hashlib.blake2b(f"{shard}\0{hostname}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def unknown_go_to(names: list[str]) -> str:
    """Where a router sends a hostname without an entry, of these (sorted) shard names: the
    default shard while it is one of them, else the first."""
    return DEFAULT_SHARD if DEFAULT_SHARD in names else names[0]


def assign(hostname: str, shards: Iterable[str],
           overrides: Mapping[str, str] | None = None) -> str:
    """The shard that serves ``hostname``: its override if that shard exists, else the shard
    with the highest score (ties, which need a 64-bit collision, go to the smaller name)."""
    names = sorted(set(shards)) or [DEFAULT_SHARD]
    if hostname.startswith("*."):
        # A router sends a hostname without an entry of its own by its wildcard parent's entry:
        # a wildcard anywhere but where unknown hostnames go would take the visitors of its
        # exact siblings on the default shard, which have no entry (and cannot be pinned).
        return unknown_go_to(names)
    pinned = (overrides or {}).get(hostname)
    if pinned in names:
        return str(pinned)
    return max(names, key=lambda name: (score(name, hostname), [-ord(c) for c in name]))


@dataclasses.dataclass(frozen=True)
class ShardNode:
    """Where routers reach one node of a shard: its binds that accept the PROXY protocol (v2),
    for TLS (forwarded unterminated, by SNI) and for plain HTTP (by Host: the HTTPS redirect
    and ACME HTTP-01)."""

    host: str
    https_port: int
    http_port: int

    def to_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, doc: Mapping[str, object]) -> "ShardNode":
        return cls(str(doc["host"]), int(str(doc["https_port"])), int(str(doc["http_port"])))


@dataclasses.dataclass(frozen=True)
class ShardSet:
    """The configured shards and the admins' overrides: what every replica assigns by.

    ``shards`` maps a shard's name to its nodes, where routers forward its hostnames'
    connections. Empty: the one default shard, and no router. A ``draining`` shard (being
    removed) is assigned nothing, but keeps its nodes and state until its hostnames moved off
    (edge/moves.py)."""

    shards: Mapping[str, tuple[ShardNode, ...]] = dataclasses.field(default_factory=dict)
    overrides: Mapping[str, str] = dataclasses.field(default_factory=dict)
    draining: frozenset[str] = frozenset()

    @property
    def names(self) -> list[str]:
        """The shards hostnames are assigned to."""
        return sorted(set(self.shards) - self.draining) or [DEFAULT_SHARD]

    @property
    def all_names(self) -> list[str]:
        """Every shard with a state to serve: the assigned ones and the draining ones."""
        return sorted(set(self.names) | set(self.shards))

    def assign(self, hostname: str) -> str:
        return assign(hostname, self.names, self.overrides)
