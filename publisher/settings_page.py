"""The publisher's settings page: connect a custom domain, see its records and follow it live.

Served by the control service under ``/_edge/settings/`` on the platform domain (the edge sends
``/_edge/*`` there), so the platform's own session cookie arrives with every request. Who is
signed in, and which publications they manage, comes from the platform (kit/platform.py),
never from the request. Plain form posts work without JavaScript; the script only adds live
status, copy buttons and in-place "check now".
"""
from __future__ import annotations

import datetime
from typing import Any, Callable, cast

from flask import Blueprint, Flask, abort, jsonify, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from certs.store import CertificateStore
from dnsops import dnsconfig
from domains import pairs
from domains.byo import CustomCertificates
from domains.errors import PUBLISHER_ERRORS, DomainError
from domains.lifecycle import Lifecycle
from domains.pairs import pair_view
from domains.redirects import DomainOptions
from domains.service import ROUTED, DomainService, Item, public_view
from kit.platform import PlatformUser
from kit.settings import Settings
from kit.web import find, use
from publisher import auth

bp = Blueprint("publisher_settings", __name__, url_prefix="/_edge/settings",
               template_folder="templates", static_folder="static")


def init_app(app: Flask, encryption_key: str, clock: Callable[[], float]) -> None:
    auth.init_csrf(app, encryption_key, clock)
    app.register_blueprint(bp)


bp.after_request(auth.page_headers)


def _domains() -> DomainService:
    return use(DomainService)


def _when(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M:%S UTC")


def status_of(domain: Item) -> dict[str, Any]:
    """What the page shows of a domain, also its live JSON."""
    view = public_view(domain, _domains().cname_target)
    # The public view: a status poll every 2 s must not decrypt the private key.
    certificate = use(CertificateStore).describe(domain["hostname"]) \
        if domain["status"] in ROUTED else None
    port = use(Settings).edge_https_port
    return {**view, "pair": pair_view(_domains(), domain),
            "next_check": _when(domain.get("next_attempt_at")),
            "automation_available": _domains().automation.describe(domain["hostname"]),
            "certificate_expires": str(certificate["not_after"])[:10] if certificate else None,
            "own_certificate": _own_certificate(domain),
            "url": f"https://{domain['hostname']}" + ("" if port == 443 else f":{port}")}


def _own_certificate(domain: Item) -> dict[str, Any] | None:
    """The publisher's own certificate as the page shows it (never its key), or None."""
    custom = find(CustomCertificates)
    view = custom.uploads.describe(domain["hostname"]) if custom is not None else None
    if view is None or custom is None:
        return None
    return {**view, "expires": str(view["not_after"])[:10],
            "served": domain["status"] in ROUTED and custom.uploads.in_time(view)}


def _hostname_or_empty(text: str) -> str:
    """Echo a hostname back only if it is one (no text of an attacker's choosing on the page)."""
    try:
        return text if text and _domains().normalize(text) == text else ""
    except PUBLISHER_ERRORS:
        return ""


def _index(user: PlatformUser, error: str | None = None, form: dict[str, str] | None = None,
           status: int = 200) -> tuple[str, int]:
    domains = {p: _domains().list_for(p, limit=100).items for p in user.publications}
    return render_template("publisher/index.html", user=user, domains=domains,
                           removed=_hostname_or_empty(request.args.get("removed", "")),
                           automated=_domains().automation.zones(),
                           csrf_token=auth.csrf_token(user), error=error, form=form or {}), status


@bp.get("/domains")
def index() -> tuple[str, int]:
    return _index(auth.signed_in())


@bp.post("/domains")
def connect() -> Response | tuple[str, int]:
    user = auth.signed_in()
    auth.require_csrf(user)
    form = {"hostname": request.form.get("hostname", ""),
            "publication": request.form.get("publication", ""),
            "with_www": request.form.get("with_www", pairs.DEFAULT_WITH_WWW)}
    if form["publication"] not in user.publications:
        return _index(user, "Choose one of your publications.", form, 400)
    if form["with_www"] not in ("redirect", "serve", "none"):
        return _index(user, "Choose what the www companion does.", form, 400)
    try:
        hostname = _domains().normalize(form["hostname"])
        # The choice is about an apex and its www name; any other name connects alone.
        mode = cast(pairs.WithWww, form["with_www"]) if pairs.companion_of(hostname) else None
        domain, _ = pairs.connect(_domains(), hostname, form["publication"], mode, {},
                                  actor=f"publisher:{user.id}")
    except PUBLISHER_ERRORS as exc:
        return _index(user, str(exc), form, exc.status)
    return redirect(url_for(".show", hostname=domain["hostname"]), 303)


@bp.get("/domains/<hostname>")
def show(hostname: str) -> str:
    user = auth.signed_in()
    domain = auth.page_domain(user, hostname)
    report = dnsconfig.last_report(use(Lifecycle).checker, domain, dnsconfig.recommended(
        domain, _domains().dcv_zone))
    return render_template("publisher/domain.html", user=user, domain=status_of(domain),
                           report=report, csrf_token=auth.csrf_token(user))


@bp.get("/domains/<hostname>/status")
def status(hostname: str) -> Response:
    return jsonify(status_of(auth.page_domain(auth.signed_in(), hostname)))


@bp.post("/domains/<hostname>/check")
def check(hostname: str) -> Response:
    user = auth.signed_in()
    auth.require_csrf(user)
    domain = auth.page_domain(user, hostname)
    use(Lifecycle).check_now(domain["hostname"], actor=f"publisher:{user.id}")
    if request.accept_mimetypes.best == "application/json":
        return jsonify(status_of(auth.page_domain(user, hostname)))
    return redirect(url_for(".show", hostname=domain["hostname"]), 303)


@bp.route("/domains/<hostname>/remove", methods=["GET", "POST"])
def remove(hostname: str) -> Response | str:
    user = auth.signed_in()
    domain = auth.page_domain(user, hostname)
    if request.method == "GET":
        return render_template("publisher/remove.html", user=user, domain=domain,
                               pair=pair_view(_domains(), domain),
                               csrf_token=auth.csrf_token(user))
    auth.require_csrf(user)
    sources = DomainOptions(_domains()).left_dangling(domain)
    if sources:  # they would redirect to nothing
        abort(409, f"{', '.join(sources)} redirect(s) to {domain['hostname']}: change or "
                   "remove them first.")
    use(Lifecycle).remove(domain["hostname"], actor=f"publisher:{user.id}")
    return redirect(url_for(".index", removed=domain["hostname"]), 303)
