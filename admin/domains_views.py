"""Domains: list with search, status filter and pagination; a domain's page and its actions."""
from __future__ import annotations

import datetime
from typing import Callable

from flask import Blueprint, abort, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from admin.web import admin, audit, user
from control.wiring import Services
from dnsops import dnsconfig
from dnsops.hostnames import unicode_form
from domains.errors import PUBLISHER_ERRORS, DomainError, DomainNotFound
from domains.service import ROUTED, STATUSES
from domains.words import host_tag, plural, status_words
from store import ConflictError, Item

bp = Blueprint("domains", __name__, url_prefix="/domains")
bp.add_app_template_filter(status_words, "status_words")
bp.add_app_template_filter(unicode_form, "unicode_form")
bp.add_app_template_global(plural, "plural")
bp.add_app_template_global(host_tag, "host_tag")
PAGE = 50
NOTICES = {"re-check": "DNS re-checked.", "renew": "Certificate renewed.",
           "suspend": "Domain suspended: its route left the edge.",
           "resume": "Domain resumed."}


@bp.get("")
def index() -> str:
    query = request.args.get("q", "").strip()[:253]
    status = request.args.get("status", "")
    if status not in STATUSES:
        status = ""
    cursor = request.args.get("cursor") or None
    if query:
        items, next_cursor = admin().services.domains.search(query, limit=PAGE), None
    else:
        try:
            page = admin().services.domains.browse(status or None, limit=PAGE, cursor=cursor)
        except ValueError:
            abort(400, "That page link is not valid any more; start from the first page.")
        items, next_cursor = page.items, page.next_cursor
    return render_template("admin/domains.html", domains=items, q=query, status=status,
                           statuses=STATUSES, next_cursor=next_cursor, cursor=cursor)


def _domain(hostname: str) -> Item:
    try:
        return admin().services.domains.get(hostname)
    except PUBLISHER_ERRORS:
        abort(404, f"No domain {hostname}.")


def _uploaded(services: Services, hostname: str) -> dict[str, object] | None:
    """The publisher's own certificate (never its key), with its fallback time as a date."""
    custom = services.custom_certificates
    view = custom.uploads.describe(hostname) if custom is not None else None
    if view is None:
        return None
    at = view.get("fallback_at")
    return {**view, "fallback_on": datetime.datetime.fromtimestamp(
        float(at), datetime.timezone.utc).isoformat(timespec="seconds") if at else None}  # type: ignore[arg-type]


def _page(hostname: str, error: str = "") -> str:
    domain = _domain(hostname)
    services = admin().services
    problems = list(domain.get("validation_errors") or [])
    # last_error is these problems' messages joined, unless the failure was elsewhere (an
    # issuance, say): each is shown once, the record-bound ones in the report's table.
    joined = "; ".join(str(p.get("message")) for p in problems)
    return render_template(
        "admin/domain.html", domain=domain, events=services.domains.timeline(domain, limit=50),
        certificate=services.certificates.describe(domain["hostname"]),
        uploaded=_uploaded(services, domain["hostname"]),
        report=dnsconfig.last_report(services.lifecycle.checker, domain, dnsconfig.recommended(
            domain, services.domains.dcv_zone)),
        problems=[p for p in problems if not p.get("record")],
        other_error=domain.get("last_error") if domain.get("last_error") != joined else None,
        notice=NOTICES.get(request.args.get("done", ""), ""), error=error)


@bp.get("/<hostname>")
def show(hostname: str) -> str:
    return _page(hostname)


class ChangedHands(DomainError):
    """The claim an admin's page showed no longer holds its hostname: another publication's
    claim does (a takeover, or a removal and a new connect), or nobody's (``now`` None)."""

    status = 409

    def __init__(self, hostname: str, now: Item | None) -> None:
        super().__init__(f"{hostname} changed hands")
        self.hostname = hostname
        self.now = now


def _seen(hostname: str) -> Item:
    """The domain as stored now, if it is still the claim the admin's page showed (the form's
    ``claim``), else ChangedHands: an action acts on what the admin saw, never on whoever holds
    the hostname since. A form without one (a page the release before rendered) acts on the
    current holder, as that release did."""
    claim = request.form.get("claim")
    try:
        domain = admin().services.domains.get(hostname)
    except DomainNotFound as gone:
        if claim:
            raise ChangedHands(gone.hostname, None) from None
        abort(404, f"No domain {hostname}.")
    except PUBLISHER_ERRORS:
        abort(404, f"No domain {hostname}.")
    if claim and claim != domain["claim"]:
        raise ChangedHands(domain["hostname"], domain)
    return domain


def _refused(action: str, changed: ChangedHands) -> tuple[str, int]:
    """Nothing done, said so, audited; the page of the hostname's current holder."""
    now = changed.now
    holder = f"publication {now['publication_id']} holds it now (since {now['created_at']})" \
        if now is not None else "nobody holds it now"
    audit(f"domain {action} refused", changed.hostname, f"changed hands: {holder}")
    error = (f"{changed.hostname} changed hands since that page was shown: {holder}. Nothing "
             "was done; this page shows the domain as it is now.")
    if now is None:
        abort(404, error)
    return _page(now["hostname"], error), 409


def _changed(domain: Item) -> ChangedHands | None:
    """ChangedHands when ``domain``'s claim no longer holds its hostname, else None."""
    now = admin().services.domains.find(domain["hostname"])
    if now is not None and now["claim"] == domain["claim"]:
        return None
    return ChangedHands(domain["hostname"], now)


def _act(hostname: str, action: str,
         run: Callable[[Item], object]) -> Response | tuple[str, int]:
    """Run one action on the domain the admin saw, audit it, and go back to its page."""
    try:
        domain = _seen(hostname)
    except ChangedHands as changed:
        return _refused(action, changed)
    name = domain["hostname"]
    try:
        run(domain)
    except Exception as exc:  # any failure is shown to the admin and audited
        moved = _changed(domain) if isinstance(exc, DomainNotFound) else None
        if moved is not None:  # it changed hands while the action ran
            return _refused(action, moved)
        audit(f"domain {action} failed", name, str(exc))
        return _page(name, f"{action} failed: {exc}"), 409
    audit(f"domain {action}", name)
    return redirect(url_for(".show", hostname=name, done=action), 303)


ACTIONS = {"check": ("re-check", "check_now"), "renew": ("renew", "renew_now"),
           "suspend": ("suspend", "suspend"), "resume": ("resume", "resume")}
"""Endpoint -> (what the audit log calls it, the Lifecycle method that does it). Each method
takes the domain as read and acts only while its claim holds the hostname
(``DomainService.current``)."""


def _action_view(action: str, method: str) -> Callable[[str], Response | tuple[str, int]]:
    def view(hostname: str) -> Response | tuple[str, int]:
        run = getattr(admin().services.lifecycle, method)
        return _act(hostname, action, lambda domain: run(domain, actor=f"admin:{user()}"))
    return view


for _endpoint, (_action, _method) in ACTIONS.items():
    bp.add_url_rule(f"/<hostname>/{_endpoint}", _endpoint, _action_view(_action, _method),
                    methods=["POST"])


def _served(domain: Item) -> bool:
    """Whether the domain ever went live (routed now, or a certificate was issued for it)."""
    return domain["status"] in ROUTED or \
        admin().services.certificates.describe(domain["hostname"]) is not None


@bp.get("/<hostname>/remove")
def confirm_remove(hostname: str) -> str:
    domain = _domain(hostname)
    return render_template("admin/remove.html", domain=domain, wrong=False,
                           served=_served(domain))


@bp.post("/<hostname>/remove")
def remove(hostname: str) -> Response | tuple[str, int]:
    try:
        domain = _seen(hostname)
    except ChangedHands as changed:
        if changed.now is None:  # the claim the admin saw is gone, as they wished
            return redirect(url_for(".index", done="removed"), 303)
        return _refused("remove", changed)
    if request.form.get("confirm", "").strip().lower() != domain["hostname"]:
        return render_template("admin/remove.html", domain=domain, wrong=True,
                               served=_served(domain)), 400
    try:
        _remove(domain)
    except ChangedHands as changed:
        return _refused("remove", changed)
    except Exception as exc:  # e.g. the store or the edge publish failed: say so, and audit
        audit("domain remove failed", domain["hostname"], str(exc))
        return render_template("admin/remove.html", domain=domain, wrong=False,
                               served=_served(domain), error=f"remove failed: {exc}"), 409
    audit("domain remove", domain["hostname"], f"was {domain['status']}")
    return redirect(url_for(".index", done="removed"), 303)


def _remove(domain: Item) -> None:
    """Remove the claim the admin saw: the removal is conditional on the item as read, so a
    step of the worker meanwhile means reading it again (the same claim), a move refusing."""
    services = admin().services
    for attempt in range(3):
        try:
            services.lifecycle.remove(domain, actor=f"admin:{user()}")
            return
        except ConflictError:
            now = services.domains.find(domain["hostname"])  # one read: the claim and the
            if now is None:  # item retried are the same
                return  # removed meanwhile: the admin's wish holds
            if now["claim"] != domain["claim"]:
                raise ChangedHands(domain["hostname"], now) from None
            if attempt == 2:
                raise
            domain = now
