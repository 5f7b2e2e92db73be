"""`edgectl demo`: Pebble, challtestsrv, HAProxy, the control service, the short-link app and
two sample apps on loopback; connects a domain and a short domain through the publisher API
like a platform would, creates their DNS records like a publisher would, waits for real HTTPS,
makes a short link, prints curl lines to try them and writes ``demo.json`` for scripts."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import ssl
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests
from cryptography.fernet import Fernet

from devtools.pebble import PebbleStack
from devtools.probe import Probe, https_get
from devtools.sample_app import SampleApp
from kit.files import PUBLIC, SECRET, write_atomic
from edge.node import EdgeNode
from kit.procs import (ManagedProcess, free_port, on_signals, stop_all, wait_for_port,
                        wait_for_stop)
from kit.x509 import LocalCA

EDGE_TARGET = "edge.platform.test"
PLATFORM_HOST = "platform.example.test"
SHORT_DOMAIN = "go.example.test"


class LocalStack:
    """Every process of the product on loopback, in ``directory``; ``stop()`` ends them all."""

    def __init__(self, directory: Path, pebble: PebbleStack | None = None,
                 edge_http_port: int | None = None, extra_nodes: int = 0,
                 extra_env: dict[str, str] | None = None, sso: bool = False,
                 shortlinks: bool = False, log_level: str = "INFO") -> None:
        self.directory = directory
        self.log_level = log_level
        self.token = "demo-" + Fernet.generate_key().decode()[:24]
        self.edge_token = "edge-" + Fernet.generate_key().decode()[:24]
        self.encryption_key = Fernet.generate_key().decode()
        self.edge_http_port = pebble.http_port if pebble else (edge_http_port or free_port())
        self.edge_https_port = free_port()
        self.edge_stats_port = free_port()
        self.control_port = free_port()
        self.shortlinks_port = free_port()
        self.control_ca = self._control_tls()
        self._own_pebble = pebble is None
        self.sso = sso
        self.pebble = pebble or PebbleStack(directory / "pebble", http_port=self.edge_http_port)
        self.apps: list[SampleApp] = []
        self.processes: list[ManagedProcess] = []
        self.edge_dirs: list[Path] = []
        try:
            self.apps = [SampleApp(f"app-{n}", 0) for n in (1, 2)]
            env = {**self.env(), **(extra_env or {})}
            control = self._spawn("control", ["serve"], env)
            wait_for_port(self.control_port, process=control)
            if shortlinks:  # the redirect app (`edgectl shortlinks`) the edge sends short domains to
                links = self._spawn("shortlinks", ["shortlinks"], env)
                wait_for_port(self.shortlinks_port, process=links)
            self._spawn("agent", ["agent", "--node-id", "demo-edge"], env)
            self.edge_dirs.append(self.directory / "data" / "edge")  # the default edge_dir
            self.extra_https_ports = []
            for n in range(1, extra_nodes + 1):
                # More edge nodes, each with its own agent, ports and files.
                self.extra_https_ports.append(free_port())
                self.edge_dirs.append(self.directory / f"edge{n}")
                self._spawn(f"agent{n}", ["agent", "--node-id", f"demo-edge-{n}"], {
                    **env, "EDGE_EDGE_DIR": str(self.edge_dirs[-1]),
                    "EDGE_EDGE_HTTP_PORT": str(free_port()),
                    "EDGE_EDGE_HTTPS_PORT": str(self.extra_https_ports[-1]),
                    "EDGE_EDGE_STATS_PORT": str(free_port())})
        except BaseException:
            self.stop()
            raise

    def _control_tls(self) -> Path:
        """A local CA made at start, the control service's certificate and the agents' client
        certificate: the agents' channel carries private keys, so it is HTTPS here too, with
        mTLS. Returns the CA's file."""
        ca = LocalCA()
        folder = self.directory / "control-tls"
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / "ca.pem", ca.pem, PUBLIC)
        for name, names in (("server", ["localhost", "127.0.0.1"]), ("agent", ["demo-agent"])):
            cert, key = ca.issue(names)
            write_atomic(folder / f"{name}.pem", cert, PUBLIC)
            write_atomic(folder / f"{name}.key", key, SECRET)
        return folder / "ca.pem"

    def env(self) -> dict[str, str]:
        return {
            "EDGE_API_TOKEN": self.token,
            "EDGE_EDGE_TOKEN": self.edge_token,
            "EDGE_ENCRYPTION_KEYS": self.encryption_key,
            "EDGE_DATA_DIR": str(self.directory / "data"),
            "EDGE_LISTEN_PORT": str(self.control_port),
            "EDGE_CONTROL_TLS_CERT": str(self.control_ca.parent / "server.pem"),
            "EDGE_CONTROL_TLS_KEY": str(self.control_ca.parent / "server.key"),
            "EDGE_CONTROL_CA_BUNDLE": str(self.control_ca),
            "EDGE_CONTROL_CLIENT_CA": str(self.control_ca),
            "EDGE_CONTROL_CLIENT_CERT": str(self.control_ca.parent / "agent.pem"),
            "EDGE_CONTROL_CLIENT_KEY": str(self.control_ca.parent / "agent.key"),
            "EDGE_SHORTLINKS_PORT": str(self.shortlinks_port),
            "EDGE_PLATFORM_DOMAINS": "platform.test",
            "EDGE_EDGE_CNAME_TARGET": EDGE_TARGET,
            "EDGE_EDGE_ADDRESSES": "127.0.0.1",
            "EDGE_DNS_SERVERS": "127.0.0.1",
            "EDGE_DNS_PORT": str(self.pebble.dns_port),
            "EDGE_ACME_DIRECTORY_URL": self.pebble.directory_url,
            "EDGE_ACME_CA_BUNDLE": str(self.pebble.listener_ca),
            "EDGE_APP_SERVERS": ",".join(app.address for app in self.apps),
            "EDGE_EDGE_HTTP_PORT": str(self.edge_http_port),
            "EDGE_EDGE_HTTPS_PORT": str(self.edge_https_port),
            "EDGE_EDGE_STATS_PORT": str(self.edge_stats_port),
            "EDGE_WORKER_INTERVAL": "0.2",
            "EDGE_DRAIN_SECONDS": "0",  # no load balancer to take the replica out first
            "EDGE_RETRY_BASE_SECONDS": "0.5",
            "EDGE_RETRY_MAX_SECONDS": "5",
            **(self._sso_env() if self.sso else {}),
        }

    def _sso_env(self) -> dict[str, str]:
        """The first sample app plays the platform: its sign-in page and session introspection."""
        return {"EDGE_SSO_PLATFORM_URL": self.platform_url,
                "EDGE_SSO_PLATFORM_LOGIN_URL": f"{self.platform_url}/login",
                "EDGE_SSO_INTROSPECTION_URL": f"http://{self.apps[0].address}/_platform/session"}

    @property
    def platform_url(self) -> str:
        return f"https://{PLATFORM_HOST}:{self.edge_https_port}"

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> ManagedProcess:
        process = ManagedProcess(name, [sys.executable, "-m", "edgectl", "--log-level",
                                        self.log_level, *args],
                                 self.directory / f"{name}.log", env=env)
        self.processes.append(process)
        return process

    @property
    def control_url(self) -> str:
        return f"https://127.0.0.1:{self.control_port}"

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return requests.request(method, f"{self.control_url}{path}", timeout=10,
                                verify=str(self.control_ca),
                                headers={"Authorization": f"Bearer {self.token}"}, **kwargs)

    def create_records(self, records: list[dict[str, str]]) -> None:
        """What the publisher does at their DNS provider (here: challtestsrv)."""
        for record in records:
            if record["type"] == "TXT":
                self.pebble.set_txt(record["name"], record["value"])
            elif record["type"] == "CNAME":
                self.pebble.set_cname(record["name"], record["value"])

    def wait_active(self, hostname: str, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        domain: dict[str, Any] = {}
        while time.monotonic() < deadline:
            domain = self.api("GET", f"/api/v1/domains/{hostname}").json()
            if domain.get("status") == "active":
                return domain
            self.check_alive()
            time.sleep(0.2)
        raise TimeoutError(f"{hostname} is not active after {timeout}s: {domain}")

    def wait_served(self, hostname: str, timeout: float = 60.0,
                    port: int | None = None) -> Probe:
        """Poll HTTPS on the edge until ``hostname`` answers from the app fleet."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            try:
                probe = https_get(port or self.edge_https_port, hostname,
                                  cafile=str(self.pebble.root_path))
                if probe.status == 200:
                    return probe
                last = probe.status
            except (OSError, ssl.SSLError) as exc:
                last = exc
            self.check_alive()
            time.sleep(0.2)
        raise TimeoutError(f"https://{hostname} not served after {timeout}s: {last}")

    def create_admin(self, username: str = "admin") -> str:
        """An admin account for the dashboard, through `edgectl admin create-user`; its password."""
        password = secrets.token_urlsafe(12)
        subprocess.run([sys.executable, "-m", "edgectl", "admin", "create-user", username,
                        "--password-stdin"], input=password + "\n", text=True, check=True,
                       env={**os.environ, **self.env()}, capture_output=True)
        return password

    def check_alive(self) -> None:
        for process in self.processes:
            if process.poll() is not None:
                raise RuntimeError(f"{process.name} exited: {process.tail()}")

    def curl_line(self, hostname: str) -> str:
        return (f"curl --resolve {hostname}:{self.edge_https_port}:127.0.0.1 "
                f"--cacert {self.pebble.root_path} https://{hostname}:{self.edge_https_port}/")

    def stop(self) -> None:
        """Everything at once (each process stops on its own clock), then each node's
        HAProxy, which an agent leaves serving when it stops."""
        stopping = [threading.Thread(target=app.stop) for app in self.apps]
        for thread in stopping:
            thread.start()
        pebble = [self.pebble.pebble, self.pebble.challtestsrv] if self._own_pebble else []
        stop_all([*self.processes, *(p for p in pebble if p is not None)])
        for edge_dir in self.edge_dirs:
            if edge_dir.exists():
                EdgeNode(edge_dir).stop()
        for thread in stopping:
            thread.join()


def _connect(stack: LocalStack, hostname: str) -> None:
    """Connect ``hostname`` for pub_1 as the platform would, create its DNS records as the
    publisher would, and wait until it is active."""
    response = stack.api("POST", "/api/v1/domains",
                         json={"hostname": hostname, "publication_id": "pub_1"})
    response.raise_for_status()
    records = response.json()["dns_records"]
    print(f"demo: connected {hostname}; creating its DNS records: "
          + ", ".join(f"{r['type']} {r['name']} -> {r['value']}" for r in records))
    stack.create_records(records)
    stack.wait_active(hostname)


def _short_link(stack: LocalStack, hostname: str) -> str:
    """A short link on the demo's short domain to the custom domain's first article."""
    response = stack.api("POST", "/api/v1/links", json={
        "domain": SHORT_DOMAIN, "owner": "pub_1", "slug": "read",
        "target": f"https://{hostname}:{stack.edge_https_port}/p/1"})
    response.raise_for_status()
    return f"https://{SHORT_DOMAIN}:{stack.edge_https_port}/read"


def _stats_page(stack: LocalStack) -> str:
    """The dashboard's page of the demo's short link (its visits per day, both paths)."""
    return f"{stack.control_url}/admin/links/{SHORT_DOMAIN}/read"


def write_manifest(stack: LocalStack, hostname: str, short_link: str,
                   admin_password: str) -> Path:
    """``demo.json`` in the demo's directory: what a script needs to drive the running demo
    (readable by its owner only: it holds the tokens and the admin password)."""
    manifest = {
        "control_url": stack.control_url,
        "edge_http_port": stack.edge_http_port,
        "edge_https_port": stack.edge_https_port,
        "edge_address": "127.0.0.1",
        "platform_host": PLATFORM_HOST,
        "platform_url": stack.platform_url,
        "custom_domain": hostname,
        "publication_id": "pub_1",
        "short_domain": SHORT_DOMAIN,
        "short_link": short_link,
        "short_link_stats_page": _stats_page(stack),
        "api_token": stack.token,
        "edge_token": stack.edge_token,
        "admin_user": "admin",
        "admin_password": admin_password,
        "ca_file": str(stack.pebble.root_path),
        "control_ca_file": str(stack.control_ca),
        "dns_management_url": f"http://127.0.0.1:{stack.pebble.dns_mgmt_port}",
    }
    path = stack.directory / "demo.json"
    write_atomic(path, json.dumps(manifest, indent=2), SECRET)  # it holds tokens
    return path


def run_demo(hostname: str, once: bool = False, directory: Path | None = None) -> int:
    """The whole product on loopback. ``directory`` holds every process's files and
    ``demo.json`` (default: a new temporary directory, removed after ``--once``)."""
    temporary = directory is None
    directory = directory or Path(tempfile.mkdtemp(prefix="edge-demo-"))
    directory.mkdir(parents=True, exist_ok=True)
    print(f"demo: starting Pebble, HAProxy, the control service and two apps in {directory}")
    stack = LocalStack(directory, sso=True, shortlinks=True,
                       extra_env={"EDGE_SHORT_DOMAINS": SHORT_DOMAIN})
    stop = threading.Event()
    try:
        print(f"demo: control service at {stack.control_url} (token {stack.token})")
        started = time.monotonic()
        _connect(stack, hostname)
        served = stack.wait_served(hostname)
        print(f"demo: {hostname} is active and served over HTTPS in "
              f"{time.monotonic() - started:.1f}s; the app saw {served.json()}")
        stack.wait_served(PLATFORM_HOST)
        _connect(stack, SHORT_DOMAIN)
        short_link = _short_link(stack, hostname)
        port = stack.edge_https_port
        print("\nTry it:\n  " + stack.curl_line(hostname) + "\n  "
              + f"curl -i --resolve {SHORT_DOMAIN}:{port}:127.0.0.1 "
              f"--cacert {stack.pebble.root_path} {short_link}   (a short link)\n")
        print("In a browser that resolves the demo's names to loopback and accepts Pebble's\n"
              "certificates, for example\n"
              f"  chromium --host-resolver-rules='MAP *.example.test 127.0.0.1' "
              f"--ignore-certificate-errors {stack.platform_url}/home\n"
              "sign in on the platform, connect a domain on the publisher settings page, and\n"
              f"read https://{hostname}:{port}/p/1 signed in (single sign-on).")
        password = stack.create_admin()
        print(f"Admin dashboard: {stack.control_url}/admin/ (user admin, password "
              f"{password}); the short link's visits per day: {_stats_page(stack)}\n"
              "  (curl counts as a bot there, apart from visits; a browser's visit counts)")
        print(f"demo: endpoints, tokens and passwords for scripts in "
              f"{write_manifest(stack, hostname, short_link, password)}\n")
        if not once:
            print("demo: press Ctrl-C to stop everything", flush=True)
            on_signals(stop.set)
            wait_for_stop(stop)
        return 0
    finally:
        print("demo: stopping")
        stack.stop()
        if once and temporary:
            shutil.rmtree(directory, ignore_errors=True)
