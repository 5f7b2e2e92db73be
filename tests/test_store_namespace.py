"""The namespaced view keeps the whole table contract, on every backend, beside other
namespaces' items that use the same keys and index values."""
from __future__ import annotations

import pytest

from store import Backend, Table, all_items, every
from store.namespace import namespaced
from tests.test_store_contract import (SPEC, test_a_counter_of_existing_items_only_leaves_no_orphan,
                                       test_atomic_counter_under_concurrency,
                                       test_conditional_put_on_absent,
                                       test_conditional_put_on_version,
                                       test_counter_alone_does_not_create_item,
                                       test_delete_plain_and_conditional,
                                       test_expired_items_are_absent_everywhere,
                                       test_only_one_of_racing_writers_wins,
                                       test_put_get_roundtrip_bumps_version,
                                       test_query_by_index_pages_and_follows_updates,
                                       test_range_query_follows_updates_deletes_and_expiry,
                                       test_range_query_orders_bounds_and_pages,
                                       test_scan_lists_everything)

CONTRACT = (test_a_counter_of_existing_items_only_leaves_no_orphan,
            test_atomic_counter_under_concurrency, test_conditional_put_on_absent,
            test_conditional_put_on_version, test_counter_alone_does_not_create_item,
            test_delete_plain_and_conditional, test_expired_items_are_absent_everywhere,
            test_only_one_of_racing_writers_wins, test_put_get_roundtrip_bumps_version,
            test_query_by_index_pages_and_follows_updates,
            test_range_query_follows_updates_deletes_and_expiry,
            test_range_query_orders_bounds_and_pages, test_scan_lists_everything)
"""Run here again, each on a namespace of a table that other namespaces share."""
NOISE = [{"id": name, "owner": owner, "status": status, "next_at": at}
         for name in ("a", "k0", "d1", "s0", "c", "ghost", "gone", "old", "race")
         for owner, status, at in (("o1", "pending", 1.0), ("o", "active", 2.0))]


@pytest.fixture(params=["s1", ""])
def table(request: pytest.FixtureRequest, backend: Backend) -> Table:
    """The view of namespace ``s1`` (or the items of none), with the same keys and index
    values written in the other namespaces first."""
    raw = backend.table(SPEC)
    others = ["", "s2"] if request.param else ["s2"]
    for ns in others:
        view = namespaced(raw, ns)
        for item in NOISE:
            view.put(item)
    return namespaced(raw, request.param)


def test_keys_and_index_values_carry_the_namespace(backend: Backend) -> None:
    raw = backend.table(SPEC)
    view = namespaced(raw, "s1")
    stored = view.put({"id": "a", "owner": "o1", "status": "pending", "next_at": 3.0,
                       "other": "o1"})
    assert stored["id"] == "a" and stored["owner"] == "o1"
    assert raw.get("s1|a") == {"id": "s1|a", "owner": "s1|o1", "status": "s1|pending",
                               "next_at": 3.0, "other": "o1", "version": stored["version"]}
    assert raw.get("a") is None and raw.query("owner", "o1").items == []
    namespaced(raw, "").put({"id": "a", "owner": "o1"})
    assert [item["id"] for item in all_items(raw)] == ["a", "s1|a"]
    assert [item["id"] for item in all_items(namespaced(raw, ""))] == ["a"]
    assert [item["id"] for item in all_items(view)] == ["a"]
    assert (view.get("a") or {})["version"] == stored["version"]
    assert (raw.get("a") or {})["owner"] == "o1"


def test_a_listed_namespace_is_scanned_through_its_index_at_the_cost_of_its_share(
        backend: Backend) -> None:
    """A shard's snapshot reads its own routes, however many the other shards hold."""
    raw = backend.table(SPEC)
    listed = namespaced(raw, "s1", listing=("due", "feed"))
    for n in range(3):
        listed.put({"id": f"k{n}", "status": "feed", "next_at": float(n)})

    def scan_cost() -> tuple[list[str], int]:
        before = backend.requests
        ids = sorted(item["id"] for item in every(lambda c: listed.scan(limit=10, cursor=c)))
        return ids, backend.requests - before

    small = scan_cost()
    other = namespaced(raw, "s2", listing=("due", "feed"))
    for n in range(60):
        other.put({"id": f"k{n}", "status": "feed", "next_at": float(n)})
    assert scan_cost() == small and small[0] == ["k0", "k1", "k2"]
    assert sorted(i["id"] for i in all_items(namespaced(raw, "", ("due", "feed")))) == [], \
        "the plain keys' view scans the table (its old items may lack the index key)"


def test_a_namespace_cannot_hold_the_separator(backend: Backend) -> None:
    with pytest.raises(ValueError):
        namespaced(backend.table(SPEC), "a|b")


for _test in CONTRACT:  # collected under this module's ``table`` fixture
    globals()[_test.__name__] = _test
