"""What a restore (``edgectl restore``) moves on in the edge's items, so that nothing the
replaced timeline handed out passes for the restored one's.

The restored revisions of the edge feeds may repeat those of the timeline the restore replaced,
which agents and routers still hold and report: every feed's version item (the default
shard's, each shard's, the router map's) moves on by ``TIMELINE_JUMP`` past the higher of the
two, compacted there, without the log of revisions it came with. So every agent and router
asking since one of them gets a snapshot, and a router's report of one (a router that has not
applied the restored map yet) is older than any shard move's switch: the moves restored in
flight are switched at the new revision, and the drop waits for that router as for any router
behind.
"""
from __future__ import annotations

from edge import feed_log
from edge.router_feed import ROUTER
from store import VERSION, Item, Table, all_items
from store.namespace import SEPARATOR

TIMELINE_JUMP = 2**32
"""About two million restores fit under 2**53, the bound the edge API puts on revisions."""
DESIRED = "desired"
UNLOGGED = (VERSION, feed_log.FROM, feed_log.COUNTS, feed_log.KEYS_FROM, feed_log.KEYS)


def revisions(state: Table) -> dict[str, int]:
    """Each feed's revision now, by its version item's key (read before the restore)."""
    return {str(meta["name"]): int(meta["revision"]) for meta in all_items(state) if _feed(meta)}


def after_restore(state: Table, moves: Table, before: dict[str, int]) -> int:
    """Move every feed on (see above); ``before``: :func:`revisions` of the store the restore
    replaced. Returns how many feeds moved."""
    moved: dict[str, int] = {}
    for meta in filter(_feed, all_items(state)):
        name = str(meta["name"])
        moved[name] = max(int(meta["revision"]), before.get(name, 0)) + TIMELINE_JUMP
        state.put({**{key: value for key, value in meta.items() if key not in UNLOGGED},
                   "revision": moved[name], "compacted_revision": moved[name]},
                  expected_version=meta[VERSION])
    router = moved.get(f"{ROUTER}{SEPARATOR}{DESIRED}")
    for move in all_items(moves) if router is not None else ():
        if move.get("router_revision") is not None:
            moves.put({key: value for key, value in move.items() if key != VERSION}
                      | {"router_revision": router}, expected_version=move[VERSION])
    return len(moved)


def _feed(item: Item) -> bool:
    """Whether ``item`` of ``edge_state`` is a feed's version item (in any namespace)."""
    return str(item["name"]).rpartition(SEPARATOR)[2] == DESIRED and "revision" in item
