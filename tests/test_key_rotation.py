"""`edgectl keys rotate`: every stored secret re-encrypted under a new key, nothing lost."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest
from cryptography.fernet import Fernet

from control.wiring import Services
from edge.state import DesiredState, Route
from kit.settings import Settings
from kit.vault import KeyVaultError
from kit.x509 import self_signed


def test_rotate_reencrypts_everything_and_the_old_key_can_then_go(settings: Settings) -> None:
    old_key = settings.encryption_keys[0]
    services = Services.from_settings(settings)
    cert, combined = self_signed("rot.example.test")
    services.certificates.save(["rot.example.test"], cert, combined[len(cert):].encode())
    services.edge_state.save(DesiredState((Route("rot.example.test", "pub_1", combined),),
                                          ("127.0.0.1:9",), ("127.0.0.1:9",)))
    services.close()

    new_key = Fernet.generate_key().decode()
    env = {**os.environ, "EDGE_API_TOKEN": settings.api_token,
           "EDGE_EDGE_TOKEN": settings.edge_token, "EDGE_DATA_DIR": settings.data_dir,
           "EDGE_ENCRYPTION_KEYS": f"{new_key},{old_key}"}
    result = subprocess.run([sys.executable, "-m", "edgectl", "keys", "rotate"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    # the certificate's, and the edge's copy under its hostname and fingerprint and under its
    # bare hostname (for the release before's replicas)
    assert "re-encrypted 3 stored keys" in result.stdout
    assert "PRIVATE KEY" not in result.stdout + result.stderr

    only_new = Services.from_settings(dataclasses.replace(settings, encryption_keys=[new_key]))
    try:
        stored = only_new.certificates.get("rot.example.test")
        assert stored is not None and stored.combined_pem.strip() == combined.strip()
        assert only_new.edge_state.certificate("rot.example.test")["pem"] == combined
    finally:
        only_new.close()
    only_old = Services.from_settings(settings)
    try:
        with pytest.raises(KeyVaultError):
            only_old.certificates.get("rot.example.test")
    finally:
        only_old.close()
