"""No secret in any log or repr: a full flow (connect, DNS, Pebble, HAProxy, webhooks, the
dashboard's login, removal) with every process logging at DEBUG, then every log line and the
reprs of Settings and Services searched for the tokens, the Fernet key, the passwords and
private key text."""
from __future__ import annotations

import base64
import logging
import re
from pathlib import Path
from typing import Iterator

import pytest
import requests
from cryptography.hazmat.primitives import serialization

from control.wiring import Services
from devtools.demo import LocalStack
from devtools.pebble import PebbleStack
from kit.settings import load_settings
from kit.x509 import LocalCA
from tests.test_end_to_end import WEBHOOK_SECRET, Receiver

HOSTNAME = "quiet.example.test"
_KEY_BLOCK = re.compile(r"-----BEGIN ([A-Z ]*)PRIVATE KEY-----\n(.*?)\n-----END \1PRIVATE KEY-----",
                        re.S)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    hooks = Receiver()
    yield hooks
    hooks.server.shutdown()


def _login(stack: LocalStack, password: str) -> int:
    session = requests.Session()
    verify = str(stack.control_ca)  # the control service speaks TLS (its own CA)
    form = session.get(f"{stack.control_url}/admin/login", timeout=10, verify=verify)
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token is not None, form.text
    answer = session.post(f"{stack.control_url}/admin/login", allow_redirects=False, timeout=10,
                          verify=verify,
                          data={"username": "admin", "password": password,
                                "csrf_token": token.group(1)},
                          cookies={"edge_admin_login": token.group(1)})
    return answer.status_code


def _key_lines(pem: str) -> set[str]:
    """Base64 lines of every private key in ``pem`` (each line alone must not leak), but for
    those wholly inside the key's public part: an EC key embeds its public point, which its
    certificate and its CSR (logged by the ACME client at DEBUG) hold too. The public key is
    encoded at each of base64's three alignments: one of them is the key file's."""
    lines: set[str] = set()
    for block in _KEY_BLOCK.finditer(pem):
        key = serialization.load_pem_private_key(block.group(0).encode(), None)
        spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
        public = [base64.b64encode(bytes(shift) + spki).decode() for shift in range(3)]
        lines.update(line for line in block.group(2).splitlines()
                     if len(line) >= 40 and not any(line in text for text in public))
    return lines


@pytest.mark.slow
def test_no_token_key_or_password_in_any_log_or_repr(
        tmp_path: Path, pebble: PebbleStack, receiver: Receiver,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # the root logger: every logger of this process
    env = {"EDGE_WEBHOOK_URL": receiver.url, "EDGE_WEBHOOK_SECRET": WEBHOOK_SECRET,
           "EDGE_BYO_PRIVATE_ROOTS": "true"}
    stack = LocalStack(tmp_path / "stack", pebble=pebble, extra_env=env, log_level="DEBUG")
    try:
        created = stack.api("POST", "/api/v1/domains",
                            json={"hostname": HOSTNAME, "publication_id": "pub_1"})
        assert created.status_code == 201, created.text
        stack.create_records(created.json()["dns_records"])
        stack.wait_active(HOSTNAME)
        stack.wait_served(HOSTNAME)
        receiver.wait_for("domain.active", HOSTNAME)
        # A publisher's own certificate: uploaded, refused once (another key), then removed.
        ca = LocalCA()
        cert, uploaded_key = ca.issue([HOSTNAME])
        _, refused_key = ca.issue([HOSTNAME])
        path = f"/api/v1/domains/{HOSTNAME}/certificate"
        assert stack.api("PUT", path, json={"certificate": cert + ca.pem,
                                            "private_key": refused_key}).status_code == 400
        assert stack.api("PUT", path, json={"certificate": cert + ca.pem,
                                            "private_key": uploaded_key}).status_code == 200
        receiver.wait_for("certificate.uploaded", HOSTNAME)
        assert stack.api("DELETE", path).status_code == 200
        password = stack.create_admin()
        assert _login(stack, "not the password at all") == 401
        assert _login(stack, password) == 303
        assert stack.api("DELETE", f"/api/v1/domains/{HOSTNAME}").status_code in (200, 204)
        receiver.wait_for("domain.removed", HOSTNAME)

        settings = load_settings(env={**stack.env(), **env})
        services = Services.from_settings(settings)
        try:
            services.domains.search(HOSTNAME)
            reprs = [repr(settings), repr(services), str(settings), repr(services.webhooks)]
        finally:
            services.close()
    finally:
        stack.stop()

    keys = set().union(*(_key_lines(pem.read_text())
                         for pem in (stack.directory / "data" / "edge").rglob("*.pem")),
                       _key_lines(uploaded_key), _key_lines(refused_key))
    assert keys, "the node's certificate keys and its default certificate's"
    logs = {path.name: path.read_text(errors="replace")
            for path in stack.directory.glob("*.log")}
    assert {"control.log", "agent.log"} <= set(logs)
    debug = '"level": "DEBUG"'  # JSON lines: their output is a file
    assert debug in logs["control.log"] and debug in logs["agent.log"]
    logs["this process"] = caplog.text
    logs.update({f"repr {n}": text for n, text in enumerate(reprs)})
    secrets = {"api token": stack.token, "edge token": stack.edge_token,
               "Fernet key": stack.encryption_key, "admin password": password,
               "webhook secret": WEBHOOK_SECRET, "PEM marker": "PRIVATE KEY",
               **{f"key line {n}": line for n, line in enumerate(sorted(keys))}}
    leaks = [f"{what} in {where}" for where, text in logs.items()
             for what, secret in secrets.items() if secret in text]
    assert not leaks, leaks


def test_settings_repr_masks_secrets_but_shows_which_are_set() -> None:
    settings = load_settings(env={}, required=(), api_token="a-very-secret-api-token",
                             registrars={"example.com": {"provider": "rfc2136",
                                                         "key_secret": "hmac-secret"}})
    shown = repr(settings)
    assert "api_token='***'" in shown and "edge_token=''" in shown
    assert "a-very-secret" not in shown and "hmac-secret" not in shown
    assert "listen_port=8000" in shown, "everything else is still there for debugging"
