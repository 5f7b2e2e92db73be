"""The publisher's settings page: connect a custom domain, see its records and follow it live.

Served by the control service under ``/_edge/settings/`` on the platform domain (the edge sends
``/_edge/*`` there), so the platform's own session cookie arrives with every request. Who is
signed in, and which publications they manage, comes from the platform (kit/platform.py),
never from the request. Plain form posts work without JavaScript; the script only adds live
status, copy buttons and in-place "check now".
"""
from __future__ import annotations

import math
from typing import Any, Callable, cast

from flask import (Blueprint, Flask, abort, current_app, jsonify, redirect, render_template,
                   request, url_for)
from werkzeug.exceptions import TooManyRequests
from werkzeug.wrappers import Response

from certs.store import CertificateStore
from dnsops import dnsconfig
from dnsops.hostnames import unicode_form
from domains import pairs
from domains.byo import CustomCertificates
from domains.errors import PUBLISHER_ERRORS, DomainError, DomainNotFound, HostnameTaken
from domains.lifecycle import Lifecycle
from domains.pairs import pair_view
from domains.redirects import DomainOptions
from domains.service import ROUTED, DomainService, Item, public_view
from domains.words import host_tag, status_words, time_tag
from kit.platform import PlatformUser
from kit.settings import Settings
from kit.web import find, use
from publisher import auth, takeover_page
from publisher.call_limits import TooManyCalls, count_call
from store import ConflictError

bp = Blueprint("publisher_settings", __name__, url_prefix="/_edge/settings",
               template_folder="templates", static_folder="static")


def init_app(app: Flask, encryption_key: str, clock: Callable[[], float]) -> None:
    auth.init_csrf(app, encryption_key, clock)
    app.register_blueprint(bp)
    app.register_blueprint(takeover_page.bp)


bp.after_request(auth.page_headers)


@bp.app_template_filter("status_words")
def _status_words(status: object) -> str:
    return status_words(status)


@bp.app_template_filter("unicode_form")
def _unicode_form(hostname: str) -> str:
    return unicode_form(hostname)


@bp.app_context_processor
def _time_tags() -> dict[str, Any]:
    now = current_app.config[auth.CLOCK]()
    return {"time_tag": lambda when, element_id="": time_tag(when, now, element_id),
            "host_tag": host_tag}


def _domains() -> DomainService:
    return use(DomainService)


STATES = {"active": "live", "awaiting_traffic": "ready", "verified": "working",
          "issuing": "working", "pending_dns": "waiting", "suspended": "stopped"}
"""The card's state, from the status: what the whole domain page shows follows it."""
CHANGED = "This domain changed while we worked on it: reload its page and try again."
DETAILS = {
    "pending_dns": "We are waiting for the DNS records below; we check them again and again "
                   "by ourselves.",
    "verified": "Your DNS records are in place: we are getting a certificate.",
    "issuing": "Your DNS records are in place: we are getting a certificate.",
    "awaiting_traffic": "We wait for your traffic record to point at us.",
    "active": "Your domain is live.",
    "suspended": "This domain is suspended: our edge does not serve it. Contact us to know why.",
}


def status_of(domain: Item) -> dict[str, Any]:
    """Everything the domain page shows of a domain, which is also its live JSON: the script
    redraws the whole card from it, so the page never contradicts itself."""
    view = public_view(domain, _domains().cname_target)
    # The public view: a status poll every 2 s must not decrypt the private key.
    certificate = use(CertificateStore).describe(domain["hostname"]) \
        if domain["status"] in ROUTED else None
    port = use(Settings).edge_https_port
    report = dnsconfig.last_report(use(Lifecycle).checker, domain, dnsconfig.recommended(
        domain, _domains().dcv_zone))
    pair = pair_view(_domains(), domain)
    return {**view, "pair": {**pair, "status_text": status_words(pair["status"])} if pair else None,
            "state": STATES.get(domain["status"], "waiting"),
            "status_text": status_words(domain["status"]),
            "status_detail": DETAILS.get(domain["status"], ""),
            "display_name": unicode_form(domain["hostname"]),
            "next_check": view["next_attempt_at"], "report": report,
            "checked_at": report["checked_at"] if report else None,
            "automation_available": _domains().automation.describe(domain["hostname"],
                                                                   domain["publication_id"]),
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
                           www_applies=_www_applies((form or {}).get("hostname", "")),
                           automated=_domains().automation.zones(user.publications),
                           csrf_token=auth.csrf_token(user), error=error, form=form or {}), status


def _www_applies(typed: str) -> bool | None:
    """Whether the www choice applies to what was typed: an apex or its www name; None when
    that is not known yet (nothing typed, or not a hostname)."""
    try:
        return pairs.companion_of(_domains().normalize(typed)) is not None if typed else None
    except PUBLISHER_ERRORS:
        return None


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
    except HostnameTaken as exc:  # a dead end no more: who may release it, or move it here
        return takeover_page.taken(user, exc.hostname, form["publication"], exc.status)
    except PUBLISHER_ERRORS as exc:
        return _index(user, str(exc), form, exc.status)
    return redirect(url_for(".show", hostname=domain["hostname"]), 303)


@bp.get("/domains/<hostname>")
def show(hostname: str) -> str:
    user = auth.signed_in()
    domain = auth.page_domain(user, hostname)
    return render_template("publisher/domain.html", user=user, domain=status_of(domain),
                           checked=request.args.get("checked") == "1",
                           csrf_token=auth.csrf_token(user))


@bp.get("/domains/<hostname>/status")
def status(hostname: str) -> Response:
    return jsonify(status_of(auth.page_domain(auth.signed_in(), hostname)))


@bp.post("/domains/<hostname>/check")
def check(hostname: str) -> Response:
    user = auth.signed_in()
    auth.require_csrf(user)
    domain = auth.page_domain(user, hostname)
    try:  # the API's budget of calls that ask DNS (publisher/call_limits.py)
        count_call(str(domain["publication_id"]))
    except TooManyCalls as exc:
        raise TooManyRequests(str(exc), retry_after=math.ceil(exc.retry_after)) from None
    try:  # only while the claim the user manages holds the hostname
        checked, result = use(Lifecycle).check_now(domain, actor=f"publisher:{user.id}")
    except DomainNotFound:
        abort(404)  # it changed hands: as for any domain not theirs
    except ConflictError:
        abort(409, CHANGED)
    if request.accept_mimetypes.best == "application/json":
        return jsonify({**status_of(checked), "check_ok": result.ok})
    return redirect(url_for(".show", hostname=domain["hostname"], checked=1), 303)


@bp.route("/domains/<hostname>/remove", methods=["GET", "POST"])
def remove(hostname: str) -> Response | str:
    user = auth.signed_in()
    domain = auth.page_domain(user, hostname)
    if request.method == "GET":
        served = domain["status"] in ROUTED or \
            use(CertificateStore).describe(domain["hostname"]) is not None
        return render_template("publisher/remove.html", user=user, domain=domain,
                               pair=pair_view(_domains(), domain), served=served,
                               csrf_token=auth.csrf_token(user))
    auth.require_csrf(user)
    sources = DomainOptions(_domains()).left_dangling(domain)
    if sources:  # they would redirect to nothing
        abort(409, f"{', '.join(sources)} redirect(s) to {domain['hostname']}: change or "
                   "remove them first.")
    try:  # what the user was allowed to remove, unchanged since (it may have changed hands)
        use(Lifecycle).remove(domain, actor=f"publisher:{user.id}")
    except ConflictError:
        abort(409, CHANGED)
    return redirect(url_for(".index", removed=domain["hostname"]), 303)
