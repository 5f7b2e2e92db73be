"""The overview page: domains by status, failing domains, expiring certificates, edge nodes,
short links, and two charts."""
from __future__ import annotations

import datetime

from flask import Blueprint, render_template
from markupsafe import Markup

from kit.charts import Series, bar_chart
from admin.summary import FAILING_GRACE, WEEKS
from admin.web import admin

bp = Blueprint("overview", __name__)
CHART_DAYS = 14


def _expiry_chart(weeks: list[int], later: int) -> Markup:
    labels = [f"+{n}w" for n in range(WEEKS)] + ["later"]
    counts = [*weeks, later]
    urgent = [v if n == 0 else 0 for n, v in enumerate(counts)]
    soon = [v if 1 <= n <= 3 else 0 for n, v in enumerate(counts)]
    beyond = [v if n > 3 else 0 for n, v in enumerate(counts)]
    return bar_chart("Certificates expiring per week, from now", labels, [
        Series("within 7 days", "#c0392b", urgent), Series("within 4 weeks", "#e67e22", soon),
        Series("later", "#27ae60", beyond)])


def _issuance_chart() -> Markup:
    stats = admin().services.issuer.stats
    rows = stats.last_days(CHART_DAYS) if stats else []
    labels = [datetime.date.fromisoformat(day).strftime("%d %b") for day, _, _ in rows]
    return bar_chart(f"Issuance results over the last {CHART_DAYS} days", labels, [
        Series("issued", "#27ae60", [issued for _, issued, _ in rows]),
        Series("failed", "#c0392b", [failed for _, _, failed in rows])])


@bp.get("/")
def index() -> str:
    services = admin().services
    figures = admin().summary.figures()
    meta = services.edge_state.meta()
    return render_template(
        "admin/overview.html", figures=figures, nodes=services.edge_state.list_nodes(),
        desired_version=meta["edge_version"] if meta else None,
        expiry_chart=_expiry_chart(figures.expiry_weeks, figures.expiry_later), issuance_chart=_issuance_chart(),
        computed=datetime.datetime.fromtimestamp(figures.computed_at, datetime.timezone.utc),
        grace_minutes=int(FAILING_GRACE // 60))
