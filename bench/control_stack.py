"""The processes of ``bench/control_scale.py``: knotd, dynalite (on DynamoDB), `edgectl serve`
and `edgectl agent` with its HAProxy, on loopback in one directory, and what is measured on
them (CPU and RSS from /proc, store requests from serve's /metrics, changes over HTTPS)."""
from __future__ import annotations

import math
import os
import socket
import ssl
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import requests
from cryptography.fernet import Fernet
from prometheus_client.parser import text_string_to_metric_families

from bench import control_seed
from control.wiring import Services
from devtools.dns_server import KnotServer
from domains.service import ACTIVE
from kit.procs import ManagedProcess, free_port, wait_for_port
from kit.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")
EDGE_TARGET = "edge.platform.test"
RECHECK_SECONDS = 3600.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1)]


def served_location(port: int, hostname: str) -> str:
    """The Location HAProxy answers ``https://hostname/`` with ('' when none)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=hostname) as tls:
            tls.sendall(f"GET /bench HTTP/1.1\r\nHost: {hostname}\r\nConnection: close\r\n\r\n"
                        .encode())
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = tls.recv(4096)
                if not chunk:
                    break
                head += chunk
    for line in head.decode(errors="replace").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.lower() == "location":
            return value.strip()
    return ""


class ControlStack:
    def __init__(self, directory: Path, backend: str) -> None:
        self.directory = directory
        self.processes: list[ManagedProcess] = []
        self.knot = KnotServer(directory / "knot", {control_seed.ZONE: ""})
        self.control_port, self.https_port = free_port(), free_port()
        self.token = "bench-api-" + Fernet.generate_key().decode()[:24]
        self.env = {
            "EDGE_API_TOKEN": self.token, "EDGE_EDGE_TOKEN": "bench-edge-0123456789abcdef",
            "EDGE_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
            "EDGE_DATA_DIR": str(directory / "data"),
            "EDGE_LISTEN_PORT": str(self.control_port),
            "EDGE_EDGE_CNAME_TARGET": EDGE_TARGET, "EDGE_EDGE_ADDRESSES": "127.0.0.1",
            "EDGE_DNS_SERVERS": "127.0.0.1", "EDGE_DNS_PORT": str(self.knot.port),
            # No CA is asked: every certificate is stored, its renewal answer remembered.
            "EDGE_ACME_DIRECTORY_URL": f"http://127.0.0.1:{free_port()}/directory",
            "EDGE_APP_SERVERS": f"127.0.0.1:{free_port()}",
            "EDGE_EDGE_HTTP_PORT": str(free_port()), "EDGE_EDGE_HTTPS_PORT": str(self.https_port),
            "EDGE_EDGE_STATS_PORT": str(free_port()),
            "EDGE_RECHECK_SECONDS": str(RECHECK_SECONDS), "EDGE_DRAIN_SECONDS": "0",
        }
        if backend == "dynamodb":
            port = free_port()
            dynalite = ManagedProcess("dynalite", [
                str(ROOT / "node_modules" / ".bin" / "dynalite"), "--host", "127.0.0.1",
                "--port", str(port), "--path", str(directory / "dynalite")],
                directory / "dynalite.log")
            self.processes.append(dynalite)
            wait_for_port(port, process=dynalite)
            self.env.update(EDGE_STORAGE_BACKEND="dynamodb",
                            EDGE_DYNAMODB_ENDPOINT_URL=f"http://127.0.0.1:{port}",
                            AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench")
            os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")  # dynalite checks none
            os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
        self.serve: ManagedProcess | None = None
        self.agent: ManagedProcess | None = None

    def settings(self) -> Settings:
        return load_settings(env=self.env)

    def _spawn(self, name: str, *args: str) -> ManagedProcess:
        process = ManagedProcess(name, [sys.executable, "-m", "edgectl", *args],
                                 self.directory / f"{name}.log",
                                 env={**self.env, "PYTHONPATH": str(ROOT)})
        self.processes.append(process)
        return process

    def edgectl(self, *args: str, env: dict[str, str] | None = None,
                timeout: float = 7200) -> None:
        """Run one `edgectl` command to its end (with ``env`` over the stack's); raise if it
        fails."""
        process = ManagedProcess(args[0], [sys.executable, "-m", "edgectl", *args],
                                 self.directory / f"{args[0]}.log",
                                 env={**self.env, **(env or {}), "PYTHONPATH": str(ROOT)})
        try:
            code = process.popen.wait(timeout)
        finally:
            process.stop()
        if code != 0:
            raise RuntimeError(f"edgectl {' '.join(args)} failed ({code}):\n{process.tail()}")

    def seed_through_a_backup(self, count: int) -> dict[str, str]:
        """A DynamoDB fleet seeded at SQLite's speed: the same write paths
        (``control_seed.seed``) into a SQLite store at this release's schema, then `edgectl
        backup` and `edgectl restore` into DynamoDB, the product's way to move a store. (dynalite
        takes about 8 domains a second through the write paths themselves: hours at 100,000.)"""
        side = {"EDGE_STORAGE_BACKEND": "sqlite",
                "EDGE_SQLITE_PATH": str(self.directory / "seed.db")}
        self.edgectl("migrate", "--apply", env=side)
        tokens = control_seed.seed(load_settings(env={**self.env, **side}), count, 1)
        backup = self.directory / "seed.backup"
        self.edgectl("backup", str(backup), env=side)
        self.edgectl("restore", str(backup))
        backup.unlink()
        return tokens

    def start_serve(self) -> float:
        started = time.monotonic()
        self.serve = self._spawn("serve", "serve")
        wait_for_port(self.control_port, process=self.serve, timeout=1800)
        return time.monotonic() - started

    def start_agent(self, hostname: str, timeout: float = 3600) -> float:
        """Until the agent reports the desired state applied and HAProxy answers ``hostname``."""
        started = time.monotonic()
        self.agent = self._spawn("agent", "agent", "--node-id", "bench-edge")
        while time.monotonic() - started < timeout:
            if self.agent.poll() is not None:
                raise RuntimeError(f"the agent stopped:\n{self.agent.tail()}")
            if self.scrape().get(("edge_nodes_in_sync", ()), 0) >= 1:
                try:
                    served_location(self.https_port, hostname)
                    return time.monotonic() - started
                except OSError:
                    pass
            time.sleep(0.5)
        raise TimeoutError(f"the agent did not sync in {timeout:.0f} s")

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return requests.request(method, f"http://127.0.0.1:{self.control_port}{path}",
                                headers={"Authorization": f"Bearer {self.token}"}, timeout=30,
                                **kwargs)

    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = requests.get(f"http://127.0.0.1:{self.control_port}/metrics", timeout=30).text
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def settle(self, seconds: float = 10.0) -> None:
        """The agent's report and the worker's first rounds after the start pass."""
        time.sleep(seconds)

    def at_rest(self, window: float) -> dict[str, Any]:
        assert self.serve is not None and self.agent is not None
        first = self.scrape()
        cost = self.scrape()[("edge_store_requests", ())] - first[("edge_store_requests", ())]
        before = self.scrape()
        cpu = cpu_seconds(self.serve.pid), cpu_seconds(self.agent.pid)
        time.sleep(window)
        cpu_after = cpu_seconds(self.serve.pid), cpu_seconds(self.agent.pid)
        after = self.scrape()
        per_min = 60.0 / window
        requests_made = after[("edge_store_requests", ())] - before[("edge_store_requests", ())]
        by_table: dict[str, float] = {}
        for (name, labels), value in after.items():
            if name == "edge_store_requests_by_table_total":
                table = dict(labels)["table"]
                earlier = before.get((name, labels), 0.0)
                by_table[table] = by_table.get(table, 0.0) + value - earlier
        return {
            "serve_cpu_s_per_min": round((cpu_after[0] - cpu[0]) * per_min, 3),
            "agent_cpu_s_per_min": round((cpu_after[1] - cpu[1]) * per_min, 3),
            "serve_store_requests_per_min": round((requests_made - cost) * per_min, 1),
            "serve_store_requests_by_table_per_min": {
                table: round(value * per_min, 1) for table, value in sorted(by_table.items())
                if value},
            "agent_store_requests_per_min": 0,
            "serve_rss_mb": round(rss_mb(self.serve.pid), 1),
            "agent_rss_mb": round(rss_mb(self.agent.pid), 1),
        }

    def change_latency(self, source: str, target: str, samples: int) -> dict[str, Any]:
        """PATCH a redirect on ``source`` (to ``target``), then clear it: each change until
        HAProxy answers with it. The first change after serve's start (its first API write
        warms imports and caches) is timed apart from the samples."""
        first = self._change(source, target, target)[0]
        self._change(source, None, target)
        timings, answered = [], []
        for n in range(samples):
            time.sleep(0.3)  # the agent back in its long poll, as between real changes
            served, answer = self._change(source, target if n % 2 == 0 else None, target)
            timings.append(served)
            answered.append(answer)
        return {"samples": samples, "p50": round(statistics.median(timings), 1),
                "p99": round(percentile(timings, 0.99), 1), "max": round(max(timings), 1),
                # of which the PATCH itself, until serve answered (the change committed)
                "patch_answered_p50": round(statistics.median(answered), 1),
                "patch_answered_p99": round(percentile(answered, 0.99), 1),
                "first_after_start": round(first, 1)}

    def _change(self, source: str, redirect: str | None, target: str) -> tuple[float, float]:
        """(ms until HAProxy answers with the change, ms until the PATCH was answered)."""
        started = time.perf_counter()
        answer = self.api("PATCH", f"/api/v1/domains/{source}", json={"redirect_to": redirect})
        assert answer.status_code == 200, answer.text
        answered = time.perf_counter()
        while (target in served_location(self.https_port, source)) != bool(redirect):
            if time.perf_counter() - started > 30:
                raise TimeoutError(f"a change to {source} not served after 30 s")
            time.sleep(0.002)
        now = time.perf_counter()
        return (now - started) * 1000, (answered - started) * 1000

    def steady(self, tokens: dict[str, str], window: float) -> dict[str, Any]:
        """N / recheck_seconds rechecks fall due each second over ``window``, answered by knotd.
        Only the domains due in the window are rescheduled (the rest stay ten days away),
        which is what serve sees of a fleet rechecked every ``RECHECK_SECONDS``."""
        rate = len(tokens) / RECHECK_SECONDS
        lead = 5.0
        due = sorted(tokens)[:max(1, math.ceil(rate * (window + lead)))]
        self.knot.set_zone(control_seed.ZONE, "".join(
            f"{name.split('.')[0]} CNAME {EDGE_TARGET}.\n"
            f"_edge-challenge.{name.split('.')[0]} TXT \"{tokens[name]}\"\n" for name in due))
        services = Services.from_settings(self.settings())
        try:
            start = time.time() + lead
            for n, name in enumerate(due):  # faster than they fall due: ahead of the worker
                domain = services.domains.get(name)
                services.domains.transition(domain, ACTIVE, "bench: recheck due", actor="bench",
                                            next_attempt_at=start + n / rate)
            time.sleep(max(0.0, start + lead - time.time()))  # the first ones done: steady
            figures = self.at_rest(window)
            later = start + RECHECK_SECONDS / 2  # rescheduled by serve's recheck
            checked = sum(services.domains.get(name)["next_attempt_at"] > later for name in due)
            still_active = sum(services.domains.get(name)["status"] == ACTIVE for name in due)
        finally:
            services.close()
        return {**figures, "rechecks_due_per_s": round(rate, 2),
                "rechecked": checked, "rescheduled": len(due), "still_active": still_active}

    def stop(self) -> None:
        """serve and the agent by PID, then the node's HAProxy (the agent leaves it serving:
        `edgectl agent stop-node` stops it by its PID file), knotd and dynalite."""
        for process in reversed(self.processes):
            process.stop()
        if self.agent is not None:
            stopper = self._spawn("stop-node", "agent", "stop-node")
            stopper.popen.wait(60)
            stopper.stop()
        self.knot.stop()
