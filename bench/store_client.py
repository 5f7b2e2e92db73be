"""The store's DynamoDB client: CPU a request in the process that sends it, the store's item
client (store/dynamo_wire.py) against botocore's, the client a user would pick.

Usage: python bench/store_client.py [--items 2000] [--rounds 3]

Starts dynalite (DynamoDB over HTTP, in its memory), opens one table of the store's layout
(two indexes) and drives the store's own calls (``DynamoTable``: ``put`` an UpdateItem,
``get`` a GetItem, ``get_many`` BatchGetItems of 100, ``query`` a Query on an index) over
``--items`` different items, once through each client, alternating, ``--rounds`` times. The
figure is this process's CPU time (``time.process_time``) per request, the best round of each
(the server's CPU is dynalite's, the same for both); the wall time per request is printed too.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import boto3

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.conditions import print_conditions, record  # noqa: E402
from devtools.dynalite import start_dynalite  # noqa: E402
from store import TableSpec  # noqa: E402
from store.dynamo import DynamoBackend, DynamoTable, client_config  # noqa: E402

SPEC = TableSpec("bench_things", key="id", indexes=("owner",))


def steps(table: DynamoTable, items: int) -> dict[str, Callable[[], int]]:
    """Each step sends its requests and says how many it sent."""
    keys = [f"item-{n:06d}" for n in range(items)]

    def put() -> int:
        for n, key in enumerate(keys):
            table.put({"id": key, "owner": f"owner-{n % 50}", "target": f"https://example.com/{n}"})
        return len(keys)

    def get() -> int:
        for key in keys:
            assert table.get(key) is not None
        return len(keys)

    def get_many() -> int:
        for start in range(0, len(keys), 100):
            assert len(table.get_many(keys[start:start + 100])) == len(keys[start:start + 100])
        return (len(keys) + 99) // 100

    def query() -> int:
        for n in range(50):
            assert table.query("owner", f"owner-{n}", limit=10).items
        return 50
    return {"put": put, "get": get, "get_many": get_many, "query": query}


def measure(step: Callable[[], int]) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    sent = step()
    return (time.process_time() - cpu) / sent, (time.perf_counter() - wall) / sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    measured = print_conditions()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")  # dynalite checks none
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    with tempfile.TemporaryDirectory() as tmp:
        dynalite, url = start_dynalite(Path(tmp))
        try:
            client = boto3.client("dynamodb", endpoint_url=url,
                                  region_name="us-east-1", config=client_config())
            backend = DynamoBackend(client, prefix="bench_")
            ours = backend.table(SPEC)
            clients: dict[str, Any] = {
                "store/dynamo_wire.py": ours,
                "botocore": DynamoTable(client, ours.name, SPEC)}  # the same table
            best: dict[tuple[str, str], tuple[float, float]] = {}
            for _ in range(args.rounds):
                for name, table in clients.items():
                    for step, run in steps(table, args.items).items():
                        cpu, wall = measure(run)
                        seen = best.get((name, step))
                        if seen is None or cpu < seen[0]:
                            best[(name, step)] = (cpu, wall)
            backend.close()
        finally:
            dynalite.stop()
    figures: dict[str, Any] = {"items": args.items, "rounds": args.rounds}
    print(f"{'request':<10} {'wire CPU':>10} {'botocore CPU':>13} {'ratio':>6} "
          f"{'wire wall':>10} {'botocore wall':>14}")
    for step in ("put", "get", "get_many", "query"):
        wire, boto = best[("store/dynamo_wire.py", step)], best[("botocore", step)]
        ratio = boto[0] / wire[0]
        print(f"{step:<10} {wire[0] * 1e6:>8.0f}us {boto[0] * 1e6:>11.0f}us {ratio:>5.2f}x "
              f"{wire[1] * 1e6:>8.0f}us {boto[1] * 1e6:>12.0f}us")
        figures[f"{step}_client_cpu"] = {"value": round(wire[0] * 1e6), "unit": "us",
                                         "baseline": round(boto[0] * 1e6),
                                         "ratio": round(ratio, 2)}
    record("store_client", figures, measured)


if __name__ == "__main__":
    main()
