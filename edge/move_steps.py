"""A round's due moves, step by step (edge/moves.py has the whole design): the moves that
publish to one shard are one change of it, those that switch one change of the router's map,
and those that drop from one shard one change of it, so a node follows one version a round for
them, not one per hostname. Each step stays idempotent: a move whose lease ran out after its
round's change is taken again by the next round of any replica, which finds the change made
and only moves the item on."""
from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Callable, Iterable, Protocol

from edge.move_counts import MoveCounts
from edge.protocol import OLDEST, meta_version
from edge.router_feed import ROUTER
from edge.sharded_state import ShardedState
from edge.shards import ShardSet
from edge.state import EdgeConfig, Redirect
from edge.state_changes import RedirectChange, RouteChange
from store import VERSION, ConflictError, Item, Table

log = logging.getLogger(__name__)
PUBLISH, SWITCH, DROP = "publish", "switch", "drop"
VERSIONS = 16
"""Versions a move remembers as holding its route (the shard's last)."""
Pair = tuple[str, str]
"""(source, target) of a move: what the counts count."""


def move_key(hostname: str) -> str:
    return f"move#{hostname}"


class Moving(Protocol):
    """What the steps use of edge.moves.Mover (which imports this module)."""
    state: ShardedState
    table: Table
    counts: MoveCounts
    grace: float
    poll: float
    stale: float
    clock: Callable[[], float]

    def enqueued(self, hostname: str, source: str, target: str,
                 link: str | None, more: Iterable[str] = ()) -> Counter[Pair]: ...

    def count(self, changes: Counter[Pair]) -> None: ...

    def drop_drained(self, shards: ShardSet, recount: bool = False) -> None: ...

    def leased(self, item: Item) -> Item | None: ...


class MoveSteps:
    """The steps of :class:`edge.moves.Mover`'s leased moves."""

    def __init__(self, mover: Moving) -> None:
        self.mover, self.state, self.table = mover, mover.state, mover.table
        self._serving: list[Item] | None = None
        """The routers that serve, as :meth:`_routers` read them this round."""

    def take(self, due: list[Item], shards: ShardSet) -> int:
        """Lease the due moves and take their next steps, one change per shard and step
        (above); the moves taken. Each group is leased just before its step: a step that
        fails leaves the groups after it to the next round, not parked behind a lease."""
        self._serving = None
        retarget, publish, switch, drop = list[Item](), dict[str, list[Item]](), \
            list[Item](), dict[str, list[Item]]()
        for move in due:
            if move["step"] != DROP and move["target"] not in shards.names:
                retarget.append(move)
            elif move["step"] == PUBLISH:
                publish.setdefault(move["target"], []).append(move)
            elif move["step"] == SWITCH:
                switch.append(move)
            else:
                drop.setdefault(move["source"], []).append(move)
        taken = 0
        for move in retarget:
            for leased in self._leased([move]):
                self._retarget(leased, shards)
                taken += 1
        for target, group in sorted(publish.items()):
            if leased_group := self._leased(group):
                self._publish(target, leased_group)
                taken += len(leased_group)
        if leased_group := self._leased(switch):
            self._switch(leased_group, shards)
            taken += len(leased_group)
        for source, group in sorted(drop.items()):
            if leased_group := self._leased(group):
                self._drop(source, leased_group, shards)
                taken += len(leased_group)
        return taken

    def _leased(self, moves: list[Item]) -> list[Item]:
        """Those of ``moves`` this replica leased (another took the others first)."""
        return [move for item in moves if (move := self.mover.leased(item)) is not None]

    def _publish(self, target: str, moves: list[Item]) -> None:
        new = self.state.store(target)
        since = new.mark()  # the target's own changes (newer than the sources') stay
        routes: dict[str, RouteChange] = {}
        links: dict[str, RedirectChange] = {}
        for move in moves:
            host, old = move["hostname"], self.state.store(move["source"])
            route = old.routes.get(host)
            if route is not None and not route.get("removed") \
                    and self.state.holding(target, host) is None:
                cert = old.certificate(host, str(route["cert_sha256"]))
                if cert is not None:
                    routes[host] = (str(route["publication_id"]), cert["pem"],
                                    str(route.get("extras") or ""))
            for key in move["links"]:
                item = old.redirects.get(key) if old.redirects is not None else None
                held = new.redirects.get(key) if new.redirects is not None else None
                # a tombstone there (the link moved off it before) is no copy: a removal
                # since the mark stays (publish_to's ``since``)
                if item is not None and not item.get("removed") and new.redirects is not None \
                        and (held is None or held.get("removed")):
                    links[key] = Redirect.from_map(key, str(item["value"]))
        self.state.publish_to(target, routes, links, self._config(new.meta(), moves), since)
        meta = new.meta()
        for move in moves:
            self._next(move, SWITCH, self.mover.clock(),
                       versions=self._versions(move, target, meta))

    def _config(self, held: Item | None, moves: list[Item]) -> EdgeConfig | None:
        """The config to publish with ``moves`` to a target whose version item is ``held``:
        their first source's, if the target's differs (a shard just added has none; one added
        again under a name drained before kept the config it had then, and the config changes
        since went only to the shards configured meanwhile). One read of a source's item."""
        for source in dict.fromkeys(str(move["source"]) for move in moves):
            meta = self.state.store(source).meta()
            if meta is not None and "config" in meta:
                if held is not None and held.get("config") == meta["config"]:
                    return None
                return EdgeConfig.from_json(meta["config"])
        return None

    def _versions(self, move: Item, shard: str, meta: Item | None) -> list[str]:
        """The move's versions with ``meta``'s (the shard's current one), if the shard holds
        the route (or the hostname has no route: its links moved alone)."""
        known = list(move.get("versions") or [])
        if meta is None:
            return known
        if self.state.holding(shard, move["hostname"]) is None and \
                self.state.holding(move["source"], move["hostname"]) is not None:
            return known
        for version in (str(meta["edge_version"]), meta_version(meta, OLDEST)):
            if version not in known:
                known.append(version)
        return known[-VERSIONS:]

    def held(self, move: Item, shards: ShardSet, nodes: list[Item] | None = None) -> bool:
        """Whether every node of the move's target holds its route: as many fresh reports as
        the registry lists nodes (at least one), each naming a version that holds it.
        ``nodes``: the target's reports, if read already."""
        versions = set(move.get("versions") or [])
        nodes = self.state.nodes(move["target"]) if nodes is None else nodes
        fresh = [node for node in nodes if node["last_seen_seconds"] <= self.mover.stale]
        wanted = max(1, len(shards.shards.get(move["target"], ())))
        return len(fresh) >= wanted and all(node.get("applied_version") in versions
                                            for node in fresh)

    def _switch(self, moves: list[Item], shards: ShardSet) -> None:
        """Point the router at the target of each move its nodes hold (one change of the
        map); the others wait a poll. The target's meta and reports are read once."""
        metas: dict[str, Item | None] = {}
        reports: dict[str, list[Item]] = {}
        entries: dict[str, str | None] = {}
        held = list[Item]()
        for move in moves:
            host, target = move["hostname"], move["target"]
            if target not in metas:
                metas[target] = self.state.store(target).meta()
                reports[target] = self.state.nodes(target)
            move = {**move, "versions": self._versions(move, target, metas[target])}
            if not self.held(move, shards, reports[target]):
                self._next(move, SWITCH, self.mover.clock() + self.mover.poll)
                continue
            # The default shard too gets an entry, and keeps it: a router refuses a delta that
            # takes off more than 30% of its entries (a shard drained), even one that was away
            # for longer than the grace and would see them taken off at once.
            entry = target if self.state.holding(target, host) is not None else None
            if self.state.router.holding(host) != entry:
                entries[host] = entry
            held.append(move)
        if entries:
            self.state.router.assign(entries)
        revision = self.state.router.mark() if held else 0
        for move in held:
            self._next(move, DROP, self.mover.clock() + self.mover.grace,
                       router_revision=revision)

    def _routers(self) -> list[Item]:
        """The routers that serve and report, read once a round: seen within ``stale``, their
        HAProxy running a map whose revision they say (an agent that says none has applied
        none, or is of a release before revisions: the grace alone decides for it)."""
        if self._serving is None:
            self._serving = [node for node in self.state.store(ROUTER).list_nodes()
                             if node["last_seen_seconds"] <= self.mover.stale
                             and node.get("haproxy_running")
                             and node.get("applied_revision") is not None]
        return self._serving

    def _switched(self, moves: list[Item]) -> list[Item]:
        """Those of ``moves`` whose switch every router holds: each router that serves and
        reports has applied the router map's revision that switched it, or a later one. The
        others wait, longer each time (up to the grace): a router behind still sends their
        visitors to the source. With no such router (none runs, or every one is away), the
        grace alone decides."""
        routers = self._routers()
        if not routers:
            return moves
        current: int | None = None
        ready = []
        for move in moves:
            if move.get("router_revision") is None:  # switched before routers said revisions
                current = self.state.router.mark() if current is None else current
                move = {**move, "router_revision": current}
            if all(int(node["applied_revision"]) >= int(move["router_revision"])
                   for node in routers):
                ready.append(move)
                continue
            wait = max(self.mover.poll, min(self.mover.grace, 2 * float(move.get("wait") or 0)))
            self._next(move, DROP, self.mover.clock() + wait, wait=wait,
                       router_revision=move["router_revision"])
        if len(ready) < len(moves):
            log.info("%d moves wait for the routers to apply their switch before the drop",
                     len(moves) - len(ready))
        return ready

    def _drop(self, source: str, moves: list[Item], shards: ShardSet) -> None:
        """Take the moves' routes and links off ``source`` (one change), then end them."""
        moves = self._switched(moves)
        if not moves:
            return
        routes: dict[str, RouteChange] = {}
        links: dict[str, RedirectChange] = {}
        for move in moves:
            if self.state.holding(source, move["hostname"]) is not None:
                routes[move["hostname"]] = None
            links.update({key: None for key in move["links"]})
        if routes or links:
            self.state.publish_to(source, routes, links)
        counted = Counter[Pair]()
        for move in moves:
            host, target = move["hostname"], move["target"]
            try:
                self.table.delete(move_key(host), expected_version=move[VERSION])
            except ConflictError:
                continue
            counted[(source, target)] -= 1
            log.info("%s moved from shard %s to %s", host, source, target)
            now = shards.assign(host)
            if now != target:  # the shard set changed again while this move ran
                counted.update(self.mover.enqueued(host, target, now, None, move["links"]))
        self.mover.count(counted)
        if counted and source in shards.draining:
            self.mover.drop_drained(shards)

    def _retarget(self, move: Item, shards: ShardSet) -> None:
        """The target stopped taking hostnames before the switch (removed right after it was
        added): take back what was published there, and move to the hostname's shard now, or
        nowhere if that is the source."""
        host, source, old = move["hostname"], move["source"], move["target"]
        self.state.publish_to(old, {host: None} if self.state.holding(old, host) is not None
                              else {}, {key: None for key in move["links"]})
        now = shards.assign(host)
        if now == source:
            try:
                self.table.delete(move_key(host), expected_version=move[VERSION])
            except ConflictError:
                return
        elif not self._next(move, PUBLISH, self.mover.clock(), target=now, versions=[]):
            return  # the lease ran out: the replica that took the move counts it
        self.mover.count(Counter({(source, old): -1, (source, now): 1 if now != source else 0}))
        if old in shards.draining:
            self.mover.drop_drained(shards)

    def _next(self, move: Item, step: str, due_at: float, **fields: Any) -> bool:
        """The move on to ``step``; False if its lease ran out and another replica took it."""
        try:
            self.table.put({**move, **fields, "step": step, "due_at": due_at},
                           expected_version=move[VERSION])
            return True
        except ConflictError:
            return False
