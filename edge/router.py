"""The shard router's node (issue 29; docs/shards.md): a HAProxy in TCP mode that forwards each
TLS connection, unterminated, to the shard holding its SNI hostname, and plain HTTP by Host.

What it serves has two parts, changed in two ways:

- the hostname -> shard map (``sni.map``), changed hot through the runtime API (``set map``,
  ``add map``, ``del map``), never by a reload: moving a hostname is one command;
- the shards' nodes and the default shard (``router.cfg``), where a change re-renders the
  config, checks it and reloads seamlessly (edge/haproxy.py).

The map file is kept in step with what HAProxy holds (each hot change is then appended to its
journal, folded into the file before HAProxy reads it again), so a restart or a reload serves
the same; ``router_state.json`` names the feed's version and revision it came from, so an
agent started again asks for what changed since.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import ipaddress
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterator, Mapping

import jinja2

from edge.errors import EdgeError
from edge.haproxy import HAProxy
from edge.node import Journaled
from edge.plan import UnsafePlan, refuse_mass_delete
from edge.render import ROUTER_TEMPLATE, template_folder
from edge.runtime import RuntimeAPI, RuntimeCommandFailed
from edge.shards import ShardNode, valid_shard_name
from kit.files import PUBLIC, write_atomic

log = logging.getLogger(__name__)

_HOSTNAME = re.compile(r"(\*\.)?[a-z0-9][a-z0-9.-]{0,252}")
_NODE_HOST = re.compile(r"[A-Za-z0-9.-]{1,253}")
"""A shard node's host name or IPv4 address; an IPv6 address is checked by ``ipaddress``
(:func:`node_address`)."""
_VERSION = re.compile(r"[\x21-\x7e]{1,128}")
CHECK_MS = 1000
"""How often the router checks each shard node (two failed checks take it out)."""
COMPACT_AFTER = 20000
"""Journal changes after which the router folds them into its map file."""


class RouterError(EdgeError, ValueError):
    """A router update holds a value that must never reach HAProxy's files."""


@dataclasses.dataclass(frozen=True)
class RouterUpdate:
    """One answer of the router feed: hostname -> shard (None: removed) for the hostnames that
    changed (``delta``) or for all of them, with the shards' nodes and the default shard."""

    version: str
    revision: int | None
    delta: bool
    hosts: Mapping[str, str | None]
    shards: Mapping[str, tuple[ShardNode, ...]]
    default_shard: str
    force: bool = False
    """Take it even if it removes most hostnames (refused otherwise: an empty feed by mistake
    would send every visitor to the default shard, which holds none of their certificates)."""

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "RouterUpdate":
        """The feed's JSON answer, checked (raises :class:`RouterError` with a sentence)."""
        try:
            shards = {str(name): tuple(ShardNode.from_json(node) for node in nodes)
                      for name, nodes in dict(doc["shards"]).items()}
            revision = doc.get("revision")
            update = cls(str(doc["version"]), None if revision is None else int(revision),
                         bool(doc.get("delta")),
                         {str(host): None if shard is None else str(shard)
                          for host, shard in dict(doc["hosts"]).items()},
                         shards, str(doc["default_shard"]), bool(doc.get("force")))
        except (KeyError, TypeError, ValueError) as exc:
            raise RouterError(f"the router feed's answer is malformed: {exc!r}") from None
        update.validate()
        return update

    @property
    def table(self) -> dict[str, Any]:
        """What router.cfg is rendered from: a change of it takes a reload."""
        return {"default_shard": self.default_shard,
                "shards": {name: [node.to_json() for node in nodes]
                           for name, nodes in sorted(self.shards.items())}}

    def validate(self) -> None:
        if not _VERSION.fullmatch(self.version):
            raise RouterError(f"version {self.version!r} is not a printable word")
        if self.default_shard not in self.shards:
            raise RouterError(f"the default shard {self.default_shard!r} has no nodes listed")
        for name, nodes in self.shards.items():
            if not valid_shard_name(name) or not nodes:
                raise RouterError(f"shard {name!r} needs a plain name and at least one node")
            for node in nodes:
                if node_address(node.host) is None or not all(
                        0 < port < 65536 for port in (node.https_port, node.http_port)):
                    raise RouterError(f"node {node} of shard {name} is not host and ports")
        for host, shard in self.hosts.items():
            if not _HOSTNAME.fullmatch(host) or ".." in host:
                raise RouterError(f"hostname {host!r} is not a normalized hostname")
            if shard is not None and not valid_shard_name(shard):
                raise RouterError(f"hostname {host} names shard {shard!r}, not a shard name")


def node_address(host: str) -> str | None:
    """``host`` as router.cfg names it (an IPv6 address in brackets, as the feed sends it; a
    feed of another release may send it bare), or None if it is not a host name or address.
    A scoped IPv6 address (``fe80::1%eth0``) is not one: its scope is the node's own."""
    inner = host[1:-1] if host.startswith("[") and host.endswith("]") else None
    try:
        address = ipaddress.ip_address(host if inner is None else inner)
    except ValueError:
        return host if inner is None and _NODE_HOST.fullmatch(host) else None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is None:
        return f"[{address}]"
    return host if inner is None and address.version == 4 else None


class Router(Journaled):
    """One router node: its HAProxy, map and config in ``directory``."""

    def __init__(self, directory: Path, *, haproxy_bin: str = "haproxy",
                 bind: str = "127.0.0.1", https_port: int = 443, http_port: int = 80,
                 check_ms: int = CHECK_MS, maxconn: int = 4096,
                 templates: Path | None = None, compact_after: int = COMPACT_AFTER) -> None:
        super().__init__(compact_after)
        self.directory = directory.absolute()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.listen = {"bind": bind, "https_port": https_port, "http_port": http_port,
                       "check_ms": check_ms, "maxconn": maxconn}
        self._templates = templates
        self.map_path = self.directory / "sni.map"
        self.journal_path = self.directory / "sni.journal"
        self.config_path = self.directory / "router.cfg"
        self.state_path = self.directory / "router_state.json"
        self.haproxy = HAProxy(haproxy_bin, self.config_path, self.directory)
        self.runtime_socket = self.haproxy.runtime_socket
        self.runtime = RuntimeAPI(self.runtime_socket)
        self._hosts: dict[str, str] | None = None
        self._state: dict[str, Any] | None = None
        self._map_checked = False
        self.last_error: str | None = None
        self.hot_applies = 0
        self.reloads = 0
        self._own = hashlib.sha256(json.dumps(self.listen, sort_keys=True).encode() + (
            template_folder(templates) / ROUTER_TEMPLATE).read_bytes()).hexdigest()
        """What this router's own files and settings are (its template, where it listens):
        a router.cfg rendered with others (an upgrade, a new port) is rendered again."""

    @property
    def state(self) -> dict[str, Any]:
        """``version``, ``revision`` and ``table`` of what is served (empty: nothing yet)."""
        if self._state is None:
            try:
                self._state = json.loads(self.state_path.read_text())
            except (OSError, ValueError):
                self._state = {}
        return self._state

    @property
    def applied_version(self) -> str | None:
        return self.state.get("version") if self.config_path.exists() else None

    @property
    def applied_revision(self) -> int | None:
        return self.state.get("revision") if self.config_path.exists() else None

    def hosts(self) -> dict[str, str]:
        """hostname -> shard served: read from the map file and its journal once, then kept
        in memory."""
        if self._hosts is None:
            self._hosts, self._journaled = {}, 0
            for path in (self.map_path, self.journal_path):
                if path.exists():
                    for line in path.read_text().splitlines():
                        host, _, shard = line.partition(" ")
                        if shard:
                            self._hosts[host] = shard
                        elif host:
                            self._hosts.pop(host, None)
                        self._journaled += path == self.journal_path
        return self._hosts

    @contextlib.contextmanager
    def _refusal_noted(self) -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            self.last_error = str(exc)
            self._map_checked = False  # HAProxy may hold less than the file: look again
            raise

    def apply(self, update: RouterUpdate) -> bool:
        """Serve ``update`` (a delta on what is served, or a whole snapshot); False if its
        version is served already. Map changes go hot; a new shard table, or a HAProxy that
        does not run or holds another map than the file, takes a checked reload or a start."""
        if update.version == self.applied_version and self.haproxy.running:
            if update.revision != self.applied_revision:  # the same map, renumbered (a restore)
                self._save_state(update)
            return False
        with self._refusal_noted():
            update.validate()
            changes = self._changes(update)
            try:  # the version named: what an operator forces (edgectl shards force-routers)
                refuse_mass_delete(self._rerouted(changes, update), len(self.hosts()),
                                   "hostnames", update.force)
            except UnsafePlan as exc:
                raise UnsafePlan(f"version {update.version}: {exc}") from None
            if self._can_hot_apply(update):
                try:
                    self._hot_apply(changes)
                except (RuntimeCommandFailed, OSError) as exc:
                    log.warning("router hot change failed, reloading from the files: %s", exc)
                    self._write_map(changes)
                    self._restart(update)
                else:
                    self._write_map(changes)
            else:
                self._write_map(changes)
                self._restart(update)
            self._save_state(update)
            self.last_error = None
        return True

    def _changes(self, update: RouterUpdate) -> dict[str, str | None]:
        """hostname -> new shard (None: removed) for each host whose entry changes."""
        served = self.hosts()
        if update.delta:
            wanted = update.hosts
        else:
            wanted = {host: shard for host, shard in update.hosts.items() if shard is not None}
            wanted = {**{host: None for host in served if host not in wanted}, **wanted}
        return {host: shard for host, shard in wanted.items() if served.get(host) != shard}

    def _rerouted(self, changes: Mapping[str, str | None], update: RouterUpdate) -> int:
        """The entries taken off that send their hostname elsewhere. Without its entry a
        hostname goes where its wildcard parent's entry says, else to the default shard; so
        does one whose entry names a shard the update no longer lists (no backend for it). An
        entry taken off that named that very shard (as a move to the default shard leaves
        one, until its hostname goes), or a shard gone (a drain a router catches up on),
        changes nothing."""
        served, count = self.hosts(), 0
        for host, shard in changes.items():
            if shard is None:
                parent = "*" + host[host.find("."):] if "." in host else host
                fallback = changes.get(parent, served.get(parent)) if parent != host else None
                fallback = fallback if fallback in update.shards else update.default_shard
                count += served.get(host) in update.shards and served.get(host) != fallback
        return count

    def _can_hot_apply(self, update: RouterUpdate) -> bool:
        if not (self.haproxy.running and self.state.get("table") == update.table
                and self.state.get("own") == self._own):
            return False
        if not self._map_checked:  # once per process: does HAProxy hold what the file says?
            self._map_checked = True
            return self.runtime.show_map(self.map_path) == self.hosts()
        return True

    def _hot_apply(self, changes: Mapping[str, str | None]) -> None:
        """The map entries through the runtime API, in one connection: a new host is added,
        a moved one set in place (never missing for an instant), a removed one deleted."""
        served = self.hosts()
        batch = self.runtime.batch()
        for host, shard in sorted(changes.items()):
            if shard is None:
                batch.del_map(self.map_path, host, missing_ok=True)
            else:
                batch.set_map(self.map_path, host, shard, exists=host in served)
        batch.send()
        self.hot_applies += 1
        log.info("router hot-applied %d hostname changes", len(changes))

    def _write_map(self, changes: Mapping[str, str | None]) -> None:
        """``changes`` on disk: appended to the map's journal (``host shard``, or ``host``
        alone for a removal), which costs the changes, not the million lines of the map; the
        journal is folded into the map file before HAProxy reads it (:meth:`compact`)."""
        served = self.hosts()
        for host, shard in changes.items():
            if shard is None:
                served.pop(host, None)
            else:
                served[host] = shard
        if not changes:
            return
        with open(self.journal_path, "a") as journal:
            journal.write("".join(f"{host} {shard}\n" if shard else f"{host}\n"
                                  for host, shard in changes.items()))
            journal.flush()
            os.fsync(journal.fileno())
        self._noted(len(changes))
        self._compact_if_long()

    def compact(self) -> bool:
        """Fold the journal into the map file (rewritten whole, atomically), so HAProxy reads
        what is served from it; True if there was anything to fold."""
        served = self.hosts()
        if self.map_path.exists() and not self.journal_path.exists():
            return False
        write_atomic(self.map_path, "".join(f"{host} {shard}\n"
                                            for host, shard in served.items()), PUBLIC)
        self.journal_path.unlink(missing_ok=True)
        self._journaled = 0
        return True

    def render(self, update: RouterUpdate) -> str:
        """router.cfg for the shard table of ``update``."""
        folder = template_folder(self._templates)
        template = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(folder)), undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True, autoescape=False).get_template(ROUTER_TEMPLATE)
        return template.render(**self.listen, runtime_socket=self.runtime_socket,
                               sni_map=self.map_path, default_shard=update.default_shard,
                               shards=[(name, [{**node.to_json(),
                                                "address": node_address(node.host)}
                                               for node in nodes])
                                       for name, nodes in sorted(update.shards.items())])

    def _restart(self, update: RouterUpdate) -> None:
        """Render router.cfg, have HAProxy check it, then reload (or start): a refused config
        is never put in place, and the running one keeps serving."""
        self.compact()  # HAProxy is about to read the map file
        candidate = self.config_path.with_name("router.cfg.new")
        write_atomic(candidate, self.render(update), PUBLIC)
        try:
            self.haproxy.check(candidate)
        except Exception:
            candidate.unlink(missing_ok=True)
            raise
        candidate.replace(self.config_path)
        started = False
        if not self.haproxy.running:
            self.haproxy.start()
            started = self.haproxy.adopted is None  # adopted: it runs the config before
        if not started:
            self.haproxy.reload()
        self._map_checked = True
        self.reloads += 1
        log.info("router serves version %s: %d shards, %d hostnames", update.version,
                 len(update.shards), len(self.hosts()))

    def _save_state(self, update: RouterUpdate) -> None:
        self._state = {"version": update.version, "revision": update.revision,
                       "table": update.table, "own": self._own}
        write_atomic(self.state_path, json.dumps(self._state), PUBLIC)

    def start(self) -> None:
        """Serve what was applied last (after a restart), or adopt the HAProxy that does;
        with router.cfg rendered again from the shard table served if this router's template
        or listening settings changed since (an upgrade): else they would wait for the next
        change of the shard table, which may be months away."""
        if self.applied_version and not self.haproxy.running:
            self.compact()
            try:
                self.haproxy.start()
            except EdgeError as exc:
                self.last_error = f"HAProxy did not start from the files: {exc}"
                raise
        if self.applied_version and self.state.get("own") != self._own:
            served = RouterUpdate.from_json({
                **self.state["table"], "version": self.state["version"],
                "revision": self.state.get("revision"), "delta": True, "hosts": {}})
            with self._refusal_noted():
                self._restart(served)
            self._save_state(served)

    def stop(self) -> None:
        self.haproxy.stop()
