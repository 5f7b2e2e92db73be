"""Retention: timeline events, delivered webhooks and visit report ids expire, and the worker's
sweep deletes them through an index on expiry, so the tables stop growing (both backends)."""
from __future__ import annotations

import time
from typing import Any

import pytest
from cryptography.fernet import Fernet

from admin.accounts import ADMIN_SESSIONS, Sessions
from admin_app import create_app
from control.wiring import Services
from domains.service import DOMAINS, EVENTS, DomainService
from domains.webhooks import DELIVERED, WEBHOOKS, WebhookSender
from edge.state_store import (EDGE_CERTS, EDGE_NODES, EDGE_ROUTES, EDGE_STATE, EDGE_VISIT_REPORTS,
                              EdgeStateStore)
from kit.settings import Settings, SettingsError, load_settings
from kit.vault import KeyVault
from store import Backend, Table
from store.sqlite import SqliteTable
from store.sweep import ExpirySweeper

DAY = 86400.0


class _Delivered:
    """A receiver that takes every webhook (what a requests session's post returns)."""

    status_code = 200

    def __enter__(self) -> "_Delivered":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


class _Session:
    def post(self, url: str, **kwargs: Any) -> _Delivered:
        return _Delivered()


def stored(table: Table) -> int:
    """Items the backend holds, expired or not (what reads never show)."""
    if isinstance(table, SqliteTable):
        conn = table._backend._conn  # noqa: SLF001 - a test looks under the interface
        return int(conn.execute(f"SELECT COUNT(*) FROM t_{table.spec.name}").fetchone()[0])
    raw: Any = table
    return int(raw._client.scan(TableName=raw.name, Select="COUNT")["Count"])


def test_the_tables_stop_growing(backend: Backend) -> None:
    now = [time.time()]

    def clock() -> float:
        return now[0]

    domains = DomainService(backend.table(DOMAINS), backend.table(EVENTS),
                            cname_target="edge.platform.test", edge_addresses=["127.0.0.1"],
                            platform_domains=["platform.test"], event_retention=5 * DAY,
                            clock=clock)
    webhooks = WebhookSender(backend.table(WEBHOOKS), "https://platform.test/hooks", "s" * 32,
                             session=_Session(),  # type: ignore[arg-type]
                             retention=5 * DAY, clock=clock)
    edge = EdgeStateStore(backend.table(EDGE_STATE), backend.table(EDGE_ROUTES),
                          backend.table(EDGE_CERTS), backend.table(EDGE_NODES),
                          KeyVault([Fernet.generate_key().decode()]),
                          backend.table(EDGE_VISIT_REPORTS), report_memory=2 * DAY, clock=clock)
    sweeper = ExpirySweeper([domains.events, webhooks.table, edge.reports], batch=50, clock=clock)
    domain = {"hostname": "blog.example.test", "claim": "c1"}
    history: list[tuple[int, int, int]] = []
    for day in range(10):
        for n in range(4):
            domains.history.append(domain, f"day {day} note {n}", "test")
            webhooks.emit("domain.active", {"hostname": f"h{n}.example.test"})
            assert edge.first_report(f"{day:016x}{n:016x}")
        assert webhooks.deliver_due() == 4
        sweeper.tick()
        history.append((stored(domains.events), stored(webhooks.table), stored(edge.reports)))
        now[0] += DAY
    # Each keeps its last days' worth: 5 days of events and webhooks, 2 days of report ids.
    assert history[-5:] == [(20, 20, 8)] * 5, history
    assert sweeper.deleted == (40 - 20) + (40 - 20) + (40 - 8)
    assert len(domains.timeline({**domain, "outbox": []})) == 20
    assert all(hook["state"] == DELIVERED for hook in
               webhooks.table.query("state", DELIVERED).items)
    # A resend within the retention counts once; an id forgotten long ago would count again
    # (an agent resends within minutes, never days).
    assert not edge.first_report(f"{9:016x}{0:016x}")
    assert edge.first_report(f"{0:016x}{0:016x}")


def test_a_sweep_with_nothing_due_costs_one_request_per_table_a_minute(backend: Backend) -> None:
    tables = [backend.table(spec) for spec in (EVENTS, WEBHOOKS, EDGE_VISIT_REPORTS)]
    for n in range(300):
        tables[0].put({"id": f"e{n}", "expires_at": time.time() + DAY})
    sweeper = ExpirySweeper(tables)
    before = backend.requests
    sweeper.tick()
    assert backend.requests - before == 3 and sweeper.deleted == 0
    sweeper.tick()  # the next worker round: retention needs no precision, so no sweep yet
    assert backend.requests - before == 3


def test_admin_sessions_nobody_ended_are_swept(backend: Backend) -> None:
    sessions = Sessions(backend.table(ADMIN_SESSIONS), lifetime=DAY)
    ids = [sessions.start("admin") for _ in range(3)]
    sweeper = ExpirySweeper([sessions.table], clock=lambda: time.time() + 2 * DAY)
    sweeper.tick()
    assert sweeper.deleted == 3 and stored(sessions.table) == 0
    assert all(sessions.get(session_id) is None for session_id in ids)


def test_the_control_worker_sweeps_every_expiring_table(settings: Settings) -> None:
    services = Services.from_settings(settings)
    try:
        assert services.sweeper is not None
        names = {table.spec.name for table in services.sweeper.tables}
        assert {"domain_events", "webhook_outbox", "edge_visit_reports", "sso_codes",
                "acme_challenges", "acme_orders"} <= names
        create_app(services)  # the dashboard's sessions and lockouts expire too
        names = {table.spec.name for table in services.sweeper.tables}
        assert {"admin_sessions", "admin_login_failures"} <= names
    finally:
        services.close()


def test_retention_settings_parse_and_refuse_nonsense() -> None:
    loaded = load_settings(env={"EDGE_EVENT_RETENTION_SECONDS": "86400",
                                "EDGE_SWEEP_BATCH": "10"}, required=())
    assert loaded.event_retention_seconds == DAY and loaded.sweep_batch == 10
    assert loaded.webhook_retention_seconds == 30 * DAY
    assert loaded.visit_report_retention_seconds == 7 * DAY
    for name, value in (("webhook_retention_seconds", 0), ("sweep_batch", 0),
                        ("visit_report_retention_seconds", -1)):
        with pytest.raises(SettingsError, match=name):
            load_settings(env={}, required=(), **{name: value})
