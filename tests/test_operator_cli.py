"""The operator's CLI against a live `edgectl serve` over TLS (a private CA, client certificates
optional at the TLS level as in production): each command's table and JSON, its exit code, and
the one sentence every failure gets (wrong CA, no token, a refused client certificate, the
service down)."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import requests
from cryptography.fernet import Fernet

from control.wiring import Services
from kit.procs import ManagedProcess, free_port, start_listening
from kit.settings import load_settings
from kit.x509 import LocalCA

ROOT = Path(__file__).resolve().parent.parent
TOKEN, EDGE_TOKEN = "ops-token-0123456789", "ops-edge-token-0123456789"


class Served:
    def __init__(self, directory: Path, port: int, files: dict[str, str]) -> None:
        self.directory = directory
        self.url = f"https://127.0.0.1:{port}"
        self.files = files

    def env(self, **changes: str | None) -> dict[str, str]:
        """The operator's environment: this service, its CA, the token; ``None`` drops one.
        HOME points into the test, so no user's config file is read."""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT),
               "HOME": str(self.directory / "home"), "EDGE_CONTROL_URL": self.url,
               "EDGE_API_TOKEN": TOKEN, "EDGE_CONTROL_CA_BUNDLE": self.files["ca"]}
        for name, value in changes.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        return env

    def run(self, *argv: str, stdin: str = "",
            **env: str | None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "edgectl", *argv], env=self.env(**env),
                              capture_output=True, text=True, timeout=120, input=stdin,
                              cwd=self.directory)

    def json(self, *argv: str, **env: str | None) -> object:
        done = self.run(*argv, "--json", **env)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


def _tls_files(directory: Path) -> dict[str, str]:
    ca, stranger = LocalCA(), LocalCA()
    server, client = ca.issue(["localhost", "127.0.0.1"]), ca.issue(["operator"])
    strange = stranger.issue(["operator"])
    pems = {"ca": ca.pem, "cert": server[0], "key": server[1], "client_cert": client[0],
            "client_key": client[1], "stranger_ca": stranger.pem, "stranger_cert": strange[0],
            "stranger_key": strange[1]}
    for name, pem in pems.items():
        (directory / f"{name}.pem").write_text(pem)
    return {name: str(directory / f"{name}.pem") for name in pems}


def _serve_env(directory: Path, files: dict[str, str], port: int) -> dict[str, str]:
    return {"EDGE_API_TOKEN": TOKEN, "EDGE_EDGE_TOKEN": EDGE_TOKEN,
            "EDGE_ENCRYPTION_KEYS": _KEY, "EDGE_DATA_DIR": str(directory / "data"),
            "EDGE_LISTEN_PORT": str(port), "EDGE_CONTROL_TLS_CERT": files["cert"],
            "EDGE_CONTROL_TLS_KEY": files["key"], "EDGE_CONTROL_CLIENT_CA": files["ca"],
            "EDGE_DNS_SERVERS": "127.0.0.1", "EDGE_DNS_PORT": str(free_port()),
            "EDGE_DNS_TIMEOUT": "0.2", "EDGE_WORKER_INTERVAL": "0.5",
            "EDGE_DRAIN_SECONDS": "0", "EDGE_SHORT_DOMAINS": "acme.link",
            "EDGE_MAX_PENDING_DOMAINS": "0", "PYTHONPATH": str(ROOT)}


_KEY = Fernet.generate_key().decode()


def _store_certificates(env: dict[str, str], ca: LocalCA) -> None:
    """Two certificates in the store before the service starts: one expiring in 10 days,
    one in 60."""
    services = Services.from_settings(load_settings(env=env))
    try:
        for hostname, days in (("soon.example.org", 10), ("later.example.org", 60)):
            cert, key = ca.issue([hostname], days=days)
            services.certificates.save([hostname], cert, key.encode())
    finally:
        services.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    directory = tmp_path_factory.mktemp("operator")
    files = _tls_files(directory)
    _store_certificates(_serve_env(directory, files, 1), LocalCA())

    def start(port: int) -> ManagedProcess:
        return ManagedProcess("serve", [sys.executable, "-m", "edgectl", "serve"],
                              directory / "serve.log", env=_serve_env(directory, files, port))

    process, port = start_listening(start, timeout=60)
    try:
        found = Served(directory, port, files)
        requests.post(f"{found.url}/api/v1/edge/nodes/edge-1", timeout=10, verify=files["ca"],
                      json={"applied_version": None, "haproxy_running": True},
                      headers={"Authorization": f"Bearer {EDGE_TOKEN}"},
                      cert=(files["client_cert"], files["client_key"])).raise_for_status()
        yield found
    finally:
        process.stop()


def test_status_as_a_table_and_as_json(served: Served) -> None:
    done = served.run("status")
    assert done.returncode == 0, done.stderr
    assert served.url in done.stdout and "expiring within 30 days" in done.stdout
    status = served.json("status")
    assert isinstance(status, dict)
    assert status["certificates"]["expiring_30d"] == 1
    assert status["edge"]["nodes"] == 1 and status["storage_backend"] == "sqlite"
    assert set(status["links"]) == {"links", "disabled", "visits"}


def test_nodes(served: Served) -> None:
    done = served.run("nodes")
    assert done.returncode == 0, done.stderr
    assert "edge-1" in done.stdout
    nodes = served.json("nodes")
    assert isinstance(nodes, dict) and [n["node_id"] for n in nodes["nodes"]] == ["edge-1"]


def test_certificates_expiring_within_a_window(served: Served) -> None:
    done = served.run("certs", "list", "--expiring", "30d")
    assert done.returncode == 0, done.stderr
    assert "soon.example.org" in done.stdout and "later.example.org" not in done.stdout
    every = served.json("certs", "list")
    assert isinstance(every, dict)
    assert {c["hostname"] for c in every["certificates"]} == {"soon.example.org",
                                                               "later.example.org"}
    soon = served.json("certs", "list", "--expiring", "2w")
    assert isinstance(soon, dict) and 9 < soon["certificates"][0]["days_left"] <= 10
    wrong = served.run("certs", "list", "--expiring", "soon")
    assert wrong.returncode == 2 and "not a duration like 30d" in wrong.stderr


@pytest.mark.slow
def test_a_domain_from_connect_to_remove(served: Served) -> None:
    done = served.run("domains", "connect", "shop.example.org", "--publication", "pub_ops",
                      "--with-www", "none")
    assert done.returncode == 0, done.stderr
    assert "shop.example.org is connected to pub_ops" in done.stdout
    assert "_edge-challenge" in done.stdout or "TXT" in done.stdout
    listed = served.json("domains", "list", "--publication", "pub_ops")
    assert isinstance(listed, dict)
    assert [d["hostname"] for d in listed["domains"]] == ["shop.example.org"]
    pending = served.run("domains", "list", "--status", "pending_dns")
    assert pending.returncode == 0 and "shop.example.org" in pending.stdout
    shown = served.run("domains", "show", "shop.example.org")
    assert shown.returncode == 0 and "pub_ops" in shown.stdout and "timeline" in shown.stdout
    checked = served.run("domains", "check", "shop.example.org")
    assert checked.returncode == 4, checked.stderr  # nothing points at us: not yet
    assert "DNS is not right yet" in checked.stdout
    refused = served.run("domains", "remove", "shop.example.org")
    assert refused.returncode == 2 and "add --yes" in refused.stderr
    removed = served.run("domains", "remove", "shop.example.org", "--yes")
    assert removed.returncode == 0, removed.stderr
    assert "removing shop.example.org" in removed.stdout


def test_an_unknown_domain_or_status_is_one_sentence(served: Served) -> None:
    done = served.run("domains", "show", "nowhere.example.org")
    assert done.returncode == 1
    assert done.stderr.startswith("edgectl: ") and "nowhere.example.org" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    for name in ("../admin", "..", "a.example.org?x=1"):  # nothing leaves the path segment
        usage = served.run("domains", "show", name)
        assert usage.returncode == 2 and "is not a hostname" in usage.stderr
    status = served.run("domains", "list", "--status", "sleeping")
    assert status.returncode == 1 and "status must be one of" in status.stderr


@pytest.mark.slow
def test_links_create_list_show_stats_and_import(served: Served, tmp_path: Path) -> None:
    done = served.run("links", "create", "acme.link", "https://example.com/spring",
                      "--owner", "pub_ops", "--slug", "spring")
    assert done.returncode == 0, done.stderr
    assert "https://acme.link/spring -> https://example.com/spring" in done.stdout
    listed = served.run("links", "list", "--owner", "pub_ops")
    assert listed.returncode == 0 and "acme.link/spring" in listed.stdout
    link = served.json("links", "show", "https://acme.link/spring")
    assert isinstance(link, dict) and link["target"] == "https://example.com/spring"
    stats = served.json("links", "stats", "acme.link/spring", "--days", "7")
    assert isinstance(stats, dict) and len(stats["days"]) == 7
    bad = served.run("links", "create", "acme.link", "ftp://example.com/x", "--owner", "pub_ops")
    assert bad.returncode == 1 and bad.stderr.startswith("edgectl: target")
    csv = tmp_path / "links.csv"
    csv.write_text("domain,target,owner,slug,code\n"
                   "acme.link,https://example.com/a,pub_ops,a1,\n"
                   "acme.link,javascript:alert(1),pub_ops,a2,\n"
                   "acme.link,https://example.com/b,pub_ops,a3,often\n"
                   "acme.link,https://example.com/c,pub_ops,spring,\n")
    imported = served.run("links", "import", str(csv))
    assert imported.returncode == 1, imported.stderr
    assert "created 1 links, 3 rows refused" in imported.stdout
    for line in ("line 3:", "line 4: code must be a whole number", "line 5:"):
        assert line in imported.stdout
    assert served.run("links", "show", "acme.link").returncode == 2  # no slug: usage


@pytest.mark.slow
def test_errors_name_the_setting_or_the_fix(served: Served, tmp_path: Path) -> None:
    cases = {
        "is not trusted: set EDGE_CONTROL_CA_BUNDLE": {
            "EDGE_CONTROL_CA_BUNDLE": served.files["stranger_ca"]},
        "EDGE_API_TOKEN (api_token): is required": {"EDGE_API_TOKEN": None},
        "refused the API token: set EDGE_API_TOKEN": {"EDGE_API_TOKEN": "x" * 20},
        "needs a client certificate its CA signed; set EDGE_CONTROL_CLIENT_CERT": {
            "EDGE_CONTROL_CLIENT_CERT": served.files["stranger_cert"],
            "EDGE_CONTROL_CLIENT_KEY": served.files["stranger_key"]},
        "cannot reach the control service at https://127.0.0.1:": {
            "EDGE_CONTROL_URL": f"https://127.0.0.1:{free_port()}"},
        "EDGE_CONTROL_CA_BUNDLE names": {"EDGE_CONTROL_CA_BUNDLE": str(tmp_path / "absent")},
    }
    for sentence, env in cases.items():
        done = served.run("status", **env)
        assert sentence in done.stderr, (sentence, done.stderr)
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
        assert done.returncode == (3 if "cannot reach" in sentence else 2), sentence
    without_ca = served.run("status", EDGE_CONTROL_CA_BUNDLE=None)
    assert without_ca.returncode == 2 and "is not trusted" in without_ca.stderr
    # A client certificate its CA signed is fine where none is needed.
    assert served.run("status", EDGE_CONTROL_CLIENT_CERT=served.files["client_cert"],
                      EDGE_CONTROL_CLIENT_KEY=served.files["client_key"]).returncode == 0


def test_the_settings_from_the_users_config_file(served: Served) -> None:
    config = served.directory / "home" / ".config" / "edgectl" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(f'control_url = "{served.url}"\napi_token = "{TOKEN}"\n'
                      f'control_ca_bundle = "{served.files["ca"]}"\n')
    try:
        done = served.run("nodes", EDGE_CONTROL_URL=None, EDGE_API_TOKEN=None,
                          EDGE_CONTROL_CA_BUNDLE=None)
        assert done.returncode == 0, done.stderr
        config.write_text('api_token = "short"\n')
        bad = served.run("nodes", EDGE_API_TOKEN=None)
        assert bad.returncode == 2 and "api_token" in bad.stderr and str(config) in bad.stderr
    finally:
        config.unlink()


def test_plan_says_a_client_certificate_is_needed(served: Served) -> None:
    done = served.run("plan", EDGE_EDGE_TOKEN=EDGE_TOKEN,
                      EDGE_DATA_DIR=str(served.directory / "node"))
    assert done.returncode == 2
    assert "needs a client certificate its CA signed" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_help_names_the_settings_and_no_sphinx_markup(served: Served) -> None:
    top = served.run("--help")
    assert top.returncode == 0 and ":func:" not in top.stdout and "docs/cli.md" in top.stdout
    for argv in (("status",), ("domains", "list"), ("links", "import"), ("certs", "list")):
        done = served.run(*argv, "--help")
        assert "EDGE_API_TOKEN" in done.stdout and "EDGE_CONTROL_CA_BUNDLE" in done.stdout
    plan = served.run("plan", "--help").stdout
    for name in ("EDGE_EDGE_TOKEN", "EDGE_CONTROL_URL", "EDGE_CONTROL_CA_BUNDLE",
                 "EDGE_CONTROL_CLIENT_CERT", "EDGE_CONTROL_CLIENT_KEY", "EDGE_EDGE_DIR"):
        assert name in plan
    assert "EDGE_ENCRYPTION_KEYS" in served.run("serve", "--help").stdout


def test_config_check_reports_every_problem(tmp_path: Path) -> None:
    (tmp_path / "serve.toml").write_text('listen_port = 99999\nlisten_prot = 8000\n'
                                         'hot_links = true\n')
    env_file = tmp_path / "serve.env"
    env_file.write_text("EDGE_API_TOKEN=short\n# a comment\nPYTHONPATH=/opt/edge\n")
    env_file.chmod(0o644)
    done = subprocess.run([sys.executable, "-m", "edgectl", "config", "check",
                           str(tmp_path / "serve.toml"), str(env_file)], capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin",
                                                      "PYTHONPATH": str(ROOT)})
    assert done.returncode == 1, done.stderr
    out = done.stdout
    assert "listen_port in " in out and "listen_prot" in out and "did you mean listen_port" in out
    assert "EDGE_EDGE_TOKEN (edge_token) is missing" in out
    assert "EDGE_ENCRYPTION_KEYS (encryption_keys) is missing" in out
    assert "EDGE_API_TOKEN (api_token): must be at least 16 characters" in out
    assert "hot_links" in out and "chmod 600" in out
    env_file.write_text(f"EDGE_API_TOKEN={TOKEN}\nEDGE_EDGE_TOKEN={EDGE_TOKEN}\n"
                        f"EDGE_ENCRYPTION_KEYS={_KEY}\n")
    (tmp_path / "serve.toml").write_text("listen_port = 8443\n")
    good = subprocess.run([sys.executable, "-m", "edgectl", "config", "check",
                           str(tmp_path / "serve.toml"), str(env_file)], capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin",
                                                      "PYTHONPATH": str(ROOT)})
    assert good.returncode == 0 and "ok for `edgectl serve`" in good.stdout, good.stdout
    agent = subprocess.run([sys.executable, "-m", "edgectl", "config", "check", str(env_file),
                            "--for", "agent"], capture_output=True, text=True, timeout=60,
                           env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert agent.returncode == 0 and "ok for `edgectl agent`" in agent.stdout, agent.stdout
    missing = subprocess.run([sys.executable, "-m", "edgectl", "config", "check",
                              str(tmp_path / "absent.toml")], capture_output=True, text=True,
                             timeout=60, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def test_tokens_create_list_and_revoke(served: Served) -> None:
    created = served.run("tokens", "create", "pub_7", "--label", "cms")
    assert created.returncode == 0, created.stderr
    token = created.stdout.split()[-1]
    assert token.startswith("ept_") and "shown once" in created.stdout
    links = requests.get(f"{served.url}/api/v1/links", timeout=10, verify=served.files["ca"],
                         headers={"Authorization": f"Bearer {token}"},
                         cert=(served.files["client_cert"], served.files["client_key"]))
    assert links.status_code == 200, "the token acts for its publication"
    listed = served.json("tokens", "list", "pub_7")
    assert isinstance(listed, dict) and [t["label"] for t in listed["tokens"]] == ["cms"]
    token_id = listed["tokens"][0]["token_id"]
    assert token_id in served.run("tokens", "list", "pub_7").stdout
    assert served.run("tokens", "revoke", token_id).returncode == 0
    again = served.run("tokens", "revoke", token_id)
    assert again.returncode == 1 and f"no token {token_id}" in again.stderr
    refused = served.run("tokens", "create", "_platform")
    assert refused.returncode == 1 and "starting with a letter" in refused.stderr


def test_what_a_publisher_wrote_prints_as_text_not_as_terminal_codes(
        capsys: pytest.CaptureFixture[str]) -> None:
    """A publisher writes the TXT record ``domains check`` shows, and the error a failing check
    keeps: escape sequences (a window title, a cleared screen) and rich markup in them print as
    plain text, and a stray closing tag does not crash the table."""
    from edgectl.ops import domains
    from edgectl.ops.base import fail
    from edgectl.ops.output import emit
    txt = "\x1b]0;owned\x07\x1b[2J[link=https://evil.example]verify here[/link][/x]\x9b2J"
    checked = {"hostname": "shop.example.org", "ok": False, "status": "pending_dns",
               "validation_errors": [{"message": f"we found {txt!r}"}],
               "seen": {"ns1.example.net": {"TXT": [txt]}}}
    emit(argparse.Namespace(json=False), checked, domains._checked)
    listed = {"domains": [{"hostname": "shop.example.org", "publication_id": "pub_ops",
                           "status": "failing", "updated_at": 0, "last_error": txt}]}
    emit(argparse.Namespace(json=False), listed, domains._list)
    fail(txt, 1)
    printed = capsys.readouterr()
    for text in (printed.out, printed.err):
        assert "\x1b" not in text and "\x07" not in text and "\x9b" not in text
    assert printed.out.count("[link=https://evil.example]verify here[/link][/x]") == 3
    assert "[link=https://evil.example]" in printed.err
