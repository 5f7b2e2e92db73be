"""One contract every registrar provider passes, each against a real server on loopback.

RFC 2136 against knotd (TSIG), Route53 against moto_server, Namecheap against a small HTTP
server below that speaks Namecheap's documented XML and, like Namecheap, replaces the whole
host list on setHosts and drops MX hosts unless EmailType=MX comes with them.
"""
from __future__ import annotations

import http.server
import threading
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, ClassVar, Iterator
from urllib.parse import parse_qsl, urlsplit

import boto3
import botocore.config
import pytest

from dnsops.registrars import (AuthenticationFailed, InvalidRecord, Record, RecordPlan,
                                RegistrarError, RegistrarProvider, RegistrarUnavailable,
                                ZoneNotFound, ensure_records, get_provider)
from kit.procs import free_port
from devtools.dns_server import KnotServer

ZONE = "example.test"
TSIG = ("edge-key", "c2VjcmV0LWtleS1mb3ItdGhlLWVkZ2UtdGVzdHMtMTIzNA==")
WRONG_TSIG = "d3Jvbmcta2V5LWZvci10aGUtZWRnZS10ZXN0cy0xMjM0NQ=="


class RegistrarContract:
    """Subclasses provide ``provider`` and ``broken_provider`` (bad credentials) fixtures."""

    BROKEN_ERROR: ClassVar[type[RegistrarError]] = AuthenticationFailed

    @pytest.fixture
    def name(self) -> str:
        """A fresh name per test: the servers outlive one test."""
        return f"_t{uuid.uuid4().hex[:10]}.{ZONE}"

    def test_created_records_are_listed(self, provider: RegistrarProvider, name: str) -> None:
        txt, cname = Record(name, "TXT", "token-1", 300), Record(f"www{name}", "CNAME",
                                                                 "edge.platform.test", 600)
        provider.create_record(ZONE, txt)
        provider.create_record(ZONE, cname)
        listed = provider.list_records(ZONE)
        assert txt in listed and cname in listed

    def test_second_txt_value_keeps_the_first(self, provider: RegistrarProvider,
                                              name: str) -> None:
        provider.create_record(ZONE, Record(name, "TXT", "first"))
        provider.create_record(ZONE, Record(name, "TXT", "second"))
        assert _values(provider, name, "TXT") == ["first", "second"]

    def test_delete_one_value_keeps_the_other(self, provider: RegistrarProvider,
                                              name: str) -> None:
        first, second = Record(name, "TXT", "first"), Record(name, "TXT", "second")
        provider.create_record(ZONE, first)
        provider.create_record(ZONE, second)
        provider.delete_record(ZONE, first)
        assert _values(provider, name, "TXT") == ["second"]
        provider.delete_record(ZONE, second)
        assert _values(provider, name, "TXT") == []
        provider.delete_record(ZONE, second)  # absent: a no-op

    def test_create_is_idempotent(self, provider: RegistrarProvider, name: str) -> None:
        provider.create_record(ZONE, Record(name, "TXT", "once"))
        provider.create_record(ZONE, Record(name, "TXT", "once"))
        assert _values(provider, name, "TXT") == ["once"]

    def test_ensure_records_creates_only_what_is_missing(self, provider: RegistrarProvider,
                                                         name: str) -> None:
        provider.create_record(ZONE, Record(name, "TXT", "publisher's own"))
        wanted = [Record(name, "TXT", "ours"), Record(f"a{name}", "A", "192.0.2.7")]
        assert ensure_records(provider, ZONE, wanted).create == wanted
        assert ensure_records(provider, ZONE, wanted) == RecordPlan([], [])
        assert _values(provider, name, "TXT") == ["ours", "publisher's own"]
        assert _values(provider, f"a{name}", "A") == ["192.0.2.7"]

    def test_ensure_records_never_adds_beside_what_a_name_answers(
            self, provider: RegistrarProvider, name: str) -> None:
        live = Record(f"a{name}", "A", "192.0.2.50")
        provider.create_record(ZONE, live)
        provider.create_record(ZONE, Record(name, "TXT", "theirs"))
        wanted = [Record(f"a{name}", "A", "192.0.2.7"), Record(name, "CNAME", "edge.test"),
                  Record(f"_edge-challenge.a{name}", "TXT", "ours")]
        plan = ensure_records(provider, ZONE, wanted)
        assert plan.create == wanted[2:]
        assert [(c.wanted, c.existing) for c in plan.conflicts] == [
            ((wanted[0],), (live,)), ((wanted[1],), (Record(name, "TXT", "theirs"),))]
        assert _values(provider, f"a{name}", "A") == ["192.0.2.50"]
        assert _values(provider, name, "CNAME") == []

    def test_values_round_trip(self, provider: RegistrarProvider, name: str) -> None:
        records = [Record(name, "TXT", 'v=spf1 include:"x.test" ; -all \\ done'),
                   Record(name, "TXT", "long-" + "y" * 300),
                   Record(name, "MX", "10 Mail.Example.Test."),
                   Record(f"*.{name}", "A", "192.0.2.8")]
        for record in records:
            provider.create_record(ZONE, record)
        listed = provider.list_records(ZONE)
        assert all(record in listed for record in records)

    def test_unknown_zone_raises(self, provider: RegistrarProvider) -> None:
        with pytest.raises(ZoneNotFound, match="nope.test"):
            provider.list_records("nope.test")
        with pytest.raises(ZoneNotFound, match="nope.test"):
            provider.create_record("nope.test", Record("_x.nope.test", "TXT", "v"))

    def test_record_outside_the_zone_is_refused(self, provider: RegistrarProvider) -> None:
        with pytest.raises(InvalidRecord, match="not in zone"):
            provider.create_record(ZONE, Record("_x.elsewhere.test", "TXT", "v"))

    def test_bad_credentials_raise(self, provider: RegistrarProvider,
                                   broken_provider: RegistrarProvider, name: str) -> None:
        with pytest.raises(self.BROKEN_ERROR) as raised:
            broken_provider.create_record(ZONE, Record(name, "TXT", "intruder"))
        assert str(raised.value) and raised.value.provider == provider.name
        with pytest.raises(self.BROKEN_ERROR):
            broken_provider.list_records(ZONE)
        assert _values(provider, name, "TXT") == []


def _values(provider: RegistrarProvider, name: str, rdtype: str) -> list[str]:
    return sorted(r.value for r in provider.list_records(ZONE)
                  if r.name == name and r.type == rdtype)


# --- RFC 2136 against knotd -----------------------------------------------------------------

@pytest.fixture(scope="module")
def knot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KnotServer]:
    server = KnotServer(tmp_path_factory.mktemp("knot"), {ZONE: "www A 192.0.2.1\n"}, tsig=TSIG)
    try:
        yield server
    finally:
        server.stop()


class TestRfc2136(RegistrarContract):
    @pytest.fixture
    def provider(self, knot: KnotServer) -> RegistrarProvider:
        return get_provider("rfc2136", server=knot.address, port=knot.port, key_name=TSIG[0],
                            key_secret=TSIG[1], timeout=5)

    @pytest.fixture
    def broken_provider(self, knot: KnotServer) -> RegistrarProvider:
        return get_provider("rfc2136", server=knot.address, port=knot.port, key_name=TSIG[0],
                            key_secret=WRONG_TSIG, timeout=5)

    def test_the_server_answers_what_was_created(self, provider: RegistrarProvider,
                                                 knot: KnotServer, name: str) -> None:
        provider.create_record(ZONE, Record(name, "TXT", "a b"))
        provider.create_record(ZONE, Record(name, "TXT", "c"))
        assert knot.query(name, "TXT") == ['"a b"', '"c"']

    def test_set_zone_replaces_contents_with_a_higher_serial(self, tmp_path: Path) -> None:
        with KnotServer(tmp_path, {"other.test": "www A 192.0.2.1\n"}) as server:
            before = server.serial("other.test")
            server.set_zone("other.test", "www A 192.0.2.2\n")
            assert server.query("www.other.test", "A") == ["192.0.2.2"]
            assert server.serial("other.test") > before

    def test_unreachable_server_is_unavailable(self) -> None:
        provider = get_provider("rfc2136", server="127.0.0.1", port=free_port(), timeout=2)
        with pytest.raises(RegistrarUnavailable):
            provider.list_records(ZONE)


# --- Route53 against moto_server ------------------------------------------------------------

@pytest.fixture(scope="module")
def route53_client(moto_server: str) -> Any:
    client = boto3.client("route53", endpoint_url=moto_server, region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")
    client.create_hosted_zone(Name=ZONE, CallerReference=uuid.uuid4().hex)
    return client


class TestRoute53(RegistrarContract):
    BROKEN_ERROR = RegistrarUnavailable  # moto does not check credentials: nobody listens

    @pytest.fixture
    def provider(self, route53_client: Any) -> RegistrarProvider:
        return get_provider("route53", client=route53_client)

    @pytest.fixture
    def broken_provider(self) -> RegistrarProvider:
        client = boto3.client("route53", endpoint_url=f"http://127.0.0.1:{free_port()}",
                              region_name="us-east-1", aws_access_key_id="test",
                              aws_secret_access_key="test",
                              config=botocore.config.Config(retries={"total_max_attempts": 1}))
        return get_provider("route53", client=client)

    def test_values_share_one_quoted_record_set(self, provider: RegistrarProvider,
                                                route53_client: Any, name: str) -> None:
        provider.create_record(ZONE, Record(name, "TXT", "first"))
        provider.create_record(ZONE, Record(name, "TXT", 'say "hi"'))
        zone_id = route53_client.list_hosted_zones_by_name(DNSName=ZONE)["HostedZones"][0]["Id"]
        sets = [s for s in route53_client.list_resource_record_sets(
            HostedZoneId=zone_id)["ResourceRecordSets"] if s["Name"] == name + "."]
        assert len(sets) == 1
        assert sorted(v["Value"] for v in sets[0]["ResourceRecords"]) == ['"first"',
                                                                          '"say \\"hi\\""']


# --- Namecheap against a fake XML API -------------------------------------------------------

NAMECHEAP_AUTH = {"api_user": "edge", "api_key": "right-key", "client_ip": "127.0.0.1"}


def _host(name: str, rdtype: str, address: str) -> dict[str, str]:
    return {"Name": name, "Type": rdtype, "Address": address, "MXPref": "10", "TTL": "1800"}


class FakeNamecheap(http.server.ThreadingHTTPServer):
    """Namecheap's getHosts/setHosts as documented, keeping hosts per domain in memory."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _NamecheapHandler)
        self.lock = threading.Lock()
        self.domains: dict[str, dict[str, Any]] = {ZONE: {"email_type": "MX", "hosts": [
            _host("@", "A", "192.0.2.1"), _host("@", "MX", "mx1.mail.test."),
            _host("go", "URL301", "https://blog.example.test/")]}}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/xml.response"

    def answer(self, params: dict[str, str]) -> ET.Element:
        root = ET.Element("ApiResponse", Status="ERROR",
                          xmlns="http://api.namecheap.com/xml.response")
        errors, command = ET.SubElement(root, "Errors"), params.get("Command", "")
        ET.SubElement(root, "RequestedCommand").text = command
        domain_name = f"{params.get('SLD')}.{params.get('TLD')}".lower()
        handlers = {"namecheap.domains.dns.getHosts": self.get_hosts,
                    "namecheap.domains.dns.setHosts": self.set_hosts}
        if (params.get("ApiUser"), params.get("ApiKey"), params.get("UserName")) != (
                "edge", "right-key", "edge") or not params.get("ClientIp"):
            error = ("1011102", "API Key is invalid or API access has not been enabled")
        elif domain_name not in self.domains:
            error = ("2019166", "Domain not found")
        elif command in handlers:
            root.set("Status", "OK")
            response = ET.SubElement(root, "CommandResponse", Type=command)
            with self.lock:
                handlers[command](self.domains[domain_name], params, response)
            return root
        else:
            error = ("2030166", "Unknown command")
        ET.SubElement(errors, "Error", Number=error[0]).text = error[1]
        return root

    def get_hosts(self, domain: dict[str, Any], params: dict[str, str],
                 response: ET.Element) -> None:
        result = ET.SubElement(response, "DomainDNSGetHostsResult", IsUsingOurDNS="true",
                               Domain=f"{params['SLD']}.{params['TLD']}",
                               EmailType=domain["email_type"])
        for i, host in enumerate(domain["hosts"], start=1):
            ET.SubElement(result, "host", HostId=str(i), IsActive="true", **host)

    def set_hosts(self, domain: dict[str, Any], params: dict[str, str],
                 response: ET.Element) -> None:
        hosts, n = [], 1
        while f"HostName{n}" in params:
            hosts.append({"Name": params[f"HostName{n}"], "Type": params[f"RecordType{n}"]} |
                         {k: params.get(f"{k}{n}", "") for k in ("Address", "MXPref", "TTL")})
            n += 1
        domain["email_type"] = params.get("EmailType", "")
        if domain["email_type"].upper() != "MX":  # Namecheap drops MX hosts then
            hosts = [h for h in hosts if h["Type"] != "MX"]
        domain["hosts"] = hosts
        ET.SubElement(response, "DomainDNSSetHostsResult", IsSuccess="true",
                      Domain=f"{params['SLD']}.{params['TLD']}")


class _NamecheapHandler(http.server.BaseHTTPRequestHandler):
    server: FakeNamecheap

    def do_GET(self) -> None:
        self._reply(dict(parse_qsl(urlsplit(self.path).query)))

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        self._reply(dict(parse_qsl(urlsplit(self.path).query)) | dict(parse_qsl(body)))

    def _reply(self, params: dict[str, str]) -> None:
        payload = ET.tostring(self.server.answer(params), encoding="utf-8", xml_declaration=True)
        self.send_response(200)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def namecheap() -> Iterator[FakeNamecheap]:
    server = FakeNamecheap()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


class TestNamecheap(RegistrarContract):
    @pytest.fixture
    def provider(self, namecheap: FakeNamecheap) -> RegistrarProvider:
        return get_provider("namecheap", base_url=namecheap.url, **NAMECHEAP_AUTH)

    @pytest.fixture
    def broken_provider(self, namecheap: FakeNamecheap) -> RegistrarProvider:
        return get_provider("namecheap", base_url=namecheap.url,
                            **(NAMECHEAP_AUTH | {"api_key": "wrong-key"}))

    def test_publishers_other_hosts_survive(self, provider: RegistrarProvider,
                                            namecheap: FakeNamecheap, name: str) -> None:
        provider.create_record(ZONE, Record(name, "TXT", "ours"))
        provider.delete_record(ZONE, Record(name, "TXT", "ours"))
        hosts = namecheap.domains[ZONE]["hosts"]
        assert {"Name": "@", "Type": "MX", "Address": "mx1.mail.test.", "MXPref": "10",
                "TTL": "1800"} in hosts
        assert any(h["Type"] == "URL301" for h in hosts)
        assert namecheap.domains[ZONE]["email_type"] == "MX"
        assert Record(ZONE, "MX", "10 mx1.mail.test", 1800) in provider.list_records(ZONE)
