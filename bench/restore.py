"""`edgectl restore` into DynamoDB: items written a second, item by item against batched.

Usage: python bench/restore.py [--items 20000] [--writers 8]

Starts dynalite (DynamoDB over HTTP, LevelDB on a scratch directory), writes a backup of
``--items`` items over three tables (indexed, spread and range attributes, expiring items,
counters, counters without an item) from a SQLite store, and restores it twice into fresh
table prefixes of that one dynalite: the way before batches (each item through the table's
``put`` then an UpdateItem of its version, text and counters: two sequential requests) and
the way ``store/backup_stores.py`` writes now (whole items, 25 to a BatchWriteItem,
``--writers`` at once). Each restore is timed from its first write to the last one
acknowledged (the tables are opened before). dynalite is one Node process: the batched way is
bound by its CPU here, and by the tables' write capacity on DynamoDB, where a round trip is
also longer (some 5-10 ms from inside the region against well under 1 ms on loopback), which
the item-by-item way pays twice per item.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.conditions import print_conditions, record  # noqa: E402
from devtools.dynalite import start_dynalite  # noqa: E402
from store import RangeIndex, TableSpec  # noqa: E402
from store.backup import Stored, restore_backup, take_backup  # noqa: E402
from store.backup_stores import DynamoTarget, SqliteSource  # noqa: E402
from store.dynamo import RETRIES, DynamoBackend  # noqa: E402
from store.sqlite import SqliteBackend  # noqa: E402

SPECS = (
    TableSpec("bench_domains", key="hostname", indexes=("status", "owner"),
              ranges=(RangeIndex("due", "status", "due_at"),), spread=("status",)),
    TableSpec("bench_sessions", key="id", indexes=("user",), expiring=True),
    TableSpec("bench_links", key="slug", indexes=("domain",)),
)


class ItemByItem(DynamoTarget):
    """The restore before batches: ``put``, then the version, text and counters set back."""

    def load(self, spec: TableSpec, stored: Stored) -> None:
        table = self._table(spec)
        names: dict[str, str] = {}
        values: dict[str, Any] = {}
        if stored.data is not None:
            table.put(json.loads(stored.data))
            names.update({"#v": "version", "#d": "data"})
            values.update({":v": {"N": str(stored.version)}, ":d": {"S": stored.data}})
        for n, (name, value) in enumerate(stored.counters.items()):
            names[f"#c{n}"] = f"c_{name}"
            values[f":c{n}"] = {"N": str(value)}
        if names:
            table._call("update_item", Key={"pk": {"S": stored.key}},
                        UpdateExpression="SET " + ", ".join(
                            f"{name} = :{name[1:]}" for name in names),
                        ExpressionAttributeNames=names, ExpressionAttributeValues=values)


def write_backup(directory: Path, items: int) -> Path:
    """A backup of ``items`` items: half domains, a quarter sessions, a quarter links."""
    store = SqliteBackend(str(directory / "source.db"))
    domains, sessions, links = (store.table(spec) for spec in SPECS)
    now = time.time()
    for n in range(items // 2):
        domains.put({"hostname": f"d{n}.example", "owner": f"pub_{n % 97}", "n": n,
                     "status": ("active", "pending", "failed")[n % 3],
                     "due_at": now + n, "note": "x" * 120})
        if n % 5 == 0:
            domains.increment(f"d{n}.example", "visits", n)
    for n in range(items // 4):
        sessions.put({"id": f"s{n}", "user": f"u{n % 211}", "expires_at": now + 86400})
    for n in range(items - items // 2 - items // 4):
        if n % 10 == 0:
            links.increment(f"gone{n}", "visits", 3)
        else:
            links.put({"slug": f"l{n}", "domain": f"go{n % 7}.example"})
    store.close()
    source = SqliteSource(str(directory / "source.db"))
    try:
        take_backup(source, SPECS, directory / "bench.backup", "bench")
    finally:
        source.close()
    return directory / "bench.backup"


def timed(target: DynamoTarget, path: Path) -> float:
    for spec in SPECS:
        target._table(spec)  # the tables exist before the clock starts
    started = time.perf_counter()
    restore_backup(target, SPECS, path)
    return time.perf_counter() - started


def backend(endpoint: str) -> DynamoBackend:
    client = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1",
                          config=Config(retries=RETRIES,  # type: ignore[arg-type]
                                        max_pool_connections=64))
    found = DynamoBackend(client, prefix=f"b{uuid.uuid4().hex[:8]}_")
    found.spread_keys()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=20000)
    parser.add_argument("--writers", type=int, default=8)
    args = parser.parse_args()
    measured = print_conditions()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")  # dynalite checks none
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    with tempfile.TemporaryDirectory() as tmp:
        path = write_backup(Path(tmp), args.items)
        dynalite, endpoint = start_dynalite(Path(tmp), path=Path(tmp) / "dynalite")
        try:
            old, new = backend(endpoint), backend(endpoint)
            before = timed(ItemByItem(old), path)
            after = timed(DynamoTarget(new, writers=args.writers), path)
            requests = (old.requests, new.requests)
            old.close()
            new.close()
        finally:
            dynalite.stop()
    rates = (args.items / before, args.items / after)
    print(f"restore of {args.items} items into dynalite: item by item {before:.1f} s "
          f"({rates[0]:.0f} items/s, {requests[0]} requests), batched {after:.1f} s "
          f"({rates[1]:.0f} items/s, {requests[1]} requests, {args.writers} writers): "
          f"{rates[1] / rates[0]:.1f}x")
    record("restore", {
        "item_by_item": {"value": round(rates[0]), "unit": "items/s"},
        "batched": {"value": round(rates[1]), "unit": "items/s", "baseline": round(rates[0]),
                    "ratio": round(rates[1] / rates[0], 1)},
        "items": args.items, "writers": args.writers}, measured)


if __name__ == "__main__":
    main()
