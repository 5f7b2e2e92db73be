"""The kept counts of domains by status (domains/counts.py): the first process to open a store
counts what is there, and a new store's first open asks no index for it."""
from __future__ import annotations

import time

from control.wiring import Services
from domains.counts import DOMAIN_COUNTS
from domains.repository import ACTIVE, PENDING_DNS, SUSPENDED
from kit.settings import Settings
from store.dynamo import DynamoBackend
from tests.conftest import ServicesWith, dynamodb_is_slow


def _domain(services: Services, n: int, status: str, error: str | None = None) -> None:
    item = services.domains._claim(f"d{n}.counted.test", "pub_1", time.time(), None)
    services.domains.repository.create({**item, "status": status,
                                         **({"last_error": error} if error else {})})


@dynamodb_is_slow
def test_the_first_open_of_a_store_without_counts_counts_what_is_there(
        any_backend: Settings, services_with: ServicesWith) -> None:
    """A store from before the counts (its counts table empty) with domains in three statuses,
    two failing: the next process to open it counts them."""
    first = services_with(base=any_backend, max_pending_domains=0)
    for n, (status, error) in enumerate([(ACTIVE, None), (ACTIVE, None), (PENDING_DNS, "nxdomain"),
                                         (SUSPENDED, "gone")]):
        _domain(first, n, status, error)
    counts = first.backend.table(DOMAIN_COUNTS)
    for name in ("by_status", "failing"):
        counts.delete(name)
    reopened = services_with(base=any_backend, max_pending_domains=0)
    by_status = reopened.domains.repository.by_status()
    assert {s: c for s, c in by_status.items() if c} == {ACTIVE: 2, PENDING_DNS: 1, SUSPENDED: 1}
    assert reopened.domains.repository.failing() == 2


def test_a_new_stores_first_open_asks_no_index_and_counts_from_zero(
        dynalite: str, settings: Settings, services_with: ServicesWith) -> None:
    """On DynamoDB, counting a status is a query per spread key: 204 queries for the six
    statuses and the failing ones. A new store has nothing to count (one scan of a page of
    one says so), and a server without TTL is asked once whether it has it, not per table."""
    services = services_with(storage_backend="dynamodb", dynamodb_endpoint_url=dynalite,
                             dynamodb_table_prefix=f"n{time.time_ns()}_")
    backend = services.backend
    assert isinstance(backend, DynamoBackend)
    queries = {table: n for (table, operation), n in backend.operations.items()
               if operation == "Query"}
    assert queries == {}, "a new store's first open asks no index"
    assert backend.operations[("domains", "Scan")] == 1
    assert sum(n for (_, operation), n in backend.operations.items()
               if operation == "UpdateTimeToLive") == 1, "dynalite has no TTL: asked once"
    _domain(services, 0, ACTIVE)
    assert services.domains.repository.by_status()[ACTIVE] == 1
