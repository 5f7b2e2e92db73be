"""A shard's cold start at 1/K of the fleet (issue 29, "Figures").

Usage: python bench/cold_shards.py [--routes 10000] [--shards 4]

What runs, all in this one run, on loopback (bench/cold_start.py's control, agent and clock):
- sharded: one real control service (``edgectl serve``, SQLite) whose shard registry holds
  ``--shards`` shards; the ``--routes`` routes are committed through ``ShardedState.change``
  (what the publisher calls), so each lands in the shard the rendezvous hash assigns it. A real
  ``edgectl agent`` of the first shard (``EDGE_EDGE_SHARD``), beside its own HAProxy with an
  empty node, cold-starts: spawn until its HAProxy serves the shard's last host and the agent
  reported the shard's version. Its node must hold exactly the shard's hosts (its crt-list),
  and serve's store requests during that start are taken from its /metrics.
- baseline: a control service without shards holding only that shard's routes (a fleet the
  size of the shard, what a user would otherwise run), and its node's cold start.
- whole: a control service without shards holding all ``--routes``, and its node's cold start.
Expected: sharded / baseline near 1 (a shard's start does not grow with the fleet) and
sharded / whole near the shard's share of the fleet (1/K).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import conditions  # noqa: E402
from bench.cold_start import Agent, Control  # noqa: E402
from bench.node_scale import route  # noqa: E402
from edge.node import EdgeNode  # noqa: E402
from edge.shard_registry import EDGE_SHARDS, ShardRegistry  # noqa: E402
from edge.sharded_state import ShardedState  # noqa: E402
from edge.shards import ShardNode, ShardSet  # noqa: E402
from edge.state import EdgeConfig, Route  # noqa: E402
from kit.vault import KeyVault  # noqa: E402
from store.sqlite import SqliteBackend  # noqa: E402

SHARD = "s0"
"""The shard whose node cold-starts."""


def shard_names(count: int) -> list[str]:
    return [f"s{index}" for index in range(count)]


class ShardedControl(Control):
    """``edgectl serve`` whose registry holds ``count`` shards, the routes seeded per shard."""

    def __init__(self, directory: Path, routes: list[Route], count: int) -> None:
        self.count = count
        self.sizes: dict[str, int | None] = {}
        super().__init__(directory, routes)

    def seed(self, backend: SqliteBackend, vault: KeyVault, routes: list[Route]) -> str | None:
        """The shards added as ``edgectl shards add`` does, then the routes committed by
        ``ShardedState.change`` with the config serve published: the version of ``SHARD``."""
        registry = ShardRegistry(backend.table(EDGE_SHARDS))
        for index, name in enumerate(shard_names(self.count)):
            registry.put_shard(name, [ShardNode(f"127.0.0.{index + 2}", 8443, 8080)])
        state = ShardedState.from_backend(backend, vault, registry.load, 7 * 86400.0,
                                          time.time)
        meta = state.default.meta()
        config = EdgeConfig.from_json(meta["config"]) if meta and "config" in meta else None
        for start in range(0, len(routes), 1000):
            state.change({r.hostname: (r.publication_id, r.pem)
                          for r in routes[start:start + 1000]}, config)
        self.sizes = {name: state.size(name) for name in shard_names(self.count)}
        return state.store(SHARD).current_version()

    def store_requests(self) -> dict[str, float]:
        """serve's store requests so far, by table (its /metrics)."""
        text = requests.get(self.url + "/metrics", timeout=30).text
        by_table: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "edge_store_requests_by_table_total":
                    table = sample.labels["table"]
                    by_table[table] = by_table.get(table, 0.0) + sample.value
        return by_table


def node_hosts(agent: Agent) -> set[str]:
    """The hostnames the agent's node serves: its current release's files and journal."""
    return set(EdgeNode(agent.directory / "edge").existing_routes())


def sharded_start(root: Path, routes: list[Route], count: int
                  ) -> tuple[float, list[Route], dict[str, object]]:
    """The first shard's node cold start; its routes and what was checked on the way."""
    shard_set = ShardSet({name: () for name in shard_names(count)})
    mine = [r for r in routes if shard_set.assign(r.hostname) == SHARD]
    control = ShardedControl(root / "control-sharded", routes, count)
    agent = Agent(control, root / "sharded", "sharded", batch=True)
    agent.env["EDGE_EDGE_SHARD"] = SHARD
    try:
        print(f"control seeded with {len(routes):,} routes in {count} shards in "
              f"{control.seeded:.1f} s (not part of any figure); shard sizes {control.sizes}")
        if control.sizes[SHARD] != len(mine):
            raise SystemExit(f"shard {SHARD} holds {control.sizes[SHARD]} routes, "
                             f"the hash assigns it {len(mine)}")
        before = control.store_requests()
        took = agent.cold_start(mine, "sharded")
        after = control.store_requests()
        applied = len(node_hosts(agent))
        if node_hosts(agent) != {r.hostname for r in mine}:
            raise SystemExit(f"the shard's node serves {applied} hosts, not exactly its "
                             f"shard's {len(mine)}")
    finally:
        agent.stop()
        control.stop()
    reads = {table: round(value - before.get(table, 0.0))
             for table, value in sorted(after.items()) if value - before.get(table, 0.0)}
    print(f"cold start, node of shard {SHARD} ({len(mine):,} of {len(routes):,} routes, "
          f"{applied:,} hosts applied): {took:.1f} s; serve's store requests meanwhile "
          f"(its worker's too): {reads}")
    return took, mine, {"shard_routes": len(mine), "shard_hosts_applied": applied,
                        "shard_store_requests_by_table": reads}


def plain_start(root: Path, routes: list[Route], label: str) -> float:
    """A node's cold start against a control service without shards holding ``routes``."""
    control = Control(root / f"control-{label}", routes)
    agent = Agent(control, root / label, label, batch=True)
    try:
        took = agent.cold_start(routes, label)
    finally:
        agent.stop()
        control.stop()
    print(f"cold start, {label}: one node of {len(routes):,} routes, no shards: {took:.1f} s")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--routes", type=int, default=10_000, help="the fleet's routes")
    parser.add_argument("--shards", type=int, default=4, help="how many shards share them")
    args = parser.parse_args()
    if args.shards < 2 or args.routes < 10 * args.shards:
        parser.error("--shards needs 2 or more, and --routes at least 10 per shard")
    conditions.print_conditions()
    started = time.perf_counter()
    routes = [route(n) for n in range(args.routes)]
    print(f"{args.routes:,} certificates made in {time.perf_counter() - started:.1f} s "
          "(not part of any figure)")
    with tempfile.TemporaryDirectory(prefix="cold-shards-") as tmp:
        root = Path(tmp)
        sharded, mine, checked = sharded_start(root, routes, args.shards)
        baseline = plain_start(root, mine, "baseline")
        whole = plain_start(root, routes, "whole")
    print(f"shard / baseline (a fleet the shard's size): {sharded / baseline:.2f}; "
          f"shard / whole fleet: {sharded / whole:.2f} (its share: "
          f"{len(mine) / len(routes):.2f}, 1/K = {1 / args.shards:.2f})")
    conditions.record("cold_shards", {
        "routes": args.routes, "shards": args.shards, **checked,
        "cold_start_shard_s": round(sharded, 2), "cold_start_baseline_s": round(baseline, 2),
        "cold_start_whole_s": round(whole, 2),
        "shard_over_baseline": round(sharded / baseline, 2),
        "shard_over_whole": round(sharded / whole, 2),
        "shard_share": round(len(mine) / len(routes), 3)})


if __name__ == "__main__":
    main()
