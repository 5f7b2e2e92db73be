"""The walking skeleton for real: API -> DNS -> Pebble -> HAProxy -> app fleet, all processes."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import requests
from cryptography import x509
from cryptography.x509.oid import ExtensionOID

from devtools.demo import LocalStack
from devtools.pebble import PebbleStack
from devtools.probe import https_get
from domains.webhooks import verify_signature
from kit.procs import ManagedProcess
from werkzeug.serving import make_server
from werkzeug.wrappers import Request

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("demo-stack")]


WEBHOOK_SECRET = "webhook-secret-0123456789"


class Receiver:
    """The platform's webhook endpoint: a real HTTP server that checks every signature."""

    def __init__(self) -> None:
        self.events: list[dict[str, object]] = []
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def app(self, environ: dict[str, object], start_response: Callable[..., object]) -> list[bytes]:
        request = Request(environ)
        body = request.get_data()
        if not verify_signature(WEBHOOK_SECRET, request.headers["X-Edge-Timestamp"], body,
                                request.headers["X-Edge-Signature"]):
            start_response("401 Unauthorized", [])
            return [b""]
        self.events.append(json.loads(body))
        start_response("204 No Content", [])
        return [b""]

    def wait_for(self, event_type: str, hostname: str) -> dict[str, object]:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for event in self.events:
                if event["type"] == event_type and \
                        event["data"]["hostname"] == hostname:  # type: ignore[index]
                    return event
            time.sleep(0.05)
        raise AssertionError(f"no {event_type} for {hostname}: {self.events}")


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    hooks = Receiver()
    yield hooks
    hooks.server.shutdown()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pebble: PebbleStack,
          receiver: Receiver) -> Iterator[LocalStack]:
    local = LocalStack(tmp_path_factory.mktemp("stack"), pebble=pebble, extra_nodes=1,
                       extra_env={"EDGE_WEBHOOK_URL": receiver.url,
                                  "EDGE_WEBHOOK_SECRET": WEBHOOK_SECRET})
    yield local
    local.stop()


def test_connected_domain_is_served_over_https_with_a_pebble_certificate(
        stack: LocalStack, receiver: Receiver) -> None:
    created = stack.api("POST", "/api/v1/domains",
                        json={"hostname": "Blog.Example.Test.", "publication_id": "pub_1"})
    assert created.status_code == 201, created.text
    domain = created.json()
    assert domain["hostname"] == "blog.example.test"
    assert domain["status"] == "pending_dns"
    stack.create_records(domain["dns_records"])
    active = stack.wait_active("blog.example.test")
    timeline = [e["what"] for e in reversed(active["events"])]
    assert timeline[:3] == ["connected", "pending_dns -> verified", "verified -> issuing"]
    assert timeline[-1] == "issuing -> active"

    # The chain verifies against Pebble's root, fetched from Pebble itself.
    probe = stack.wait_served("blog.example.test")
    assert probe.json()["publication_id"] == "pub_1"
    names = probe.certificate.extensions.get_extension_for_oid(
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value.get_values_for_type(x509.DNSName)
    assert names == ["blog.example.test"]
    assert "Pebble" in probe.certificate.issuer.rfc4514_string()

    # HSTS on custom domains; one request ID seen by the app and the visitor.
    assert probe.headers["strict-transport-security"] == "max-age=63072000"
    assert probe.json()["request_id"] == probe.headers["x-request-id"]
    exporter = urllib.request.urlopen(f"http://127.0.0.1:{stack.edge_stats_port}/metrics",
                                      timeout=5).read().decode()
    assert "haproxy_frontend_http_requests_total" in exporter

    # A client cannot forge the identity header; both app instances take traffic.
    seen = set()
    for _ in range(6):
        forged = https_get(stack.edge_https_port, "blog.example.test", "/echo/1",
                           cafile=str(stack.pebble.root_path),
                           headers={"X-Publication-Id": "pub_evil"})
        assert forged.json()["publication_id"] == "pub_1"
        seen.add(forged.json()["instance"])
    assert seen == {"app-1", "app-2"}

    # Port 80 sends visitors to HTTPS; unknown hosts get a plain 404.
    request = urllib.request.Request(f"http://127.0.0.1:{stack.edge_http_port}/p/1?x=1",
                                     headers={"Host": "blog.example.test"})
    opener = urllib.request.build_opener(_NoRedirect())
    with pytest.raises(urllib.error.HTTPError) as redirect:
        opener.open(request, timeout=5)
    assert redirect.value.code == 301
    assert redirect.value.headers["Location"] == \
        f"https://blog.example.test:{stack.edge_https_port}/p/1?x=1"
    assert https_get(stack.edge_https_port, "nobody.example.test").status == 404

    # The control service knows the node applied the current state.
    wait_in_sync(stack, nodes=2)
    nodes = stack.api("GET", "/api/v1/edge/nodes").json()
    assert {n["node_id"] for n in nodes["nodes"]} == {"demo-edge", "demo-edge-1"}
    metrics = requests.get(f"{stack.control_url}/metrics", timeout=5,
                           verify=str(stack.control_ca)).text
    assert 'edge_domains{status="active"} 1.0' in metrics

    # Private keys are encrypted in the control service's store.
    stored = b"".join(p.read_bytes() for p in (stack.directory / "data").glob("edge.db*"))
    assert b"BEGIN CERTIFICATE" in stored and b"PRIVATE KEY" not in stored

    # The platform heard about it through signed webhooks.
    for event_type in ("domain.verified", "certificate.issued", "domain.active"):
        event = receiver.wait_for(event_type, "blog.example.test")
        assert event["data"]["publication_id"] == "pub_1"  # type: ignore[index]

    # `edgectl plan` on the node agrees: nothing left to change.
    plan = subprocess.run([sys.executable, "-m", "edgectl", "plan"], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **stack.env()})
    assert plan.returncode == 0, plan.stderr
    assert plan.stdout.splitlines()[-1] == "no changes"


def test_two_nodes_converge_on_each_change(stack: LocalStack, receiver: Receiver) -> None:
    created = stack.api("POST", "/api/v1/domains",
                        json={"hostname": "gone.example.test", "publication_id": "pub_2"})
    stack.create_records(created.json()["dns_records"])
    stack.wait_active("gone.example.test")
    for port in (stack.edge_https_port, *stack.extra_https_ports):
        assert stack.wait_served("gone.example.test", port=port).json()["publication_id"] == \
            "pub_2"
    wait_in_sync(stack, nodes=2)
    assert stack.api("DELETE", "/api/v1/domains/gone.example.test").status_code == 200
    for port in (stack.edge_https_port, *stack.extra_https_ports):
        deadline = time.monotonic() + 30
        while https_get(port, "gone.example.test").status != 404:
            assert time.monotonic() < deadline, "route still served after removal"
            time.sleep(0.1)
    assert stack.api("GET", "/api/v1/domains/gone.example.test").status_code == 404
    wait_in_sync(stack, nodes=2)
    assert receiver.wait_for("domain.removed", "gone.example.test")["data"]["status"] == \
        "removed"  # type: ignore[index]


def test_the_edge_request_id_is_in_the_control_service_log(stack: LocalStack) -> None:
    """A visitor's request to /_edge/ on a custom domain goes through HAProxy to the control
    service: the id the visitor got back is on the control service's JSON line for it, and
    the client's own X-Request-ID never gets through the edge."""
    created = stack.api("POST", "/api/v1/domains",
                        json={"hostname": "logs.example.test", "publication_id": "pub_3"})
    stack.create_records(created.json()["dns_records"])
    stack.wait_active("logs.example.test")
    stack.wait_served("logs.example.test")
    seen = https_get(stack.edge_https_port, "logs.example.test", "/_edge/settings/domains",
                     cafile=str(stack.pebble.root_path),
                     headers={"X-Request-ID": "forged-by-the-client"})
    assert seen.status == 404  # the publisher pages live on the platform's domain only
    request_id = seen.headers["x-request-id"]
    assert request_id and request_id != "forged-by-the-client"

    deadline = time.monotonic() + 10
    while True:
        lines = [json.loads(line) for line in
                 (stack.directory / "control.log").read_text().splitlines()]
        ours = [line for line in lines if line.get("request_id") == request_id]
        if ours or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert ours, f"{request_id} not in the control service's log"
    assert ours[0]["event"] == "GET /_edge/settings/domains 404"
    assert {"ts", "level", "logger"} <= set(ours[0])
    assert not any(line.get("request_id") == "forged-by-the-client" for line in lines)
    # The worker's lines about the domain say which one (the certs part's included).
    issued = [line for line in lines
              if line["event"] == "certificate issued for logs.example.test"]
    assert issued and issued[0]["hostname"] == "logs.example.test" \
        and issued[0]["publication_id"] == "pub_3"


def wait_in_sync(stack: LocalStack, nodes: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        listing = stack.api("GET", "/api/v1/edge/nodes").json()
        if sum(1 for n in listing["nodes"] if n["in_sync"] and not n["error"]) == nodes:
            return
        assert time.monotonic() < deadline, listing
        time.sleep(0.1)


def test_the_demo_runs_writes_demo_json_and_stops_cleanly(tmp_path: Path) -> None:
    """`edgectl demo` as a newcomer runs it; a script drives it from demo.json alone."""
    demo = ManagedProcess("demo", [sys.executable, "-m", "edgectl", "demo", "--directory",
                                   str(tmp_path)], tmp_path / "demo-output.log")
    try:
        manifest_path = tmp_path / "demo.json"
        deadline = time.monotonic() + 240
        while not manifest_path.exists():
            assert demo.poll() is None, demo.tail(40)
            assert time.monotonic() < deadline, demo.tail(40)
            time.sleep(0.5)
        time.sleep(0.2)  # written in one go, but let the writer close it
        manifest = json.loads(manifest_path.read_text())
        assert manifest_path.stat().st_mode & 0o077 == 0, "it holds tokens: owner only"

        domain = requests.get(f"{manifest['control_url']}/api/v1/domains/"
                              f"{manifest['custom_domain']}", timeout=10,
                              verify=manifest["control_ca_file"], headers={"Authorization": f"Bearer {manifest['api_token']}"})
        assert domain.json()["status"] == "active"
        page = https_get(manifest["edge_https_port"], manifest["custom_domain"],
                         cafile=manifest["ca_file"])
        assert page.status == 200 and page.json()["publication_id"] == manifest["publication_id"]
        assert https_get(manifest["edge_https_port"], manifest["platform_host"],
                         cafile=manifest["ca_file"]).status == 200
        short = https_get(manifest["edge_https_port"], manifest["short_domain"], "/read",
                          cafile=manifest["ca_file"])
        assert short.status == 302
        assert short.headers["location"].startswith(f"https://{manifest['custom_domain']}:")
        assert manifest["short_link"].endswith(f"{manifest['short_domain']}:"
                                               f"{manifest['edge_https_port']}/read")
        _link_stats_show_on_the_dashboard(manifest)
        dns = requests.post(f"{manifest['dns_management_url']}/set-txt", timeout=10,
                            json={"host": "probe.example.test.", "value": "demo"})
        assert dns.ok
        assert manifest["control_url"].startswith("https://"), "the agents' channel is TLS"
        login = requests.get(f"{manifest['control_url']}/admin/login", timeout=10,
                             verify=manifest["control_ca_file"])
        assert login.status_code == 200 and manifest["admin_user"] == "admin" \
            and len(manifest["admin_password"]) >= 12
        assert manifest["edge_token"] != manifest["api_token"]
        assert 0 < manifest["edge_http_port"] < 65536
    finally:
        stopped = time.monotonic()
        demo.popen.send_signal(signal.SIGINT)  # Ctrl-C
        assert demo.popen.wait(60) == 0, demo.tail(40)
        took = time.monotonic() - stopped
        demo.stop()
    # Loose on purpose (no timed assertion): what it catches is a stop that sits out an agent's
    # 25 s long poll or HAProxy's hard-stop-after, not a slow machine.
    assert took < 12, f"the demo took {took:.1f} s to stop"
    assert _running_in(tmp_path) == [], "every process of the demo stopped, HAProxy too"
    output = (tmp_path / "demo-output.log").read_text()
    assert "curl --resolve blog.example.test:" in output
    assert "'publication_id': 'pub_1'" in output
    assert "https://platform.example.test:" in output  # served, with its certificate
    assert "Admin dashboard: https://127.0.0.1:" in output and "(user admin, password " in output
    assert "demo: stopping" in output


def _running_in(directory: Path) -> list[str]:
    """The command lines of the processes that name ``directory`` (the demo's files)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if str(directory) in argv and entry.isdigit() and int(entry) != os.getpid():
            found.append(argv)
    return found


def _link_stats_show_on_the_dashboard(manifest: dict[str, Any]) -> None:
    """Issue 18: the demo's short link's visits (a browser's; a script's is a bot's) reach
    its page on the dashboard, whichever path (edge map or Python) served them."""
    browser = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/124.0 Safari/537.36",
               "Referer": "https://news.example.org/post"}
    for headers in (browser, browser, {"User-Agent": "curl/8.5.0"}):
        assert https_get(manifest["edge_https_port"], manifest["short_domain"], "/read",
                         cafile=manifest["ca_file"], headers=headers).status == 302
    session = requests.Session()
    ca = manifest["control_ca_file"]  # per request: the environment's CA bundle would win
    page = session.get(f"{manifest['control_url']}/admin/login", timeout=10, verify=ca).text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token is not None
    assert session.post(f"{manifest['control_url']}/admin/login", timeout=10, verify=ca, data={
        "csrf_token": token.group(1), "username": manifest["admin_user"],
        "password": manifest["admin_password"], "next": ""}).ok
    deadline = time.monotonic() + 60
    while True:  # the Python path flushes every 2 s, an agent reports the edge's counts
        page = session.get(manifest["short_link_stats_page"], timeout=10, verify=ca).text
        visits = re.search(r'<dd id="visits">(\d+)</dd>', page)
        if visits and int(visits.group(1)) >= 3:  # the probe above's visit, and these two
            break
        assert time.monotonic() < deadline, page[-2000:]
        time.sleep(0.5)
    assert "<svg" in page and "visits</title>" in page


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None
