"""The publisher's short links: make, change, disable and delete them, see a link's QR code and
its visits (days, referrers, bots), under ``/_edge/settings/links`` beside the domain pages.

The same session, CSRF token and page headers as the domain pages (publisher/auth.py). A
publisher makes links on the short domains connected and verified for one of their
publications (the API's rule for a publication's token); the link belongs to that publication.
Another publication's link answers 404, as if absent.
"""
from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from domains.service import DomainService
from kit.clock import iso
from kit.platform import PlatformUser
from kit.web import use
from publisher import auth
from shortlinks.bulk import qr_code
from shortlinks.errors import ShortlinkError
from shortlinks.links import CODES, SLUG, LinkService, short_url
from shortlinks.pages import STATS_DAYS, stats_days, visits_chart
from store import Item

bp = Blueprint("publisher_links", __name__, url_prefix="/_edge/settings/links",
               template_folder="templates")
bp.after_request(auth.page_headers)
PAGE = 50
CODE_WORDS = {302: "302: temporary (the default)", 301: "301: permanent",
              307: "307: temporary, method kept", 308: "308: permanent, method kept"}


@bp.app_template_filter("iso_time")
def _iso_time(seconds: float | None) -> str | None:
    return iso(float(seconds)) if seconds is not None else None


def _links() -> LinkService:
    return use(LinkService)


def short_domains(user: PlatformUser) -> dict[str, str]:
    """Short domain -> the publication it is connected and verified for, among the user's: one
    read per short domain (a handful, set in the settings)."""
    usable = {}
    for domain in _links().short_domains:
        owner = use(DomainService).owner(domain)
        if owner is not None and owner[0] in user.publications and owner[1]:
            usable[domain] = owner[0]
    return usable


def _page_link(user: PlatformUser, domain: str, slug: str) -> Item:
    """The link, if one of the user's publications owns it; 404 otherwise."""
    try:
        link = _links().get(domain, slug)
    except ShortlinkError:
        abort(404)
    if link["owner"] not in user.publications:
        abort(404)
    return link


def _index(user: PlatformUser, error: str | None = None, form: dict[str, str] | None = None,
           status: int = 200) -> tuple[str, int]:
    shown = request.args.get("publication", "")
    cursor = request.args.get("cursor") or None
    pages = {}
    for publication in user.publications:
        try:
            pages[publication] = _links().list_for(
                publication, limit=PAGE, cursor=cursor if publication == shown else None)
        except ValueError:
            abort(400, "That page link is not valid any more; start from the first page.")
    return render_template("publisher/links.html", user=user, pages=pages, error=error,
                           form=form or {}, domains=short_domains(user), codes=CODE_WORDS,
                           removed=_link_name_or_empty(request.args.get("removed", "")),
                           csrf_token=auth.csrf_token(user)), status


def _link_name_or_empty(text: str) -> str:
    """Echo ``domain/slug`` back only if it is one (no text of an attacker's choosing)."""
    domain, _, slug = text.partition("/")
    return text if _links().is_short_domain(domain) and SLUG.fullmatch(slug) else ""


@bp.get("")
def index() -> tuple[str, int]:
    return _index(auth.signed_in())


@bp.post("")
def create() -> Response | tuple[str, int]:
    user = auth.signed_in()
    auth.require_csrf(user)
    form = {name: request.form.get(name, "").strip() for name in ("domain", "slug", "target",
                                                                  "code")}
    owner = short_domains(user).get(form["domain"])
    if owner is None:
        return _index(user, "Choose one of your short domains.", form, 400)
    try:
        link = _links().create(form["domain"], form["target"], owner, slug=form["slug"] or None,
                               code=_code(form["code"]))
    except ShortlinkError as exc:
        return _index(user, _sentence(exc), form, exc.status)
    return redirect(url_for(".show", domain=link["domain"], slug=link["slug"], made=1), 303)


def _code(text: str) -> int | None:
    return int(text) if text.isdigit() and int(text) in CODES else None


def _sentence(exc: ShortlinkError) -> str:
    """The service's error as the page shows it: the field's name in words."""
    field = getattr(exc, "field", None)
    reason = getattr(exc, "reason", None) or str(exc)
    names = {"target": "The target", "slug": "The short name", "domain": "The short domain",
             "code": "The redirect code"}
    return f"{names[field]}: {reason}" if field in names else str(exc)


def _show(user: PlatformUser, link: Item, error: str | None = None,
          status: int = 200) -> tuple[str, int]:
    days = stats_days(request.args.get("days", type=int))
    stats = _links().visit_stats(link["domain"], link["slug"], days)
    return render_template("publisher/link.html", user=user, link=link, error=error,
                           short_url=short_url(link), stats=stats, days=days,
                           choices=STATS_DAYS, chart=visits_chart(stats, days),
                           codes=CODE_WORDS, made=request.args.get("made") == "1",
                           changed=request.args.get("changed", ""),
                           csrf_token=auth.csrf_token(user)), status


@bp.get("/<domain>/<slug>")
def show(domain: str, slug: str) -> tuple[str, int]:
    user = auth.signed_in()
    return _show(user, _page_link(user, domain, slug))


@bp.post("/<domain>/<slug>")
def edit(domain: str, slug: str) -> Response | tuple[str, int]:
    user = auth.signed_in()
    auth.require_csrf(user)
    link = _page_link(user, domain, slug)
    changes: dict[str, Any] = {"target": request.form.get("target", "").strip()}
    code = _code(request.form.get("code", ""))
    if code is not None:
        changes["code"] = code
    try:
        _links().update(link["domain"], link["slug"], changes)
    except ShortlinkError as exc:
        return _show(user, link, _sentence(exc), exc.status)
    return redirect(url_for(".show", domain=link["domain"], slug=link["slug"],
                            changed="saved"), 303)


@bp.post("/<domain>/<slug>/<action>")
def toggle(domain: str, slug: str, action: str) -> Response:
    if action not in ("disable", "enable"):
        abort(404)
    user = auth.signed_in()
    auth.require_csrf(user)
    link = _page_link(user, domain, slug)
    try:
        _links().update(link["domain"], link["slug"], {"disabled": action == "disable"})
    except ShortlinkError as exc:
        abort(exc.status, str(exc))
    return redirect(url_for(".show", domain=link["domain"], slug=link["slug"],
                            changed=action + "d"), 303)


@bp.route("/<domain>/<slug>/delete", methods=["GET", "POST"])
def delete(domain: str, slug: str) -> Response | str:
    user = auth.signed_in()
    link = _page_link(user, domain, slug)
    if request.method == "GET":
        return render_template("publisher/link_delete.html", user=user, link=link,
                               short_url=short_url(link), csrf_token=auth.csrf_token(user))
    auth.require_csrf(user)
    try:
        _links().delete(link["domain"], link["slug"])
    except ShortlinkError:
        pass  # deleted meanwhile: what was asked is done
    return redirect(url_for(".index", removed=f"{link['domain']}/{link['slug']}"), 303)


@bp.get("/<domain>/<slug>/qr.<kind>")
def qr(domain: str, slug: str, kind: str) -> Response:
    link = _page_link(auth.signed_in(), domain, slug)
    mimetype = {"svg": "image/svg+xml", "png": "image/png"}.get(kind)
    if mimetype is None:
        abort(404)
    headers = {"Content-Disposition": f'attachment; filename="{domain}-{slug}.png"'} \
        if kind == "png" else {}
    return Response(qr_code(short_url(link), kind), mimetype=mimetype, headers=headers)
