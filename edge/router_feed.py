"""What router nodes read: which shard holds each hostname, as deltas (docs/shards.md).

The map lives in the edge state tables under its own namespace (``ROUTER``, which no shard
name can be), as the edge state keeps short links: one item per hostname whose value is its
shard, written through the same outbox and revision as the shards' own feeds
(edge/state_changes.py), so a router asks for the entries changed since its revision and gets
a snapshot only when it is new or fell behind a compaction. Only hostnames off the default
shard have an entry: a router sends any other name to the default shard, so an edge with no
shard configured writes nothing here and its router map is empty.

A router's version covers the map and the shard list (the nodes it forwards to), which come
from the shard set rather than the store: a change of the list alone reaches a waiting router
when its long poll ends.

The answer names its ``format``. A router agent says which it reads (``Router-Format``; none:
1, the form before the header), and is answered in it: replicas are upgraded before agents, so
a newer replica serves an older agent's form, and an agent newer than every replica is refused
(426) rather than sent what it may misread. There is one format today; a second one adds its
form to :func:`in_format`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import ipaddress
import json
from typing import Any, Callable

from edge.protocol import parse_number
from edge.shards import ShardNode, ShardSet, unknown_go_to
from edge.state import Redirect
from edge.state_changes import StateChanges
from edge.state_feed import StateFeed
from edge.watch import VersionWatch
from store import every

ROUTER = "_router"
"""The namespace of the router's map (a shard name starts with a letter)."""
FORMAT = 1
"""The newest form of the router feed's answer this release writes and reads."""
OLDEST_FORMAT = 1
FORMAT_HEADER = "Router-Format"


def parse_format(value: str | None) -> int:
    """The format a router agent's header names (none: 1); raises ProtocolRefused."""
    return parse_number(value, FORMAT_HEADER, OLDEST_FORMAT, FORMAT, (
        f"this control service writes router feed formats {OLDEST_FORMAT} to {FORMAT}, the "
        "router agent reads {}: upgrade the control replicas before the agents"))


def in_format(doc: dict[str, Any], form: int) -> dict[str, Any]:
    """``doc`` (an answer in the newest format) as an agent of format ``form`` reads it: the
    same while there is one format."""
    return {**doc, "format": form}


@dataclasses.dataclass(frozen=True)
class Assignment(Redirect):
    """A router map entry, kept as the feed keeps a map entry: its value is the shard."""

    @property
    def value(self) -> str:
        return self.target


def assignment(hostname: str, shard: str | None) -> Assignment | None:
    return Assignment(hostname, "", 0, shard) if shard is not None else None


def router_default(shards: ShardSet) -> str:
    """Where a router sends a hostname without an entry (wildcards are assigned there)."""
    return unknown_go_to(shards.names)


class RouterFeed:
    def __init__(self, changes: StateChanges, feed: StateFeed,
                 shard_set: Callable[[], ShardSet]) -> None:
        self._changes = changes
        self._feed = feed
        self._shard_set = shard_set
        self.watch: VersionWatch = changes.watch
        """Routers waiting for the map to change wait here (on :meth:`versions`' first)."""

    def assign(self, hosts: dict[str, str | None]) -> bool:
        """Point each hostname at a shard (None: drop its entry, the default shard serves
        it); True if the map changed. Reads the version item and these entries only."""
        return self._changes.change({}, redirects={
            host: assignment(host, shard) for host, shard in hosts.items()})

    def reconcile(self, desired: dict[str, str], since: int | None = None) -> bool:
        """Make the map exactly ``desired`` (reads every entry: at start, on request); an
        entry written after revision ``since`` stays (see StateChanges.reconcile)."""
        return self._changes.reconcile_redirects(
            {host: Assignment(host, "", 0, shard) for host, shard in desired.items()}, since)

    def mark(self) -> int:
        return self._changes.mark()

    def compacted(self) -> int:
        """The revision no delta reaches back past (a reconciliation's, or a restore's)."""
        return int((self._changes.meta() or {}).get("compacted_revision") or 0)

    def holding(self, hostname: str) -> str | None:
        """The shard the router map sends ``hostname`` to, if it has an entry."""
        table = self._changes.redirects
        item = table.get(hostname) if table is not None else None
        return None if item is None or item.get("removed") else str(item["value"])

    def entries(self) -> dict[str, str]:
        """Every entry: hostname -> shard (reads them all: a reconciliation's)."""
        return {host: str(shard) for host, shard in self._snapshot()[2].items() if shard}

    def versions(self) -> tuple[str | None, str]:
        """The map's own version (what :attr:`watch` waits on) and the router's version, which
        also covers the shard list."""
        underlying = self._changes.current_version()
        return underlying, self._version(underlying, self._shard_set())

    @staticmethod
    def _version(underlying: str | None, shards: ShardSet) -> str:
        doc = json.dumps([underlying, _shards_doc(shards), router_default(shards)],
                         sort_keys=True, separators=(",", ":"))
        return hashlib.blake2b(doc.encode(), digest_size=8).hexdigest()

    def answer(self, since: int | None, form: int = FORMAT) -> dict[str, Any]:
        """The router's wire form, in format ``form``: the entries changed after revision
        ``since`` when the feed still has them (``delta``), else every entry; a removed one is
        null."""
        shards = self._shard_set()
        delta = self._feed.changes_since(since) if since is not None else None
        underlying: str | None
        if delta is not None:
            underlying, revision = str(delta["version"]), int(delta["revision"])
            hosts = {key: value for key, value in delta["redirect_changes"]}
        else:
            underlying, revision, hosts = self._snapshot()
        return in_format({"version": self._version(underlying, shards), "revision": revision,
                          "delta": delta is not None, "hosts": hosts,
                          "shards": _shards_doc(shards),
                          "default_shard": router_default(shards)}, form)

    def _snapshot(self) -> tuple[str | None, int, dict[str, str | None]]:
        """Every entry, at least as new as the revision it names (a change during the scan
        comes again in the next delta, which applies the same way twice)."""
        meta = self._changes.settled(self._changes.meta())
        table = self._changes.redirects
        if meta is None or table is None:
            return None, 0, {}
        hosts: dict[str, str | None] = {
            str(item["key"]): str(item["value"]) for item in every(
                lambda cursor: table.scan(limit=1000, cursor=cursor))
            if not item.get("removed")}
        return str(meta["edge_version"]), int(meta["revision"]), hosts


def _shards_doc(shards: ShardSet) -> dict[str, list[dict[str, object]]]:
    return {name: [wire_node(node) for node in shards.shards.get(name, ())]
            for name in shards.all_names}


def wire_node(node: ShardNode) -> dict[str, object]:
    """A shard node as the feed sends it: an IPv6 address in brackets (the registry keeps it
    bare), the one form of it every router agent takes, those of the release before too."""
    doc = node.to_json()
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(node.host).version == 6:
            doc["host"] = f"[{node.host}]"
    return doc
