"""The settings page's own-certificate upload: in real Chromium against the control service's
app on loopback (the platform's signed cookie signs the publisher in), and the forms' CSRF and
ownership rules through the test client."""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from admin_app import create_app
from control.wiring import Services
from edge.state import fingerprint
from kit.settings import Settings
from kit.x509 import LocalCA
from tests.conftest import SSO_COOKIE_KEY, SSO_PLATFORM, ServicesWith, serving
from tests.test_byo import HOST, activate, served_sha


@pytest.fixture
def services(services_with: ServicesWith, sso_settings: Settings) -> Services:
    return services_with(base=sso_settings, edge_https_port=443, byo_private_roots=True)


def session_cookie(user: str = "alice", publications: tuple[str, ...] = ("pub_1",)) -> str:
    return jwt.encode({"sub": user, "publications": list(publications),
                       "exp": int(time.time()) + 600}, SSO_COOKIE_KEY, algorithm="HS256")


def pem_file(name: str, text: str) -> dict[str, Any]:
    return {"name": name, "mimeType": "application/x-pem-file", "buffer": text.encode()}


@pytest.mark.slow
def test_a_publisher_uploads_and_removes_their_certificate_in_chromium(
        services: Services, browser: Any, tmp_path: Path) -> None:
    acme_pem = activate(services)
    ca = LocalCA()
    cert, key = ca.issue([HOST])
    _, stranger_key = ca.issue([HOST])
    leaf_sha = x509.load_pem_x509_certificate(cert.encode()).fingerprint(hashes.SHA256()).hex()
    with serving(create_app(services)) as url:
        port = url.rsplit(":", 1)[1]
        base = f"http://{SSO_PLATFORM}:{port}/_edge/settings/domains/{HOST}"
        context = browser.new_context()
        context.add_cookies([{"name": "platform_session", "value": session_cookie(),
                              "domain": SSO_PLATFORM, "path": "/"}])
        page = context.new_page()
        page.goto(base)
        assert "We serve a certificate we obtain and renew for you" in page.inner_text(
            "#own-certificate")

        # A key that belongs to another certificate: one sentence, on the page, nothing served.
        page.set_input_files("#own-cert-chain", pem_file("chain.pem", cert + ca.pem))
        page.set_input_files("#own-cert-key", pem_file("other.key", stranger_key))
        page.click("button:has-text('Upload certificate')")
        page.wait_for_selector("#own-cert-error")
        assert "does not belong to the first certificate" in page.inner_text("#own-cert-error")
        assert page.get_attribute("#own-cert-chain", "aria-invalid") == "true"
        page.screenshot(path=str(tmp_path / "refused.png"), full_page=True)
        assert served_sha(services) == fingerprint(acme_pem)

        page.set_input_files("#own-cert-chain", pem_file("chain.pem", cert + ca.pem))
        page.set_input_files("#own-cert-key", pem_file("site.key", key))
        page.click("button:has-text('Upload certificate')")
        page.wait_for_selector("#own-cert-state")
        assert page.url == base
        assert page.inner_text("#own-cert-state") == \
            f"We serve your certificate for {HOST}."
        assert page.inner_text("#own-cert-fingerprint") == leaf_sha
        assert served_sha(services) == fingerprint(cert + ca.pem + key)
        assert "BEGIN" not in page.content()  # neither the chain nor the key comes back
        page.screenshot(path=str(tmp_path / "own-certificate.png"), full_page=True)

        page.click("button:has-text('Remove my certificate')")
        page.wait_for_selector("#own-cert-state", state="detached")
        assert served_sha(services) == fingerprint(acme_pem)
        whats = [e["what"] for e in services.domains.timeline(services.domains.get(HOST))]
        assert whats[:2] == ["ACME certificate served again", "uploaded certificate"]
        context.close()


def test_the_forms_need_the_csrf_token_and_the_domain_s_publisher(services: Services) -> None:
    activate(services)
    client = create_app(services).test_client(use_cookies=False)
    ca = LocalCA()
    cert, key = ca.issue([HOST])
    base = f"https://{SSO_PLATFORM}/_edge/settings/domains/{HOST}"
    alice = {"Cookie": f"platform_session={session_cookie()}"}
    page = client.get(base, headers=alice)
    token = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page.text).group(1)  # type: ignore[union-attr]

    def upload(headers: dict[str, str], csrf: str) -> Any:
        from io import BytesIO
        return client.post(f"{base}/certificate", headers=headers, data={
            "csrf_token": csrf, "certificate": (BytesIO((cert + ca.pem).encode()), "c.pem"),
            "private_key": (BytesIO(key.encode()), "k.pem")})

    assert upload(alice, "0" * 64).status_code == 400
    assert client.post(f"{base}/certificate/remove", headers=alice).status_code == 400
    bob = {"Cookie": f"platform_session={session_cookie('bob', ('pub_2',))}"}
    bob_token = re.search(r'name="csrf_token" value="([0-9a-f]+)"', client.get(
        f"https://{SSO_PLATFORM}/_edge/settings/domains", headers=bob).text).group(1)  # type: ignore[union-attr]
    assert upload(bob, bob_token).status_code == 404
    assert services.custom_certificates is not None
    assert services.custom_certificates.uploads.describe(HOST) is None
    assert upload(alice, token).status_code == 303
    assert services.custom_certificates.uploads.describe(HOST) is not None
