"""Certificates, edge nodes, short links (with disable / enable) and the audit log."""
from __future__ import annotations

import re

from flask import Blueprint, abort, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from admin.web import admin, audit
from shortlinks.links import ShortlinkError
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
    try:
        page = admin().services.links.browse(limit=PAGE, cursor=_cursor())
    except ValueError:
        page = _bad_cursor()
    return render_template("admin/links.html", page=page, cursor=_cursor())


@bp.post("/links/<domain>/<slug>/<action>")
def toggle_link(domain: str, slug: str, action: str) -> Response:
    if action not in ("disable", "enable"):
        abort(404)
    try:  # the resolver forgets it at once and the edge's hot set is republished (wiring)
        admin().services.links.update(domain, slug, {"disabled": action == "disable"})
    except ShortlinkError as exc:
        abort(exc.status, str(exc))
    audit(f"link {action}d", f"{domain}/{slug}")
    return redirect(url_for(".links", cursor=request.form.get("cursor") or None), 303)


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
