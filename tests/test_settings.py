"""Settings: read once from TOML and the environment; a wrong or missing one is named."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from control.settings import SettingsError, load_settings

KEY = Fernet.generate_key().decode()


def test_environment_overrides_toml(tmp_path: Path) -> None:
    config = tmp_path / "edge.toml"
    config.write_text(f'api_token = "from-file"\nencryption_keys = ["{KEY}"]\n'
                      'listen_port = 9000\napp_servers = ["127.0.0.1:1", "127.0.0.1:2"]\n')
    settings = load_settings(env={"EDGE_CONFIG": str(config), "EDGE_LISTEN_PORT": "9100"})
    assert settings.api_token == "from-file"
    assert settings.listen_port == 9100
    assert settings.app_servers == ["127.0.0.1:1", "127.0.0.1:2"]
    assert Path(settings.sqlite_path).is_absolute()


@pytest.mark.parametrize("env,name", [
    ({"EDGE_ENCRYPTION_KEYS": KEY}, "api_token"),
    ({"EDGE_API_TOKEN": "t"}, "encryption_keys"),
    ({"EDGE_API_TOKEN": "t", "EDGE_ENCRYPTION_KEYS": "short"}, "encryption_keys"),
    ({"EDGE_API_TOKEN": " ", "EDGE_ENCRYPTION_KEYS": KEY}, "api_token"),
    ({"EDGE_API_TOKEN": "t", "EDGE_ENCRYPTION_KEYS": KEY, "EDGE_LISTEN_PORT": "99999"},
     "listen_port"),
    ({"EDGE_API_TOKEN": "t", "EDGE_ENCRYPTION_KEYS": KEY, "EDGE_STORAGE_BACKEND": "mysql"},
     "storage_backend"),
    ({"EDGE_API_TOKEN": "t", "EDGE_ENCRYPTION_KEYS": KEY, "EDGE_APP_SERVERS": "nohost"},
     "app_servers"),
    ({"EDGE_API_TOKEN": "t", "EDGE_ENCRYPTION_KEYS": KEY, "EDGE_EDGE_ADDRESSES": "1.2.3"},
     "edge_addresses"),
    ({"EDGE_API_TOKEN": "t", "EDGE_ENCRYPTION_KEYS": KEY, "EDGE_CONFIG": "/nonexistent.toml"},
     "config"),
])
def test_bad_or_missing_setting_is_named(env: dict[str, str], name: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(env=env)
    assert caught.value.name == name
    assert f"EDGE_{name.upper()}" in str(caught.value)


def test_unknown_toml_key_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "edge.toml"
    config.write_text(f'api_token = "t"\nencryption_keys = "{KEY}"\nlisten_prot = 1\n')
    with pytest.raises(SettingsError, match="listen_prot"):
        load_settings(env={"EDGE_CONFIG": str(config)})


def test_serve_refuses_to_start_and_names_the_setting(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "control", "serve"], capture_output=True,
                            text=True, timeout=60, cwd=tmp_path,
                            env={"PATH": "/usr/bin:/bin", "EDGE_ENCRYPTION_KEYS": KEY})
    assert result.returncode == 2
    assert "EDGE_API_TOKEN" in result.stderr and "required" in result.stderr
