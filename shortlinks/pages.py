"""What the admin's and the publisher's short-link pages both show: the visits chart and the
choice of days."""
from __future__ import annotations

from typing import Any

from markupsafe import Markup

from kit.charts import Series, bar_chart

STATS_DAYS = (7, 30, 90)
VISITS, BOTS = "#2c7fb8", "#767676"
"""Bar colours: each 3:1 or more against white (WCAG 1.4.11, graphical objects)."""


def stats_days(asked: int | None) -> int:
    """The days a page shows: one of :data:`STATS_DAYS` as asked, else 30."""
    return asked if asked in STATS_DAYS else 30


def visits_chart(stats: dict[str, Any], days: int) -> Markup:
    """Visits and bots per day (``VisitStats.read``'s answer) as a stacked bar chart."""
    rows: list[dict[str, Any]] = stats["days"]
    labels = [str(row["date"])[5:] for row in rows]  # MM-DD
    return bar_chart(f"Visits per day over the last {days} days (UTC)", labels, [
        Series("visits", VISITS, [int(row["visits"]) for row in rows]),
        Series("bots and HEAD", BOTS, [int(row["bots"]) for row in rows])],
        label_every=max(1, days // 10))
