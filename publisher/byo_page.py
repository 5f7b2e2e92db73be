"""The settings page's part for a publisher's own certificate: upload (two PEM files) and
removal, each a plain form with the page's CSRF token, under the settings pages' prefix."""
from __future__ import annotations

from flask import Blueprint, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from certs.byo import MAX_CHAIN_CHARS, MAX_KEY_CHARS, UploadRejected
from domains.byo import CustomCertificates
from domains.errors import PUBLISHER_ERRORS, DomainError
from kit.web import use
from publisher import auth
from publisher.settings_page import status_of

bp = Blueprint("publisher_byo", __name__, url_prefix="/_edge/settings")
bp.after_request(auth.page_headers)


def _text(field: str, limit: int) -> str:
    """An uploaded file's text, read no further than ``limit`` + 1 characters (the size
    check in certs/byo.py then refuses it with its own sentence)."""
    upload = request.files.get(field)
    data = upload.stream.read(limit * 4 + 1) if upload is not None else b""
    return data.decode("utf-8", "replace")[:limit + 1]


@bp.post("/domains/<hostname>/certificate")
def upload_certificate(hostname: str) -> Response | tuple[str, int]:
    user = auth.signed_in()
    auth.require_csrf(user)
    domain = auth.page_domain(user, hostname)
    custom = use(CustomCertificates)
    try:
        checked = custom.check(domain["hostname"], _text("certificate", MAX_CHAIN_CHARS),
                               _text("private_key", MAX_KEY_CHARS))
        custom.upload(domain, checked, actor=f"publisher:{user.id}")
    except (UploadRejected, *PUBLISHER_ERRORS) as exc:
        sentence = str(exc)
        return render_template("publisher/domain.html", user=user, domain=status_of(domain),
                               csrf_token=auth.csrf_token(user), byo_error=sentence[:1].upper()
                               + sentence[1:] + "."), 400
    return redirect(url_for("publisher_settings.show", hostname=domain["hostname"]), 303)


@bp.post("/domains/<hostname>/certificate/remove")
def remove_certificate(hostname: str) -> Response:
    user = auth.signed_in()
    auth.require_csrf(user)
    domain = auth.page_domain(user, hostname)
    try:
        use(CustomCertificates).remove(domain, actor=f"publisher:{user.id}")
    except PUBLISHER_ERRORS:
        pass  # removed already (a second click): the page shows there is none
    return redirect(url_for("publisher_settings.show", hostname=domain["hostname"]), 303)
