"""The settings page's part for a publisher's own certificate: upload (two PEM files) and
removal, each a plain form with the page's CSRF token. Attached to the settings page's
blueprint by ``settings_page.init_app``."""
from __future__ import annotations

from flask import redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from certs.byo import MAX_CHAIN_CHARS, MAX_KEY_CHARS, UploadRejected
from domains.byo import CustomCertificates
from domains.errors import DomainError
from domains.settings_page import _csrf, _own, _publisher, _require_csrf, bp, status_of
from kit.web import use


def _text(field: str, limit: int) -> str:
    """An uploaded file's text, read no further than ``limit`` + 1 characters (the size
    check in certs/byo.py then refuses it with its own sentence)."""
    upload = request.files.get(field)
    data = upload.stream.read(limit * 4 + 1) if upload is not None else b""
    return data.decode("utf-8", "replace")[:limit + 1]


@bp.post("/domains/<hostname>/certificate")
def upload_certificate(hostname: str) -> Response | tuple[str, int]:
    user = _publisher()
    _require_csrf(user)
    domain = _own(user, hostname)
    custom = use(CustomCertificates)
    try:
        checked = custom.check(domain["hostname"], _text("certificate", MAX_CHAIN_CHARS),
                               _text("private_key", MAX_KEY_CHARS))
        custom.upload(domain, checked, actor=f"publisher:{user.id}")
    except (UploadRejected, DomainError) as exc:
        sentence = str(exc)
        return render_template("publisher/domain.html", user=user, domain=status_of(domain),
                               csrf_token=_csrf(user), byo_error=sentence[:1].upper()
                               + sentence[1:] + "."), 400
    return redirect(url_for(".show", hostname=domain["hostname"]), 303)


@bp.post("/domains/<hostname>/certificate/remove")
def remove_certificate(hostname: str) -> Response:
    user = _publisher()
    _require_csrf(user)
    domain = _own(user, hostname)
    try:
        use(CustomCertificates).remove(domain, actor=f"publisher:{user.id}")
    except DomainError:
        pass  # removed already (a second click): the page shows there is none
    return redirect(url_for(".show", hostname=domain["hostname"]), 303)
