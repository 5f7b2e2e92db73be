"""Structured logs: the formatter's fields, the context on every line, the request id of the
control service, and no escape codes in either format (real processes where it matters)."""
from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests
from cryptography.fernet import Fernet

from admin_app import create_app
from control.server import ControlServer
from control.wiring import Services
from kit import logs
from kit.procs import ManagedProcess, free_port, wait_for_port
from kit.settings import Settings, SettingsError, load_settings
from kit.web import REQUEST_ID_HEADER
from kit.x509 import local_ca_and_server

ROOT = Path(__file__).resolve().parent.parent
ESC = "\x1b"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The root logger, JSON to a buffer, for the length of the test; then as it was."""
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    stream = io.StringIO()
    logs.configure("json", "DEBUG", stream=stream)
    try:
        yield stream
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in before:
            root.addHandler(handler)
        root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_json_line_has_the_standard_fields_and_the_bound_context(
        captured: io.StringIO) -> None:
    log = logging.getLogger("edge.test")
    with logs.bound(request_id="7F000001:C0DE_1", hostname="blog.example.test",
                    publication_id="pub_1"):
        log.info("issued for %s \x1b[32mgreen\x1b[0m", "blog.example.test",
                 extra={"attempt": 2})
        with logs.bound(hostname="other.example.test"):  # nested: the inner one wins
            log.warning("inner")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.exception("failed")
    log.info("outside", extra={"publication_id": "pub_extra"})  # extra= works alone too

    first, inner, failed, outside = lines(captured)
    assert list(first)[:7] == ["ts", "level", "event", "logger", "request_id", "hostname",
                               "publication_id"]
    assert first["level"] == "INFO" and first["logger"] == "edge.test"
    assert first["event"] == "issued for blog.example.test green"
    assert str(first["ts"]).endswith("Z") and "T" in str(first["ts"])
    assert first["request_id"] == "7F000001:C0DE_1" and first["attempt"] == 2
    assert "message" not in first
    assert inner["hostname"] == "other.example.test" and inner["publication_id"] == "pub_1"
    assert "RuntimeError: boom" in str(failed["exc_info"])
    assert outside["publication_id"] == "pub_extra"
    assert "request_id" not in outside and "hostname" not in outside, "the context ended"


def test_the_context_follows_its_thread_only(captured: io.StringIO) -> None:
    log = logging.getLogger("edge.test")

    def elsewhere() -> None:
        log.info("from another thread")

    with logs.bound(hostname="mine.example.test"):
        thread = threading.Thread(target=elsewhere)
        thread.start()
        thread.join()
    (line,) = lines(captured)
    assert "hostname" not in line


def test_text_lines_have_no_escape_codes_and_show_the_context() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.TextFormatter())
    handler.addFilter(logs.ContextFilter())
    record = logging.LogRecord("werkzeug", logging.INFO, __file__, 1,
                               '127.0.0.1 - "\x1b[32mGET / HTTP/1.1\x1b[0m" 200 -\nforged line',
                               None, None)
    with logs.bound(request_id="abc"):
        handler.handle(record)
    text = stream.getvalue()
    assert ESC not in text
    assert '"GET / HTTP/1.1" 200 -' in text and text.rstrip().endswith("[request_id=abc]")
    assert "\n    forged line" in text, "a message's next line cannot pass for a log line"


@pytest.mark.parametrize("sent, kept", [
    ("7F000001:D1A2_7F000001:20FB_6565ABCD_0001:1F2E", True),  # HAProxy's unique-id-format
    ("client-trace.42", True),
    ("", False), (None, False), ("a b", False), ("x" * 129, False), ("id\r\nInjected: 1", False),
    ("\x1b[31mred", False), ("<script>", False),
])
def test_a_request_id_is_kept_only_when_it_is_a_short_plain_token(sent: str | None,
                                                                  kept: bool) -> None:
    got = logs.request_id_from(sent)
    assert (got == sent) is kept
    assert 1 <= len(got) <= 128 and got.isascii() and " " not in got


def test_log_settings_are_checked() -> None:
    assert load_settings(env={"EDGE_LOG_FORMAT": "json", "EDGE_LOG_LEVEL": "debug"},
                         required=()).log_level == "DEBUG"
    assert load_settings(env={}, required=()).log_format == "auto"
    with pytest.raises(SettingsError, match="log_format"):
        load_settings(env={"EDGE_LOG_FORMAT": "xml"}, required=())
    with pytest.raises(SettingsError, match="log_level"):
        load_settings(env={"EDGE_LOG_LEVEL": "loud"}, required=())
    assert logs.resolve_format("auto", io.StringIO()) == "json", "not a terminal"


def test_the_control_service_binds_echoes_and_logs_the_request_id(
        settings: Settings, captured: io.StringIO) -> None:
    """Through cheroot, as `edgectl serve` runs it: the edge's id (or a new one) on the
    access line and on the view's lines, echoed in the response."""
    services = Services.from_settings(settings)
    app = create_app(services)

    @app.get("/_test/says")
    def says() -> str:  # a view that logs: its line carries the request's context
        logging.getLogger("edge.view").info("a view speaks")
        return "ok"

    server = ControlServer(app, "127.0.0.1", 0, threads=2)
    server.start()
    base = f"http://127.0.0.1:{server.port}"
    token = {"Authorization": f"Bearer {settings.api_token}"}
    try:
        edge_id = "7F000001:D1A2_7F000001:20FB_6565ABCD_0001:1F2E"
        created = requests.post(f"{base}/api/v1/domains", timeout=10,
                                headers={**token, REQUEST_ID_HEADER: edge_id},
                                json={"hostname": "logged.example.test",
                                      "publication_id": "pub_7"})
        assert created.status_code == 201 and created.headers[REQUEST_ID_HEADER] == edge_id
        shown = requests.get(f"{base}/api/v1/domains/logged.example.test", timeout=10,
                             headers={**token, REQUEST_ID_HEADER: "bad id\x7f"})
        generated = shown.headers[REQUEST_ID_HEADER]
        assert shown.ok and len(generated) == 32 and generated != edge_id
        health = requests.get(f"{base}/healthz", timeout=10)
        assert health.headers[REQUEST_ID_HEADER]
        assert requests.get(f"{base}/_test/says", timeout=10,
                            headers={REQUEST_ID_HEADER: "view-1"}).text == "ok"
    finally:
        server.stop()
        services.close()
    found = lines(captured)
    access = {line["request_id"]: line for line in found if line["logger"] == "edgectl.access"}
    assert access[edge_id]["event"] == "POST /api/v1/domains 201"
    assert access[edge_id]["status"] == 201 and access[edge_id]["publication_id"] == "pub_7"
    assert access[generated]["hostname"] == "logged.example.test"
    assert access[generated]["publication_id"] == "pub_7", "the view bound it"
    assert access[health.headers[REQUEST_ID_HEADER]]["level"] == "DEBUG", \
        "health checks are quiet"
    (spoken,) = [line for line in found if line["logger"] == "edge.view"]
    assert spoken["request_id"] == "view-1" and "hostname" not in spoken
    assert all("request_id" not in line for line in found
               if line["logger"] == "urllib3.connectionpool"), "the client's thread is apart"


def _serve(tmp_path: Path, env: dict[str, str], name: str) -> tuple[ManagedProcess, int]:
    port = free_port()
    process = ManagedProcess(name, [sys.executable, "-m", "edgectl", "serve"],
                             tmp_path / f"{name}.log", cwd=str(ROOT), env={
                                 "PYTHONPATH": str(ROOT),
                                 "EDGE_API_TOKEN": "api-token-0123456789",
                                 "EDGE_EDGE_TOKEN": "edge-token-0123456789",
                                 "EDGE_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
                                 "EDGE_DATA_DIR": str(tmp_path / f"{name}-data"),
                                 "EDGE_LISTEN_PORT": str(port), **env})
    wait_for_port(port, process=process, timeout=60)
    return process, port


@pytest.mark.slow
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_serve_writes_no_escape_codes_to_its_log_file(tmp_path: Path, log_format: str) -> None:
    """`edgectl serve` with its output in a file, each format: no escape sequence, not even
    from a client's path."""
    process, port = _serve(tmp_path, {"EDGE_LOG_FORMAT": log_format}, log_format)
    try:
        for _ in range(3):
            assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10).ok
        missing = requests.get(f"http://127.0.0.1:{port}/\x1b[31mnope", timeout=10)
        assert missing.status_code == 404
    finally:
        process.stop()
    text = (tmp_path / f"{log_format}.log").read_text()
    assert ESC not in text
    assert "control service on http://" in text
    if log_format == "json":
        parsed = [json.loads(line) for line in text.splitlines()]
        assert any(line["event"] == "GET /nope 404" and line["path"] == "/nope"
                   and line["request_id"] for line in parsed)
    else:
        assert " INFO edgectl.access: GET /nope 404 [request_id=" in text


def test_serve_with_a_bad_log_setting_says_so(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "edgectl", "serve"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(ROOT),
                                 "EDGE_LOG_FORMAT": "xml"})
    assert result.returncode == 2 and "EDGE_LOG_FORMAT" in result.stderr


@pytest.mark.slow
def test_cheroot_handshake_noise_is_a_debug_log_line(tmp_path: Path) -> None:
    """A client that opens a TLS connection and leaves (a scanner, a TCP health check):
    cheroot's message is a JSON line at DEBUG, not bare text on stderr."""
    ca, cert, key = local_ca_and_server(["127.0.0.1"])
    (tmp_path / "cert.pem").write_text(cert)
    (tmp_path / "key.pem").write_text(key)
    process, port = _serve(tmp_path, {"EDGE_LOG_FORMAT": "json", "EDGE_LOG_LEVEL": "debug",
                                      "EDGE_CONTROL_TLS_CERT": str(tmp_path / "cert.pem"),
                                      "EDGE_CONTROL_TLS_KEY": str(tmp_path / "key.pem")},
                           "tls")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"\x16\x03\x01\x00\x05hello")  # the start of a handshake, then gone
        deadline = time.monotonic() + 10
        while "Client" not in (tmp_path / "tls.log").read_text():
            assert time.monotonic() < deadline, process.tail()
            time.sleep(0.1)
    finally:
        process.stop()
    parsed = [json.loads(line) for line in (tmp_path / "tls.log").read_text().splitlines()]
    noise = [line for line in parsed if "Client" in str(line["event"])]
    assert noise and all(line["logger"] == "cheroot" and line["level"] == "DEBUG"
                         for line in noise)


@pytest.mark.slow
def test_haproxys_tls_health_checks_log_nothing_above_debug(tmp_path: Path) -> None:
    """HAProxy's TLS health checks of /healthz (every 2 s at the edge) close the connection
    once they have the status, without a TLS close_notify: cheroot's "socket.error 8" WARNING,
    with an SSLEOFError traceback, about every other check. It is noise: a DEBUG line."""
    ca, cert, key = local_ca_and_server(["127.0.0.1"])
    for name, pem in (("ca", ca), ("cert", cert), ("key", key)):
        (tmp_path / f"{name}.pem").write_text(pem)
    process, port = _serve(tmp_path, {"EDGE_LOG_FORMAT": "json", "EDGE_LOG_LEVEL": "debug",
                                      "EDGE_CONTROL_TLS_CERT": str(tmp_path / "cert.pem"),
                                      "EDGE_CONTROL_TLS_KEY": str(tmp_path / "key.pem")},
                           "checked")
    config = tmp_path / "haproxy.cfg"
    config.write_text(f"""global
defaults
    mode http
    timeout connect 1s
    timeout client 1s
    timeout server 1s
backend control
    option httpchk
    http-check send meth GET uri /healthz
    server c 127.0.0.1:{port} check inter 100ms ssl verify required ca-file {tmp_path}/ca.pem
frontend f
    bind 127.0.0.1:{free_port()}
    default_backend control
""")
    checker = ManagedProcess("haproxy", ["haproxy", "-db", "-f", str(config)],
                             tmp_path / "haproxy.log")
    try:
        deadline = time.monotonic() + 20
        while (tmp_path / "checked.log").read_text().count("GET /healthz 200") < 20:
            assert time.monotonic() < deadline, process.tail()
            time.sleep(0.1)
        time.sleep(0.3)  # the last check's hang-up logged too
    finally:
        checker.stop()
        process.stop()
    parsed = [json.loads(line) for line in (tmp_path / "checked.log").read_text().splitlines()]
    assert not [line for line in parsed if line["level"] not in ("DEBUG", "INFO")], parsed
    hangups = [line for line in parsed if line["logger"] == "cheroot"]
    assert all(line["level"] == "DEBUG" and "exc_info" not in line for line in hangups)
    print(f"{len(hangups)} hang-ups in 20 checks, at DEBUG")


def test_where_boto3_found_its_credentials_is_not_logged_at_info() -> None:
    out = io.StringIO()
    logs.configure("text", "INFO", out)  # taken off after the test (tests/conftest.py)
    logging.getLogger("botocore.credentials").info("Found credentials in environment variables.")
    logging.getLogger("botocore.credentials").warning("credentials expire soon")
    assert "Found credentials" not in out.getvalue()
    assert "credentials expire soon" in out.getvalue()
