"""Settings: read once from TOML and the environment; a wrong or missing one is named."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from kit.settings import EDGE_AGENT, SECRETS, Settings, SettingsError, load_settings

KEY = Fernet.generate_key().decode()
API, EDGE = "api-token-0123456789", "edge-token-0123456789"
BASE = {"EDGE_API_TOKEN": API, "EDGE_EDGE_TOKEN": EDGE, "EDGE_ENCRYPTION_KEYS": KEY}


def test_environment_overrides_toml(tmp_path: Path) -> None:
    config = tmp_path / "edge.toml"
    config.write_text(f'api_token = "from-file-0123456789"\nencryption_keys = ["{KEY}"]\n'
                      'listen_port = 9000\napp_servers = ["127.0.0.1:1", "127.0.0.1:2"]\n')
    settings = load_settings(env={"EDGE_CONFIG": str(config), "EDGE_LISTEN_PORT": "9100",
                                  "EDGE_EDGE_TOKEN": EDGE})
    assert settings.api_token == "from-file-0123456789"
    assert settings.listen_port == 9100
    assert settings.app_servers == ["127.0.0.1:1", "127.0.0.1:2"]
    assert Path(settings.sqlite_path).is_absolute()


@pytest.mark.parametrize("env,name", [
    ({"EDGE_ENCRYPTION_KEYS": KEY, "EDGE_EDGE_TOKEN": EDGE}, "api_token"),
    ({"EDGE_API_TOKEN": API, "EDGE_ENCRYPTION_KEYS": KEY}, "edge_token"),
    ({"EDGE_API_TOKEN": API, "EDGE_EDGE_TOKEN": EDGE}, "encryption_keys"),
    ({**BASE, "EDGE_ENCRYPTION_KEYS": "short"}, "encryption_keys"),
    ({**BASE, "EDGE_API_TOKEN": " " * 20}, "api_token"),
    ({**BASE, "EDGE_EDGE_TOKEN": "short"}, "edge_token"),
    ({**BASE, "EDGE_EDGE_TOKEN": API}, "edge_token"),
    ({**BASE, "EDGE_LISTEN_PORT": "99999"}, "listen_port"),
    ({**BASE, "EDGE_STORAGE_BACKEND": "mysql"}, "storage_backend"),
    ({**BASE, "EDGE_APP_SERVERS": "nohost"}, "app_servers"),
    ({**BASE, "EDGE_EDGE_ADDRESSES": "1.2.3"}, "edge_addresses"),
    ({**BASE, "EDGE_CONFIG": "/nonexistent.toml"}, "config"),
    ({**BASE, "EDGE_ORIGIN_POOLS": '{"Canary!": ["127.0.0.1:1"]}'}, "origin_pools"),
    ({**BASE, "EDGE_ORIGIN_POOLS": '{"canary": ["nohost"]}'}, "origin_pools"),
    ({**BASE, "EDGE_ORIGIN_POOLS": '{"canary": []}'}, "origin_pools"),
    ({**BASE, "EDGE_ORIGIN_POOLS": '["canary"]'}, "origin_pools"),
])
def test_bad_or_missing_setting_is_named(env: dict[str, str], name: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(env=env)
    assert caught.value.name == name
    assert f"EDGE_{name.upper()}" in str(caught.value)


def test_unknown_toml_key_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "edge.toml"
    config.write_text(f'api_token = "{API}"\nencryption_keys = "{KEY}"\nlisten_prot = 1\n')
    with pytest.raises(SettingsError, match="listen_prot"):
        load_settings(env={"EDGE_CONFIG": str(config)})


def test_a_retired_setting_is_ignored_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An upgrade does not stop on a setting an earlier version had (``hot_links``)."""
    config = tmp_path / "edge.toml"
    config.write_text(f'api_token = "{API}"\nencryption_keys = "{KEY}"\nhot_links = 100\n')
    settings = load_settings(env={"EDGE_CONFIG": str(config), "EDGE_EDGE_TOKEN": EDGE})
    assert settings.api_token == API
    assert "hot_links is no longer used" in caplog.text


def test_an_agent_needs_only_its_own_token() -> None:
    settings = load_settings(env={"EDGE_EDGE_TOKEN": EDGE}, required=EDGE_AGENT)
    assert settings.api_token == "" and settings.encryption_keys == []
    with pytest.raises(SettingsError, match="EDGE_EDGE_TOKEN"):
        load_settings(env={"EDGE_API_TOKEN": API}, required=EDGE_AGENT)


def test_serve_refuses_to_start_and_names_the_setting(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "edgectl", "serve"], capture_output=True,
                            text=True, timeout=60, cwd=tmp_path,
                            env={"PATH": "/usr/bin:/bin", "EDGE_ENCRYPTION_KEYS": KEY})
    assert result.returncode == 2
    assert "EDGE_API_TOKEN" in result.stderr and "required" in result.stderr


def test_every_setting_is_parsed_and_its_secrets_never_shown() -> None:
    for field in dataclasses.fields(Settings):
        assert callable(field.metadata.get("parse")), f"{field.name} has no parser"
    assert {"api_token", "edge_token", "encryption_keys", "webhook_secret", "registrars",
            "sso_platform_cookie_key"} <= set(SECRETS)
    settings = load_settings(env=BASE, webhook_url="https://hooks.example/t0ken",
                             webhook_secret="whsec-0123456789abcdef")
    shown = repr(settings)
    for secret in (API, EDGE, KEY, "t0ken", "whsec-0123456789abcdef"):
        assert secret not in shown
    assert "listen_port=8000" in shown


def test_lists_in_defaults_are_not_shared() -> None:
    first, second = Settings(), Settings()
    first.app_servers.append("127.0.0.1:2")
    assert second.app_servers == ["127.0.0.1:9001"]
