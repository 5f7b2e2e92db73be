"""`edgectl admin` against the dashboard: a new password, `end-sessions` and a deleted account
end the user's sessions at their next request (each command a real `edgectl` process on the
store the dashboard reads)."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

from flask.testing import FlaskClient

from admin_app import create_app
from control.wiring import Services
from kit.settings import Settings
from tests.test_admin_pages import PASSWORD, login

ROOT = Path(__file__).resolve().parent.parent
NEW_PASSWORD = "another long enough password"


def edgectl(settings: Settings, *argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": settings.data_dir,
           "EDGE_API_TOKEN": settings.api_token, "EDGE_EDGE_TOKEN": settings.edge_token,
           "EDGE_ENCRYPTION_KEYS": ",".join(settings.encryption_keys),
           "EDGE_DATA_DIR": settings.data_dir, "EDGE_ADMIN_PASSWORD_HASH": "scrypt:2048:8:1"}
    return subprocess.run([sys.executable, "-m", "edgectl", "admin", *argv], env=env,
                          input=stdin, capture_output=True, text=True, timeout=60)


def signed_in(client: FlaskClient) -> bool:
    return client.get("/admin/").status_code == 200


def test_a_new_password_end_sessions_and_a_deleted_account_sign_the_user_out(
        settings: Settings) -> None:
    services = Services.from_settings(dataclasses.replace(settings, admin_cookie_secure=False))
    try:
        app = create_app(services)
        for name in ("alice", "bob"):
            made = edgectl(settings, "create-user", name, "--password-stdin",
                           stdin=PASSWORD + "\n")
            assert made.returncode == 0, made.stderr
        listed = edgectl(settings, "list-users")
        assert listed.returncode == 0 and listed.stdout.split() == ["alice", "bob"]
        alice, bob = app.test_client(), app.test_client()
        login(alice)
        login(bob, "bob")
        assert signed_in(alice) and signed_in(bob)

        changed = edgectl(settings, "set-password", "Alice", "--password-stdin",
                          stdin=NEW_PASSWORD + "\n")
        assert changed.returncode == 0, changed.stderr
        assert not signed_in(alice) and signed_in(bob), "only alice's sessions ended"
        assert login(alice).status_code == 401  # type: ignore[attr-defined]
        login(alice, password=NEW_PASSWORD)
        assert signed_in(alice), "a session started after the change holds"

        assert edgectl(settings, "end-sessions", "alice").returncode == 0
        assert not signed_in(alice) and signed_in(bob)

        assert edgectl(settings, "delete-user", "bob").returncode == 0
        assert not signed_in(bob)
        assert login(bob, "bob").status_code == 401  # type: ignore[attr-defined]
        again = edgectl(settings, "delete-user", "bob")
        assert again.returncode == 2 and "no user 'bob'" in again.stderr
        made = edgectl(settings, "create-user", "bob", "--password-stdin", stdin=PASSWORD + "\n")
        assert made.returncode == 0 and not signed_in(bob), "a new bob is not the old one"
        short = edgectl(settings, "set-password", "alice", "--password-stdin", stdin="short\n")
        assert short.returncode == 2 and "12 to 1024 characters" in short.stderr
    finally:
        services.close()
