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
import logging
import re
from typing import Any, Callable

from edge.protocol import parse_number
from edge.shards import ShardNode, ShardSet, unknown_go_to
from edge.state import Redirect
from edge.state_changes import StateChanges
from edge.state_feed import StateFeed
from edge.watch import VersionWatch
from store import every

log = logging.getLogger(__name__)
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

    def force(self, version: str) -> bool:
        """Let routers apply router version ``version`` (the one they are offered now) even
        if it takes off most of their entries: an operator's decision, for a removal the
        routers' safety check refuses (edge/router.py). It holds for the map's version it was
        made at (``forced_version`` of the map's version item: a change of the map ends it);
        False if ``version`` is not the current one."""
        meta = self._changes.meta()
        if meta is None or self._version(str(meta["edge_version"]), self._shard_set()) \
                != version:
            return False
        return self._changes.force(str(meta["edge_version"]))

    def answer(self, since: int | None, form: int = FORMAT) -> dict[str, Any]:
        """The router's wire form, in format ``form``: the entries changed after revision
        ``since`` when the feed still has them (``delta``), else every entry; a removed one is
        null. ``force`` when an operator forced the map's version (:meth:`force`)."""
        shards = self._shard_set()
        delta = self._feed.changes_since(since) if since is not None else None
        underlying: str | None
        if delta is not None:
            underlying, revision = str(delta["version"]), int(delta["revision"])
            hosts = {key: value for key, value in delta["redirect_changes"]}
            forced = bool(delta.get("force"))
        else:
            underlying, revision, hosts, forced = self._snapshot()
        return in_format({"version": self._version(underlying, shards), "revision": revision,
                          "delta": delta is not None, "hosts": hosts,
                          "shards": _shards_doc(shards),
                          "default_shard": router_default(shards),
                          **({"force": True} if forced else {})}, form)

    def _snapshot(self) -> tuple[str | None, int, dict[str, str | None], bool]:
        """Every entry, at least as new as the revision it names (a change during the scan
        comes again in the next delta, which applies the same way twice), and whether its
        version is forced."""
        meta = self._changes.settled(self._changes.meta())
        table = self._changes.redirects
        if meta is None or table is None:
            return None, 0, {}, False
        hosts: dict[str, str | None] = {
            str(item["key"]): str(item["value"]) for item in every(
                lambda cursor: table.scan(limit=1000, cursor=cursor))
            if not item.get("removed")}
        return str(meta["edge_version"]), int(meta["revision"]), hosts, \
            meta.get("forced_version") == meta["edge_version"]


def _shards_doc(shards: ShardSet) -> dict[str, list[dict[str, object]]]:
    """Each shard's nodes a router can name. A shard none of whose nodes it can name stays,
    with none: routers then refuse the map entries naming it, and say so (left out, they
    would send its hostnames to the default shard, which holds none of their certificates)."""
    return {name: [wire_node(node) for node in shards.shards.get(name, ()) if routable(node)]
            for name in shards.all_names}


_ROUTABLE = re.compile(r"[A-Za-z0-9.-]{1,253}")
_left_out: set[str] = set()
"""Hosts already logged as left out (the feed is answered on every router's poll)."""


def routable(node: ShardNode) -> bool:
    """Whether routers can name ``node``'s host (an IP address, an IPv6 one without a zone,
    or a host name). The registry refuses the others, but one it stored before it did (a
    scoped ``fe80::1%eth0``) would make every router refuse the whole feed: it is left out,
    and the routers keep serving every other node."""
    try:
        address = ipaddress.ip_address(node.host)
    except ValueError:
        ok = bool(_ROUTABLE.fullmatch(node.host))
    else:
        ok = not isinstance(address, ipaddress.IPv6Address) or address.scope_id is None
    if not ok and node.host not in _left_out:
        _left_out.add(node.host)
        log.error("shard node %r is left out of the router feed: no router can name it (an "
                  "IPv6 address with a zone?); give its shard its address again", node.host)
    return ok


def wire_node(node: ShardNode) -> dict[str, object]:
    """A shard node as the feed sends it: an IPv6 address in brackets (the registry keeps it
    bare), the one form of it every router agent takes, those of the release before too."""
    doc = node.to_json()
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(node.host).version == 6:
            doc["host"] = f"[{node.host}]"
    return doc
