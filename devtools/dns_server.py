"""A real authoritative DNS server for tests: knotd on loopback, in its own directory.

``KnotServer(directory, {"example.test": "www A 127.0.0.2\\n"}, tsig=("edge-key", secret))``
writes a config, zone files, a rundir and a storage directory under ``directory`` (nothing in
/etc/knot or /var/lib/knot, no systemd), starts ``knotd`` in the foreground on a free port of
127.0.0.1 (UDP and TCP) and returns once every zone answers its SOA. Stop it with
:meth:`KnotServer.stop` (by PID) or use it as a context manager.

Zone text is zone-file syntax relative to the zone (``$ORIGIN`` is set). When it has no SOA,
one is added whose serial this class manages (it grows on every :meth:`KnotServer.set_zone`);
when it has no NS, ``@ NS ns1.<zone>.`` and ``ns1 A 127.0.0.1`` are added. A text with its own
SOA keeps it: then the caller raises the serial on every change, as Knot expects.
Every zone allows AXFR from 127.0.0.1; with ``tsig`` (key name, base64 secret), updates and
transfers signed with that hmac-sha256 key are allowed on every zone. Dynamic updates live in
memory only (no journal, no zone-file sync): :meth:`set_zone` replaces the zone's contents.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import dns.exception
import dns.message
import dns.query
import dns.rdatatype
import dns.zone

from kit.procs import ManagedProcess, start_listening

KNOTD = shutil.which("knotd") or "/usr/sbin/knotd"
KNOTC = shutil.which("knotc") or "/usr/sbin/knotc"
_HAS_SOA = re.compile(r"^[^;]*\bSOA\b", re.IGNORECASE | re.MULTILINE)
_HAS_NS = re.compile(r"^[^;]*\bNS\s", re.IGNORECASE | re.MULTILINE)


class KnotServer:
    address = "127.0.0.1"

    def __init__(self, directory: Path, zones: dict[str, str],
                 tsig: tuple[str, str] | None = None, timeout: float = 20.0) -> None:
        self.directory = directory
        self.tsig = tsig
        self.port = 0
        self._timeout = timeout
        self._serials: dict[str, int] = {}
        self._zones_dir = directory / "zones"
        for sub in ("zones", "run", "storage"):
            (directory / sub).mkdir(parents=True, exist_ok=True)
        self._socket_dir: str | None = None
        self.control_socket = self._control_socket_path()
        for zone, text in zones.items():
            self._write_zone(zone.lower().rstrip("."), text)
        config = directory / "knot.conf"
        names = [z.lower().rstrip(".") for z in zones]

        def start(port: int) -> ManagedProcess:
            self.port = port
            config.write_text(self._config(names))
            return ManagedProcess("knotd", [KNOTD, "-c", str(config)], directory / "knotd.log")

        # knotd binds the port for UDP too: started again on another port if it was taken.
        self._process, _ = start_listening(start, self.address, timeout)
        try:
            for zone in self._serials:
                self._wait_for_serial(zone, self._serials[zone])
        except BaseException:
            self.stop()
            raise

    def _control_socket_path(self) -> Path:
        path = self.directory / "run" / "knot.sock"
        if len(str(path)) < 100:
            return path
        self._socket_dir = tempfile.mkdtemp(prefix="knot-")  # a UNIX socket path is short
        return Path(self._socket_dir) / "knot.sock"

    def _config(self, zones: list[str]) -> str:
        acl_ids = ["local_transfer"]
        lines = ["server:", f'    rundir: "{self.directory / "run"}"',
                 f"    listen: {self.address}@{self.port}",
                 "    udp-workers: 1", "    tcp-workers: 1", "    background-workers: 1",
                 "control:", f'    listen: "{self.control_socket}"',
                 "log:", "  - target: stderr", "    any: info",
                 "database:", f'    storage: "{self.directory / "storage"}"']
        acls = ["acl:", "  - id: local_transfer", f"    address: {self.address}",
                "    action: transfer"]
        if self.tsig:
            key_name, secret = self.tsig
            lines += ["key:", f"  - id: {key_name}", "    algorithm: hmac-sha256",
                      f"    secret: {secret}"]
            acls += ["  - id: tsig_update", f"    address: {self.address}",
                     f"    key: {key_name}", "    action: [transfer, update]"]
            acl_ids.append("tsig_update")
        lines += acls
        lines += ["template:", "  - id: default", f'    storage: "{self._zones_dir}"',
                  '    file: "%s.zone"', "    zonefile-sync: -1", "    zonefile-load: whole",
                  "    journal-content: none", "    semantic-checks: off",
                  f"    acl: [{', '.join(acl_ids)}]", "zone:"]
        lines += [f"  - domain: {zone}" for zone in zones]
        return "\n".join(lines) + "\n"

    def _write_zone(self, zone: str, text: str, served_serial: int = 0) -> int:
        """Write the zone file (adding SOA/NS when absent) and return the serial it holds."""
        head = [f"$ORIGIN {zone}.", "$TTL 300"]
        if not _HAS_SOA.search(text):
            serial = max(self._serials.get(zone, 0), served_serial) + 1
            head.append(f"@ SOA ns1.{zone}. hostmaster.{zone}. {serial} 3600 900 604800 300")
        if not _HAS_NS.search(text):
            head += [f"@ NS ns1.{zone}.", f"ns1 A {self.address}"]
        full = "\n".join(head) + "\n" + text + ("\n" if not text.endswith("\n") else "")
        parsed = dns.zone.from_text(full, origin=zone + ".", relativize=False,
                                    check_origin=False)
        soa = parsed.find_rdataset(zone + ".", dns.rdatatype.SOA)[0]
        (self._zones_dir / f"{zone}.zone").write_text(full)
        self._serials[zone] = int(soa.serial)  # type: ignore[attr-defined]
        return self._serials[zone]

    def set_zone(self, name: str, text: str) -> None:
        """Replace a zone's contents with ``text`` and wait until its new serial is served."""
        zone = name.lower().rstrip(".")
        serial = self._write_zone(zone, text, served_serial=self.serial(zone))
        subprocess.run([KNOTC, "-s", str(self.control_socket), "-b", "-t", "10",
                        "zone-reload", zone], check=True, capture_output=True, timeout=30)
        self._wait_for_serial(zone, serial)

    def serial(self, zone: str) -> int:
        """The SOA serial the server answers for ``zone`` now."""
        answer = self.query(zone, "SOA")
        if not answer:
            raise LookupError(f"knotd does not answer SOA for {zone}")
        return int(answer[0].split()[2])

    def query(self, name: str, rdtype: str) -> list[str]:
        """The values (presentation form, sorted) the server answers for ``name`` ``rdtype``."""
        qname = name.rstrip(".") + "."
        query = dns.message.make_query(qname, rdtype)
        response, _ = dns.query.udp_with_fallback(query, self.address, port=self.port,
                                                  timeout=2.0)
        wanted = dns.rdatatype.from_text(rdtype)
        return sorted(rdata.to_text() for rrset in response.answer
                      if rrset.rdtype == wanted and rrset.name == query.question[0].name
                      for rdata in rrset)

    def _wait_for_serial(self, zone: str, serial: int) -> None:
        deadline = time.monotonic() + self._timeout
        last: object = None
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"knotd exited: {self._process.tail()}")
            try:
                if self.serial(zone) == serial:
                    return
            except (dns.exception.DNSException, OSError, LookupError) as exc:
                last = exc
            time.sleep(0.05)
        raise TimeoutError(f"knotd did not serve {zone} serial {serial} ({last}): "
                           f"{self._process.tail()}")

    def stop(self) -> None:
        self._process.stop()
        if self._socket_dir:
            shutil.rmtree(self._socket_dir, ignore_errors=True)

    def __enter__(self) -> "KnotServer":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


UNBOUND = shutil.which("unbound") or "/usr/sbin/unbound"


class UnboundResolver:
    """A real recursive resolver (unbound) on loopback that asks ``knot`` for ``zones``.

    An authoritative server answers a CNAME into another zone with the CNAME alone; the CA's
    resolver follows it (that is what lets a publisher delegate ``_acme-challenge`` to our zone).
    Pebble's own DNS client does not follow CNAMEs, so Pebble asks this resolver, which follows
    them into knotd's zones the way Let's Encrypt's unbound does. No cache (every answer fresh),
    no DNSSEC, no root: only the stub zones resolve. Stop it with :meth:`stop` (by PID)."""

    address = "127.0.0.1"

    def __init__(self, directory: Path, knot: KnotServer, zones: list[str],
                 timeout: float = 20.0) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        config = directory / "unbound.conf"

        def start(port: int) -> ManagedProcess:
            self.port = port
            config.write_text(self._config(directory, port, knot, zones))
            return ManagedProcess("unbound", [UNBOUND, "-d", "-c", str(config)],
                                  directory / "unbound.log")

        self._process, _ = start_listening(start, self.address, timeout)

    def _config(self, directory: Path, port: int, knot: KnotServer, zones: list[str]) -> str:
        lines = ["server:", f"    interface: {self.address}", f"    port: {port}",
                 '    username: ""', '    chroot: ""', f'    directory: "{directory}"',
                 f'    pidfile: "{directory / "unbound.pid"}"', '    logfile: ""',
                 "    use-syslog: no", "    do-daemonize: no", "    do-ip6: no",
                 "    num-threads: 1", "    access-control: 127.0.0.0/8 allow",
                 "    do-not-query-localhost: no", '    module-config: "iterator"',
                 "    qname-minimisation: no", "    cache-max-ttl: 0",
                 "    cache-max-negative-ttl: 0", "    infra-host-ttl: 1",
                 "    outgoing-range: 64", "    so-reuseport: no",
                 '    root-hints: ""']
        lines += [f'    local-zone: "{zone.split(".")[-1]}." nodefault'
                  for zone in sorted({z.split(".")[-1] for z in zones})]
        for zone in zones:
            lines += ["stub-zone:", f'    name: "{zone}."',
                      f"    stub-addr: {knot.address}@{knot.port}"]
        return "\n".join(lines) + "\n"

    @property
    def server(self) -> str:
        """``ip:port``, as Pebble's ``-dnsserver`` takes it."""
        return f"{self.address}:{self.port}"

    def stop(self) -> None:
        self._process.stop()
