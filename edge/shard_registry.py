"""The configured edge shards and the admins' per-hostname overrides, in the store.

Reads are what must be cheap: every route change asks :meth:`ShardRegistry.load` which shard a
hostname belongs to. So the registry keeps one small ``config`` item (the shards and their
nodes, a count of overrides per shard, a ``revision`` every change moves) and the overrides in
``BUCKETS`` items beside it (a hostname's bucket is a stable hash of it; 10,000 long hostnames
fit with room under DynamoDB's 400 KB an item). ``load()`` costs one GetItem of ``config``: the
overrides are read again only when its revision moved, which only an admin's change does. No
time-based cache: a replica that assigned by a stale set for a few seconds would publish a route
to the wrong shard, and one small read per route change costs far less than a route change.

A change is one conditional write of ``config`` (compare-and-set on its version, retried on a
lost race with the fresh item, so two admins racing both land; a caller that names the
``revision`` it read is refused if it moved). An override change rides in ``config`` as
``pending`` (an outbox) and is copied to its bucket afterwards, each bucket only over an older
revision; a reader overlays ``pending`` on the buckets, and the next writer copies it first, so
a replica that dies between the two writes loses nothing.

Every change also appends a line to the config's ``log`` (the last ``LOG`` changes): its
revision and, for a pin or unpin, the hostname; a change that leaves every assignment but the
overrides' as it was (a shard's nodes replaced, a drained shard dropped) says ``same``. What a
revision moved is then known without reading the edge: the mover enqueues a pin's one hostname
(:meth:`ShardRegistry.pinned_since`) and reads every route only when the shards changed. A
change written by the release before appends nothing: its revision missing from the log, the
mover reads every route, as that release's did.
"""
from __future__ import annotations

import contextlib
import ipaddress
import threading
import zlib
from typing import Any, Callable, Iterator, Mapping

from edge.errors import EdgeError
from edge.shards import DEFAULT_SHARD, ShardNode, ShardSet, valid_shard_name
from kit.hosts import HOSTNAME_LABEL
from store import ABSENT, VERSION, ConflictError, Item, Table, TableSpec

EDGE_SHARDS = TableSpec("edge_shards", key="name")
CONFIG = "config"
BUCKETS = 16
MAX_OVERRIDES = 10_000
MAX_SHARDS = 256
"""10,000,000 domains at 50,000 a shard take 200 (docs/scale.md)."""
MAX_NODES = 16
"""Per shard; with MAX_SHARDS it keeps the ``config`` item well under DynamoDB's 400 KB."""
ATTEMPTS = 20
LOG = 64
"""Changes the config's ``log`` keeps: a mover further behind reads every route."""


class ShardRefused(EdgeError, ValueError):
    """A change the registry will not make, with a sentence for the admin and the input at
    fault (``field``); ``status`` is what an API answers (400 bad input, 404 no such shard or
    override, 409 someone changed the registry first)."""

    def __init__(self, message: str, field: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.field = field
        self.status = status


def normal_hostname(hostname: str) -> bool:
    """Whether ``hostname`` is in the form every part stores: lowercase LDH labels (IDNA
    A-labels), at least two, no trailing dot. The edge sits beside ``dnsops`` and may not ask
    it, so callers normalize (``dnsops.hostnames.normalize_hostname``) and this only checks."""
    labels = hostname.split(".")
    return len(hostname) <= 253 and len(labels) >= 2 and \
        all(HOSTNAME_LABEL.fullmatch(label) for label in labels)


def _valid_host(host: str) -> bool:
    """An IP address (IPv6 bare, without a zone: ``fe80::1%eth0`` names an interface of one
    machine, not a node every router reaches) or a lowercase hostname."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return normal_hostname(host) or bool(HOSTNAME_LABEL.fullmatch(host))
    return not isinstance(address, ipaddress.IPv6Address) or address.scope_id is None


def check_nodes(name: str, nodes: list[ShardNode],
                others: Mapping[str, tuple[ShardNode, ...]]) -> None:
    """Refuse a shard name or node list with a sentence: hosts are IP addresses or hostnames,
    ports 1-65535, and no bind (host and port) twice, in this shard or another."""
    if not valid_shard_name(name):
        raise ShardRefused("a shard's name is 1-31 lowercase letters, digits and hyphens, "
                           "starting with a letter", "name")
    if not nodes or len(nodes) > MAX_NODES:
        raise ShardRefused(f"a shard has 1 to {MAX_NODES} nodes", "nodes")
    seen = {(n.host, port): shard for shard, group in others.items() if shard != name
            for n in group for port in (n.https_port, n.http_port)}
    for index, node in enumerate(nodes):
        if not _valid_host(node.host):
            raise ShardRefused(f"{node.host!r} is neither an IP address (IPv6 without a "
                               "zone) nor a lowercase hostname", f"nodes.{index}.host")
        if node.https_port == node.http_port:
            raise ShardRefused("a node's HTTPS and HTTP ports differ", f"nodes.{index}.http_port")
        for field in ("https_port", "http_port"):
            port = getattr(node, field)
            if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
                raise ShardRefused("a port is a number from 1 to 65535", f"nodes.{index}.{field}")
            holder = seen.setdefault((node.host, port), name)
            if holder != name or (node.host, port) in _binds(nodes[:index]):
                raise ShardRefused(f"{node.host}:{port} is already a node of shard {holder}",
                                   f"nodes.{index}.{field}")


def _binds(nodes: list[ShardNode]) -> set[tuple[str, int]]:
    return {(n.host, port) for n in nodes for port in (n.https_port, n.http_port)}


def bucket_of(hostname: str) -> str:
    return f"overrides#{zlib.crc32(hostname.encode()) % BUCKETS:02d}"


class ShardRegistry:
    """Where the shards and overrides are kept; :meth:`load` is what the feeds and router
    assign by (``shard_set=registry.load``)."""

    def __init__(self, table: Table,
                 default_size: Callable[[], int | None] = lambda: 0) -> None:
        """``default_size``: how many routes the default shard holds (None: not counted yet),
        read before a first shard other than it is added."""
        self.table = table
        self._default_size = default_size
        self._cached: tuple[int, ShardSet] | None = None
        self._round = threading.local()

    def load(self) -> ShardSet:
        """The current shards and overrides: one GetItem, plus ``BUCKETS`` more only when an
        admin changed something since the last call."""
        return self.current()[1]

    @contextlib.contextmanager
    def once(self) -> Iterator[None]:
        """Within it, this thread reads the registry once: a worker round hands every step the
        set it read first (a change landing during the round is the next round's)."""
        self._round.read = None
        try:
            yield
        finally:
            del self._round.read

    def current(self) -> tuple[int, ShardSet]:
        """The registry's revision (what a change that must not overwrite another's passes
        back) and its shards and overrides, read together."""
        held = getattr(self._round, "read", False)
        if held is not False:
            self._round.read = held or self._read()
            return self._round.read
        return self._read()

    def _read(self) -> tuple[int, ShardSet]:
        config = self._config()
        revision = int(config.get("revision", 0))
        cached = self._cached
        if cached is not None and cached[0] == revision:
            return cached
        shards = {name: tuple(ShardNode.from_json(n) for n in nodes)
                  for name, nodes in (config.get("shards") or {}).items()}
        buckets = {key: self.table.get(key) or {} for key in
                   (f"overrides#{index:02d}" for index in range(BUCKETS))}
        overrides: dict[str, str] = {}
        for bucket in buckets.values():
            overrides.update(bucket.get("overrides") or {})
        pending = config.get("pending")
        if pending and int(buckets[bucket_of(pending["hostname"])].get("revision", 0)) < \
                pending["revision"]:
            _apply(overrides, pending)
        loaded = ShardSet(shards, overrides,
                          frozenset(config.get("draining") or ()) & frozenset(shards))
        self._cached = (revision, loaded)
        return self._cached

    def put_shard(self, name: str, nodes: list[ShardNode],
                  expected_revision: int | None = None) -> tuple[int, ShardSet]:
        """Create shard ``name`` or replace its nodes."""
        def change(config: Item) -> None:
            shards = config.setdefault("shards", {})
            if name not in shards and len(shards) >= MAX_SHARDS:
                raise ShardRefused(f"at most {MAX_SHARDS} shards", "name")
            if name != DEFAULT_SHARD and DEFAULT_SHARD not in shards \
                    and (held := self._default_size()) != 0:
                # Routers would send every hostname without an entry (the default shard's)
                # to the first shard at once, before a move published any of them there.
                count = "hostnames" if held is None else f"{held} hostname(s)"
                raise ShardRefused(
                    f"the default shard holds {count} and has no nodes registered: register "
                    "them first (edgectl shards add default --node HOST:TLS_PORT:HTTP_PORT, "
                    f"docs/shards.md), then add shard {name}", "name", 409)
            check_nodes(name, nodes, self._shards(config))
            shards[name] = [node.to_json() for node in nodes]
            config["draining"] = [n for n in config.get("draining") or () if n != name]
        return self._commit(change, expected_revision)

    def remove_shard(self, name: str,
                     expected_revision: int | None = None) -> tuple[int, ShardSet]:
        """Mark shard ``name`` draining: nothing is assigned to it any more, but routers keep
        forwarding to its nodes until its hostnames have moved off (edge/moves.py), and then
        :meth:`drop_drained` deletes it."""
        def change(config: Item) -> None:
            if name not in (config.get("shards") or {}):
                raise ShardRefused(f"there is no shard {name}", "name", 404)
            if name == DEFAULT_SHARD:
                raise ShardRefused(
                    "the default shard cannot be removed: routers send it every hostname "
                    "they have no entry for; to retire its nodes, give it new ones (edgectl "
                    "shards add default --node ...)", "name", 409)
            pinned = int((config.get("pinned") or {}).get(name, 0))
            if pinned:
                raise ShardRefused(f"{pinned} hostname(s) are pinned to shard {name}; unpin "
                                   "them (or pin them elsewhere) before removing it", "name", 409)
            config["draining"] = sorted(set(config.get("draining") or ()) | {name})
        return self._commit(change, expected_revision)

    def drop_drained(self, name: str) -> bool:
        """Delete draining shard ``name`` (emptied); False if it is not draining."""
        def change(config: Item) -> None:
            if name not in (config.get("draining") or ()):
                raise ShardRefused(f"shard {name} is not draining", "name", 409)
            config["draining"] = [n for n in config["draining"] if n != name]
            config["shards"].pop(name, None)
        try:
            return bool(self._commit(change, None))
        except ShardRefused:
            return False

    def pin(self, hostname: str, shard: str,
            expected_revision: int | None = None) -> tuple[int, ShardSet]:
        """Serve ``hostname`` from ``shard`` whatever the hash says."""
        if not normal_hostname(hostname):
            raise ShardRefused("give the hostname in its normal form: lowercase, IDNA, no "
                               "trailing dot (blog.example.com)", "hostname")
        return self._commit(lambda config: self._override(config, hostname, shard),
                            expected_revision)

    def unpin(self, hostname: str,
              expected_revision: int | None = None) -> tuple[int, ShardSet]:
        return self._commit(lambda config: self._override(config, hostname, None),
                            expected_revision)

    def _override(self, config: Item, hostname: str, shard: str | None) -> None:
        if shard is not None and (shard not in (config.get("shards") or {})
                                  or shard in (config.get("draining") or ())):
            raise ShardRefused(f"there is no shard {shard}; add it first", "shard",
                               404 if valid_shard_name(shard) else 400)
        current = self._current(hostname)
        if shard is None and current is None:
            raise ShardRefused(f"{hostname} is not pinned", "hostname", 404)
        if current is None and int(config.get("overrides", 0)) >= MAX_OVERRIDES:
            raise ShardRefused(f"at most {MAX_OVERRIDES:,} hostnames can be pinned; unpin some "
                               "first (the hash spreads the rest)", "hostname")
        pinned = config.setdefault("pinned", {})
        if current is not None:
            pinned[current] = int(pinned.get(current, 0)) - 1
            config["overrides"] = int(config.get("overrides", 0)) - 1
        if shard is not None:
            pinned[shard] = int(pinned.get(shard, 0)) + 1
            config["overrides"] = int(config.get("overrides", 0)) + 1
        config["pinned"] = {name: count for name, count in pinned.items() if count > 0}
        config["pending"] = {"hostname": hostname, "shard": shard or "",
                             "revision": int(config.get("revision", 0)) + 1}

    def _current(self, hostname: str) -> str | None:
        """The hostname's override (the config's pending is in its bucket by now)."""
        found = (self._bucket(hostname).get("overrides") or {}).get(hostname)
        return str(found) if found else None

    def _commit(self, change: Callable[[Item], None],
                expected_revision: int | None) -> tuple[int, ShardSet]:
        for _ in range(ATTEMPTS):
            stored = self._config()
            if expected_revision is not None and int(stored.get("revision", 0)) != \
                    expected_revision:
                raise ShardRefused("someone changed the shards since you read them; reload "
                                   "and try again", "revision", 409)
            self._settle(stored)
            config = {**stored, "shards": dict(stored.get("shards") or {}),
                      "pinned": dict(stored.get("pinned") or {})}
            config.pop("pending", None)
            change(config)
            config["revision"] = int(stored.get("revision", 0)) + 1
            config["log"] = _logged(stored, config)
            try:
                written = self.table.put(config, expected_version=stored.get(VERSION, ABSENT))
            except ConflictError:
                continue
            self._settle(written)
            return self.current()
        raise ShardRefused("the shards are changing too fast; try again", None, 409)

    def pinned_since(self, since: int, revision: int) -> set[str] | None:
        """The hostnames whose override changed after revision ``since`` up to ``revision``,
        if that is all that changed the assignments (one read of the config); None if a
        change in between did more, or is not in the log (too old, or an older release's)."""
        if revision <= since:
            return set()
        lines = {int(line["revision"]): line for line in self._config().get("log") or ()}
        hostnames: set[str] = set()
        for number in range(since + 1, revision + 1):
            line = lines.get(number)
            if line is None or not (line.get("hostname") or line.get("same")):
                return None
            if line.get("hostname"):
                hostnames.add(str(line["hostname"]))
        return hostnames

    def _settle(self, config: Item) -> None:
        """Copy ``config``'s pending override into its bucket, unless it holds it (or a later
        one) already: idempotent, so every writer may do it."""
        pending = config.get("pending")
        while pending:
            bucket = self._bucket(pending["hostname"])
            if int(bucket.get("revision", 0)) >= pending["revision"]:
                return
            overrides = dict(bucket.get("overrides") or {})
            _apply(overrides, pending)
            try:
                self.table.put({"name": bucket_of(pending["hostname"]), "overrides": overrides,
                                "revision": pending["revision"]},
                               expected_version=bucket.get(VERSION, ABSENT))
                return
            except ConflictError:
                continue

    def _config(self) -> Item:
        return self.table.get(CONFIG) or {"name": CONFIG}

    def _bucket(self, hostname: str) -> Item:
        return self.table.get(bucket_of(hostname)) or {}

    @staticmethod
    def _shards(config: Item) -> dict[str, tuple[ShardNode, ...]]:
        return {name: tuple(ShardNode.from_json(n) for n in nodes)
                for name, nodes in (config.get("shards") or {}).items()}


def _assigned(config: Item) -> list[str]:
    """The shards hostnames are assigned to, by ``config`` (``ShardSet.names``)."""
    return sorted(set(config.get("shards") or {}) - set(config.get("draining") or ()))


def _logged(stored: Item, config: Item) -> list[dict[str, Any]]:
    """``stored``'s log with the line of the change ``config`` makes (module docstring)."""
    line: dict[str, Any] = {"revision": config["revision"]}
    if config.get("pending"):
        line["hostname"] = config["pending"]["hostname"]
    elif (_assigned(stored) or [DEFAULT_SHARD]) == (_assigned(config) or [DEFAULT_SHARD]):
        line["same"] = True
    return [*(stored.get("log") or ())[-(LOG - 1):], line]


def _apply(overrides: dict[str, str], pending: Mapping[str, Any]) -> None:
    if pending.get("shard"):
        overrides[pending["hostname"]] = str(pending["shard"])
    else:
        overrides.pop(pending["hostname"], None)
