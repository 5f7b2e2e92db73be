"""DynamoDB requests per operation, counted at the wire, and the capacity model built on them.

Usage: python bench/store_requests.py [--recheck-hours 1] [--validity-days 90]

Starts dynalite (DynamoDB over HTTP), Pebble (short-lived certificates, so a renewal happens
within seconds) and challtestsrv, then drives one domain through its life with the control
service's own objects: connect, verification, issuance, an edge node's delta and certificate
download, a recheck at rest, a renewal, a short link's visit flush, an idle worker round (and
one at the due hints' window, when every idle index is asked) and a removal. Every DynamoDB
call is counted by operation name through botocore's event hook, as reads (GetItem, Query,
...) or writes (PutItem, UpdateItem, TransactWriteItems, ...).

Write units are not counted by the server (dynalite bills nothing): they are modelled, item
by item, from the item as it was before and after each write and the table's global secondary
indexes (bench/write_units.py states the rules): the table's units, one per KB (two in a
transaction), and each index's, where the item enters, leaves or moves (a changed index key
is a delete and a put, two writes). DynamoDB bills every index write, so a recheck costs its
table writes and several times as many on indexes. Read counts are requests, not units.

The last part prints the capacity model for 100,000 and 1,000,000 domains with 10 edge nodes
from those counts: requests per second at rest and in a renewal wave, and the monthly
DynamoDB on-demand bill (us-east-1 prices, $0.625 per million write request units and $0.125
per million read request units).
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import boto3
from cryptography.fernet import Fernet
from werkzeug.serving import make_server

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from admin_app import create_app  # noqa: E402
from bench.conditions import print_conditions, record  # noqa: E402
from bench.write_units import item_size, write_units  # noqa: E402
from store.dynamo_schema import EXPIRY_INDEX  # noqa: E402
from control.wiring import Services  # noqa: E402
from domains.due_hints import WINDOW  # noqa: E402
from devtools.pebble import PebbleStack  # noqa: E402
from kit.procs import ManagedProcess, free_port, wait_for_port  # noqa: E402
from kit.settings import load_settings  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
READS = {"GetItem", "Query", "Scan", "BatchGetItem", "TransactGetItems"}
WRITES = {"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"}
WRITE_PRICE, READ_PRICE = 0.625e-6, 0.125e-6
MONTH = 30 * 86400


@dataclasses.dataclass
class Cost:
    reads: int = 0
    writes: int = 0
    """Write units on the tables: one per started KB of the larger of the item before and
    after, two for an item of a TransactWriteItems, as DynamoDB bills them."""
    index_writes: int = 0
    """Write units on the tables' global secondary indexes (bench/write_units.py)."""
    calls: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    indexes: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    """Index write units by ``table.index``."""
    sizes: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    """The largest item written, in bytes, by table."""

    @property
    def write_units(self) -> int:
        return self.writes + self.index_writes

    def __str__(self) -> str:
        calls = ", ".join(f"{name} {n}" for name, n in sorted(self.calls.items()))
        text = (f"{self.reads} reads, {self.write_units} write units = {self.writes} on tables"
                f" + {self.index_writes} on indexes ({calls})")
        if self.indexes:
            text += "\n    indexes: " + ", ".join(
                f"{name} {n}" for name, n in sorted(self.indexes.items()))
            text += "\n    largest item written: " + ", ".join(
                f"{name} {size:,} B" for name, size in sorted(self.sizes.items()))
        return text


class Meter:
    """Counts the DynamoDB calls a block makes through ``backend``, by operation, and the
    write units of its writes, indexes included: each written item is read before and after
    the write through ``reader``, a client of its own (uncounted), and billed by the model of
    bench/write_units.py against the table's indexes as ``describe_table`` gives them. The
    backend sends every request through its one client (store/dynamo_wire.py), metered here."""

    def __init__(self, backend: Any, reader: Any, prefix: str) -> None:
        self.current: Cost | None = None
        self.prefix = prefix
        self._reader = reader
        self._indexes: dict[str, list[dict[str, Any]]] = {}
        client, send = backend._client, backend._client.call

        def call(operation: str, params: dict[str, Any]) -> dict[str, Any]:
            before = self._before(operation, params)
            failed = True
            try:
                answer = send(operation, params)
                failed = False
                return answer
            finally:
                self._after(before, failed)
        client.call = call

    def _before(self, operation: str, params: dict[str, Any]) -> list[Any] | None:
        """Count the call; for a write, each item it touches as it is before."""
        if self.current is None or operation in ("DescribeTable", "ListTables"):
            return None
        self.current.calls[operation] += 1
        if operation in READS:
            self.current.reads += 1
        elif operation in WRITES:
            return [(*touched, self._read(touched[0], touched[1]))
                    for touched in _touched(operation, params)]
        return None

    def _after(self, before: list[Any] | None, failed: bool) -> None:
        cost = self.current
        if cost is None or before is None:
            return
        for table, key, transactional, changes, old in before:
            new = self._read(table, key) if changes and not failed else old
            table_units, index_units = write_units(
                self._index_list(table), "pk", old, new, transactional, not changes or failed)
            cost.writes += table_units
            cost.sizes[table.removeprefix(self.prefix)] = max(
                cost.sizes[table.removeprefix(self.prefix)], item_size(new or old))
            for index, n in index_units.items():
                cost.index_writes += n
                cost.indexes[f"{table.removeprefix(self.prefix)}.{index}"] += n

    def _read(self, table: str, key: dict[str, Any]) -> dict[str, Any] | None:
        item = self._reader.get_item(TableName=table, Key=key, ConsistentRead=True)
        return item.get("Item")

    def _index_list(self, table: str) -> list[dict[str, Any]]:
        if table not in self._indexes:
            described = self._reader.describe_table(TableName=table)["Table"]
            self._indexes[table] = [  # dynalite's stand-in for TTL: DynamoDB has none
                index for index in described.get("GlobalSecondaryIndexes", [])
                if index["IndexName"] != EXPIRY_INDEX]
        return self._indexes[table]

    def measure(self, step: Callable[[], object]) -> Cost:
        self.current = cost = Cost()
        try:
            step()
        finally:
            self.current = None
        return cost


def _touched(operation: str, params: dict[str, Any]) -> list[tuple[str, Any, bool, bool]]:
    """(table, key, transactional, changes) of each item a write names: a transaction's
    condition check is billed as a write of its item that changes nothing."""
    if operation == "PutItem":
        return [(params["TableName"], {"pk": params["Item"]["pk"]}, False, True)]
    if operation in ("UpdateItem", "DeleteItem"):
        return [(params["TableName"], params["Key"], False, True)]
    found: list[tuple[str, Any, bool, bool]] = []
    for table, entries in params.get("RequestItems", {}).items():  # BatchWriteItem
        for entry in entries:
            put = entry.get("PutRequest")
            key = {"pk": put["Item"]["pk"]} if put else entry["DeleteRequest"]["Key"]
            found.append((table, key, False, True))
    for entry in params.get("TransactItems", []):
        for kind, part in entry.items():
            key = {"pk": part["Item"]["pk"]} if "Item" in part else part["Key"]
            found.append((part["TableName"], key, True, kind != "ConditionCheck"))
    return found


def per_second(cost: Cost, times_per_second: float) -> tuple[float, float]:
    return cost.reads * times_per_second, cost.write_units * times_per_second


def dollars(reads_per_s: float, writes_per_s: float) -> float:
    return (reads_per_s * READ_PRICE + writes_per_s * WRITE_PRICE) * MONTH


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recheck-hours", type=float, default=1.0,
                        help="recheck_seconds of the model, in hours (default 1)")
    parser.add_argument("--validity-days", type=int, default=90)
    args = parser.parse_args()
    print_conditions()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")  # dynalite checks none
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # Pebble's challenge fetches
    with tempfile.TemporaryDirectory() as tmp:
        port, http_port = free_port(), free_port()
        dynalite = ManagedProcess("dynalite", [
            str(ROOT / "node_modules" / ".bin" / "dynalite"), "--host", "127.0.0.1",
            "--port", str(port)], Path(tmp) / "dynalite.log")
        pebble = PebbleStack(Path(tmp) / "pebble", http_port=http_port, validity_seconds=9,
                             env={"PEBBLE_WFE_NONCEREJECT": "0"})
        try:
            wait_for_port(port, process=dynalite)
            settings = load_settings(
                env={}, api_token="bench-token-0123456789", edge_token="bench-edge-0123456789",
                encryption_keys=Fernet.generate_key().decode(), data_dir=tmp,
                storage_backend="dynamodb", dynamodb_endpoint_url=f"http://127.0.0.1:{port}",
                acme_directory_url=pebble.directory_url, acme_ca_bundle=str(pebble.listener_ca),
                dns_servers=["127.0.0.1"], dns_port=pebble.dns_port, recheck_seconds=3600,
                edge_cname_target="edge.platform.test", edge_addresses=["127.0.0.1"],
                short_domains=["go.bench.test"])
            services = Services.from_settings(settings)
            server = make_server("127.0.0.1", http_port, create_app(services), threaded=True)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            try:
                reader = boto3.client("dynamodb", endpoint_url=f"http://127.0.0.1:{port}",
                                      region_name=settings.dynamodb_region)
                costs = drive(services, pebble, Meter(services.backend, reader,
                                                     settings.dynamodb_table_prefix))
            finally:
                server.shutdown()
                services.close()
        finally:
            pebble.stop()
            dynalite.stop()
    print("write units are a model (bench/write_units.py): the items' sizes before and after "
          "each write and the tables' indexes, by DynamoDB's published rules; reads are requests")
    for name, cost in costs.items():
        print(f"{name}: {cost}")
    modelled = model(costs, args.recheck_hours * 3600, args.validity_days)
    record("store_requests", {
        "operations": {name: {"reads": cost.reads, "write_units": cost.write_units,
                              "table_write_units": cost.writes,
                              "index_write_units": cost.index_writes}
                       for name, cost in costs.items()},
        "model": modelled})


def drive(services: Services, pebble: PebbleStack, meter: Meter) -> dict[str, Cost]:
    costs: dict[str, Cost] = {}
    hostname = "one.bench.test"
    services.lifecycle.publish_routes()  # the reconciliation at start
    services.edge_state.report("edge-1", services.edge_state.current_version(), None, True)
    domain = {}

    def connect() -> None:
        domain.update(services.domains.connect(hostname, "pub_1")[0])
    costs["connect"] = meter.measure(connect)
    pebble.set_txt(f"_edge-challenge.{hostname}", domain["token"])
    costs["verification"] = meter.measure(
        lambda: domain.update(services.lifecycle.verify(services.domains.get(hostname))))
    revision = services.edge_state.meta()["revision"]  # type: ignore[index]
    costs["issuance and activation"] = meter.measure(
        lambda: domain.update(services.lifecycle.issue(domain)))
    assert services.domains.get(hostname)["status"] == "active"
    costs["an agent's delta"] = meter.measure(lambda: services.edge_state.changes_since(revision))
    costs["an agent's idle watch (one return)"] = meter.measure(
        services.edge_state.current_version)
    costs["certificate download"] = meter.measure(lambda: services.edge_state.certificate(hostname))

    def recheck() -> None:
        """What the worker does with a domain its ``due`` query returned."""
        leased = services.domains.lease(due, "bench", 60)
        assert leased is not None
        services.lifecycle.recheck(leased)
    due = services.domains.get(hostname)
    recheck()  # the first asks the CA for its renewal time and keeps it for 6 hours
    due = services.domains.get(hostname)
    costs["recheck at rest (leased)"] = meter.measure(recheck)
    first = services.certificates.get(hostname)
    time.sleep(6.5)  # past two thirds of Pebble's nine seconds
    due = services.domains.get(hostname)
    costs["renewal"] = meter.measure(recheck)
    renewed = services.certificates.get(hostname)
    assert first is not None and renewed is not None and renewed.serial != first.serial
    link = services.links.create("go.bench.test", "https://example.org/", "pub_1", slug="read")
    costs["link visit flush (one link)"] = meter.measure(
        lambda: services.links.add_visits({link["id"]: 3}))
    services.lifecycle.tick()
    time.sleep(services.domains.repository.hints.lag)  # the due hints settle (due_hints.py)
    services.lifecycle.tick()
    costs["idle worker round"] = meter.measure(services.lifecycle.tick)
    time.sleep(WINDOW)  # each index is asked at least once a window (domains/due_hints.py)
    costs["idle worker round at the window"] = meter.measure(services.lifecycle.tick)
    costs["a due index asked"] = meter.measure(lambda: services.domains.due("active"))
    costs["removal"] = meter.measure(lambda: services.lifecycle.remove(hostname))
    return costs


def model(costs: dict[str, Cost], recheck_seconds: float,
          validity_days: int) -> dict[str, dict[str, float]]:
    nodes, replicas, worker_interval, watch_seconds = 10, 2, 2.0, 5.0
    recheck, renewal = costs["recheck at rest (leased)"], costs["renewal"]
    # An idle worker round per replica, what its round at the window asks more, and its ask
    # of the active domains' due index (a fleet this size has rechecks due every round;
    # domains/due_hints.py skips only idle indexes); each agent's watch returning; and each
    # replica's watch thread reading the version item every 0.5 s while agents wait
    # (edge/watch.py).
    idle, at_window = costs["idle worker round"], costs["idle worker round at the window"]
    window_more = Cost(at_window.reads - idle.reads, at_window.writes - idle.writes,
                       at_window.index_writes - idle.index_writes)
    rest_fixed = (per_second(idle, replicas / worker_interval),
                  per_second(window_more, replicas / WINDOW),
                  per_second(costs["a due index asked"], replicas / worker_interval),
                  per_second(costs["an agent's idle watch (one return)"], nodes / watch_seconds),
                  per_second(costs["an agent's idle watch (one return)"], replicas / 0.5))
    fixed_reads = sum(r for r, _ in rest_fixed)
    fixed_writes = sum(w for _, w in rest_fixed)
    print(f"model: {nodes} edge nodes, {replicas} replicas, {worker_interval:g} s worker interval, "
          f"rechecks every {recheck_seconds / 3600:g} h, {validity_days}-day certificates "
          f"renewed at two thirds")
    modelled = {}
    for n in (100_000, 1_000_000):
        reads, writes = per_second(recheck, n / recheck_seconds)
        reads, writes = reads + fixed_reads, writes + fixed_writes
        renewals_per_day = n / (validity_days * 2 / 3)
        wave_reads, wave_writes = per_second(renewal, renewals_per_day / 86400)
        wave = per_second(costs["an agent's delta"], renewals_per_day / 86400 * nodes)
        download = per_second(costs["certificate download"], renewals_per_day / 86400 * nodes)
        renew_reads = wave_reads + wave[0] + download[0]
        renew_writes = wave_writes + wave[1] + download[1]
        bill = dollars(reads + renew_reads, writes + renew_writes)
        print(f"{n:,} domains: at rest {reads:,.1f} reads/s, {writes:,.1f} write units/s; "
              f"renewals {renewals_per_day:,.0f} a day add {renew_reads:,.2f} reads/s, "
              f"{renew_writes:,.2f} write units/s (a wave 10x that: "
              f"{10 * renew_reads:,.1f} and {10 * renew_writes:,.1f}); "
              f"DynamoDB on demand about ${bill:,.0f} a month")
        modelled[f"{n}"] = {"reads_per_s": round(reads, 1), "write_units_per_s": round(writes, 1),
                            "renewal_reads_per_s": round(renew_reads, 2),
                            "renewal_write_units_per_s": round(renew_writes, 2),
                            "dollars_per_month": round(bill)}
    return modelled


if __name__ == "__main__":
    main()
