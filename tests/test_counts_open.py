"""The first open of a store without kept counts recounts what is there (domains/counts.py);
a process killed during that recount leaves its lease on the counts, and the first open after
the lease ran out recounts, so the counts do not stay at zero."""
from __future__ import annotations

import time

import pytest

from control.wiring import Services
from domains.counts import DOMAIN_COUNTS, StatusCounts
from domains.repository import PENDING_DNS
from kit.settings import Settings
from tests.conftest import dynamodb_is_slow

DAY = 86400


class Killed(BaseException):
    """The process died here: nothing after this point runs and no handler catches it."""


@dynamodb_is_slow
def test_a_recount_cut_short_at_the_first_open_is_done_again_after_its_lease(
        any_backend: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store from before the counts; the process that opens it first dies in its recount
    (kill -9: nothing after that point runs)."""
    services = Services.from_settings(any_backend)
    for n in range(5):
        services.domains.connect(f"d{n}.open.example.test", "pub_1")
    table = services.backend.table(DOMAIN_COUNTS)
    for name in ("by_status", "failing"):
        table.delete(name)
    services.close()

    recount = StatusCounts.recount

    def cut_short(self: StatusCounts, count_now: object) -> dict[str, int]:
        def dying(status: str) -> int:
            raise Killed("kill -9 during the first open's recount")
        return recount(self, dying)

    with monkeypatch.context() as patch:
        patch.setattr(StatusCounts, "recount", cut_short)
        with pytest.raises(Killed):
            Services.from_settings(any_backend)
    soon = Services.from_settings(any_backend)  # within the lease: it may be counting still
    try:
        assert soon.domains.by_status()[PENDING_DNS] == 0
        item = soon.backend.table(DOMAIN_COUNTS).get("by_status")
        assert item is not None
        # What the dead process left, once its lease ran out.
        soon.backend.table(DOMAIN_COUNTS).put(
            {"name": "by_status", "counting_since": time.time() - 2 * DAY, "counted_at": None},
            expected_version=item["version"])
    finally:
        soon.close()
    later = Services.from_settings(any_backend)
    try:
        assert later.domains.by_status()[PENDING_DNS] == 5
        assert later.domains.failing() == 0
    finally:
        later.close()
