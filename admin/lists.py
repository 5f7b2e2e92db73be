"""Certificates, edge nodes, short links (with disable / enable) and the audit log."""
from __future__ import annotations

import csv
import io
import re
from typing import Any, cast

from flask import Blueprint, abort, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from admin.web import admin, audit
from shortlinks.links import ShortlinkError
from shortlinks.pages import STATS_DAYS, stats_days, visits_chart
from shortlinks.search import BY, TARGET_PAGE, By, search
from store import Page

bp = Blueprint("lists", __name__)
PAGE = 50
DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


def _cursor() -> str | None:
    return request.args.get("cursor") or None


def _bad_cursor() -> Page:
    abort(400, "That page link is not valid any more; start from the first page.")


@bp.get("/certificates")
def certificates() -> str:
    try:
        page = admin().services.certificates.browse(limit=PAGE, cursor=_cursor())
    except ValueError:
        page = _bad_cursor()
    return render_template("admin/certificates.html", page=page, cursor=_cursor())


@bp.get("/nodes")
def nodes() -> str:
    meta = admin().services.edge_state.meta()
    return render_template("admin/nodes.html", nodes=admin().services.edge_state.list_nodes(),
                           desired_version=meta["edge_version"] if meta else None)


@bp.get("/links")
def links() -> str:
    """Every link a page at a time, or a search (shortlinks/search.py: what it reads)."""
    by = request.args.get("by", "link")
    text = request.args.get("q", "").strip()[:2048]
    if by not in BY:
        abort(400, f"Search by one of: {', '.join(BY)}.")
    try:
        if text:
            found = search(admin().services.links, cast(By, by), text, PAGE, _cursor())
            page = Page(found.links, found.next_cursor)
            read = found.read
        else:
            page, read = admin().services.links.browse(limit=PAGE, cursor=_cursor()), 0
    except ValueError:
        page, read = _bad_cursor(), 0
    return render_template("admin/links.html", page=page, cursor=_cursor(), by=by, q=text,
                           choices=BY, read=read, target_page=TARGET_PAGE)


def _link_stats(domain: str, slug: str) -> tuple[dict[str, object], dict[str, object], int]:
    """The link, its stats over ``?days=`` (7, 30 or 90; else 30) and that number of days."""
    days = stats_days(request.args.get("days", type=int))
    try:
        link = admin().services.links.get(domain, slug)
        stats = admin().services.links.visit_stats(domain, slug, days)
    except ShortlinkError as exc:
        abort(exc.status, str(exc))
    return link, stats, days


@bp.get("/links/<domain>/<slug>")
def link(domain: str, slug: str) -> str:
    link, stats, days = _link_stats(domain, slug)
    return render_template("admin/link.html", link=link, stats=stats, days=days,
                           choices=STATS_DAYS, chart=visits_chart(stats, days))


@bp.get("/links/<domain>/<slug>/stats.csv")
def link_stats_csv(domain: str, slug: str) -> Response:
    _, stats, days = _link_stats(domain, slug)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(("date", "visits", "bots"))
    writer.writerows((row["date"], row["visits"], row["bots"])
                     for row in stats["days"])  # type: ignore[attr-defined]
    return Response(out.getvalue(), mimetype="text/csv", headers={
        "Content-Disposition": f'attachment; filename="{domain}-{slug}-visits-{days}d.csv"'})


@bp.post("/links/<domain>/<slug>/<action>")
def toggle_link(domain: str, slug: str, action: str) -> Response:
    if action not in ("disable", "enable"):
        abort(404)
    try:  # the resolver forgets it at once and the edge's hot set is republished (wiring)
        admin().services.links.update(domain, slug, {"disabled": action == "disable"})
    except ShortlinkError as exc:
        abort(exc.status, str(exc))
    audit(f"link {action}d", f"{domain}/{slug}")
    back: dict[str, Any] = {name: request.form.get(name) or None
                            for name in ("cursor", "by", "q")}
    return redirect(url_for(".links", **back), 303)


@bp.get("/audit")
def audit_log() -> str:
    day = request.args.get("day", "")
    if not DAY.fullmatch(day):
        day = admin().audit.today()
    try:
        page = admin().audit.day(day, limit=PAGE, cursor=_cursor())
    except ValueError:
        page = _bad_cursor()
    return render_template("admin/audit.html", page=page, day=day, cursor=_cursor())
