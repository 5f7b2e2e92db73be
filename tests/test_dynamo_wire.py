"""The store's item client (store/dynamo_wire.py): signed as botocore signs, retried as
botocore's standard mode retries, failing as botocore fails; against dynalite, through the
nemesis for the faults."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError, SSLError

from store import ABSENT, ConflictError, StoreError, TableSpec, Throttled, dynamo_wire
from store.dynamo import USER_AGENT, DynamoBackend, DynamoTable, client_config
from store.dynamo_wire import QUOTA, RETRY_COST, SigV4, WireClient
from devtools.dynalite import dynalite_command
from kit.procs import ManagedProcess, free_port, start_listening, wait_for_port
from kit.settings import Settings
from kit.x509 import LocalCA
from tests.dynamo_nemesis import Nemesis

SPEC = TableSpec("wire_things", key="id", indexes=("owner",))


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:8000",
                                      "https://dynamodb.eu-west-1.amazonaws.com"])
@pytest.mark.parametrize("token", [None, "a-session-token"])
def test_it_signs_a_request_as_botocore_signs_it(endpoint: str, token: str | None) -> None:
    body = json.dumps({"TableName": "edge_domains", "Key": {"pk": {"S": "a  b"}}}).encode()
    theirs = AWSRequest("POST", endpoint + "/", data=body, headers={
        "Content-Type": "application/x-amz-json-1.0",
        "X-Amz-Target": "DynamoDB_20120810.GetItem"})
    SigV4Auth(Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG", token), "dynamodb",
              "eu-west-1").add_auth(theirs)
    headers = {"content-type": "application/x-amz-json-1.0",
               "host": endpoint.split("://", 1)[1],
               "x-amz-date": theirs.headers["X-Amz-Date"],
               "x-amz-target": "DynamoDB_20120810.GetItem",
               **({"x-amz-security-token": token} if token else {})}
    ours = SigV4("eu-west-1").authorization(headers, body, "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG")
    assert ours == theirs.headers["Authorization"]


@pytest.fixture
def backend(dynamo_nemesis: Nemesis, nemesis: str, settings: Settings,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[DynamoBackend]:
    """The product's backend through the nemesis, in fair weather, retrying at once."""
    monkeypatch.setattr(dynamo_wire, "backoff", lambda attempt: 0.0)
    dynamo_nemesis.fail_rate = dynamo_nemesis.slow_rate = 0.0
    opened = DynamoBackend.from_settings(dataclasses.replace(
        settings, storage_backend="dynamodb", dynamodb_endpoint_url=nemesis,
        dynamodb_table_prefix=f"w{free_port()}_"))
    yield opened
    opened.close()


def test_items_written_and_read_are_counted_by_table_and_operation(
        backend: DynamoBackend, dynamo_nemesis: Nemesis) -> None:
    table = backend.table(SPEC)  # a new table: described (not found), created, described,
    # through the item client (the backend counts no request of botocore's)
    assert backend.operations[("wire_things", "CreateTable")] == 1
    assert backend.operations[("wire_things", "DescribeTable")] >= 2
    before = backend.requests
    stored = table.put({"id": "a", "owner": "o"})
    assert table.get("a") == stored
    assert backend.requests - before == 2
    assert backend.operations[("wire_things", "UpdateItem")] == 1
    assert backend.operations[("wire_things", "GetItem")] == 1
    # The product's short User-Agent, on every request (botocore's own begins "ua/").
    assert all(agent.startswith(USER_AGENT) and "ua/" not in agent
               for agent in dynamo_nemesis.agents), dynamo_nemesis.agents


@pytest.mark.parametrize("failure, raised", [("throughput", Throttled),
                                             ("internal", StoreError)])
def test_a_failing_request_is_tried_five_times_then_raised(
        backend: DynamoBackend, dynamo_nemesis: Nemesis, failure: str,
        raised: type[Exception]) -> None:
    table = backend.table(SPEC)
    dynamo_nemesis.failures, dynamo_nemesis.fail_rate = (failure,), 1.0
    with pytest.raises(raised) as caught:
        table.get("a")
    assert dynamo_nemesis.injected[failure] == 5
    assert "GetItem" in str(caught.value) or "get_item" in str(caught.value)
    assert backend.throttled.get("wire_things", 0) == (5 if failure == "throughput" else 0)
    dynamo_nemesis.fail_rate = 0.0
    assert table.get("a") is None, "the next request goes through"


def test_an_answer_whose_checksum_does_not_match_is_asked_again(
        backend: DynamoBackend, dynamo_nemesis: Nemesis) -> None:
    table = backend.table(SPEC)
    stored = table.put({"id": "a", "owner": "o"})
    dynamo_nemesis.failures, dynamo_nemesis.only = ("corrupt",), ("GetItem",)
    dynamo_nemesis.fail_rate = 1.0
    with pytest.raises(StoreError, match="CRC32"):
        table.get("a")
    assert dynamo_nemesis.injected["corrupt"] == 5
    dynamo_nemesis.fail_rate, dynamo_nemesis.max_streak = 0.1, 4  # never five in a row
    while dynamo_nemesis.injected["corrupt"] < 8:
        assert table.get("a") == stored


@pytest.mark.parametrize("lost_as", ["internal", "dropped"])
def test_a_write_whose_answer_was_lost_does_not_conflict_with_itself(
        backend: DynamoBackend, dynamo_nemesis: Nemesis, lost_as: str) -> None:
    """DynamoDB may carry out a write whose answer never comes back (a 500, a connection
    broken after the request went): the retry then fails the condition its first attempt met.
    A create answered "taken" (a random slug made a second, orphan link), an update 409."""
    table = backend.table(SPEC)
    dynamo_nemesis.lose_as = lost_as
    dynamo_nemesis.lose_next = 1
    made = table.put({"id": "a", "owner": "o"}, expected_version=ABSENT)
    assert table.get("a") == made
    dynamo_nemesis.lose_next = 1
    changed = table.put({**made, "owner": "p", "expires_at": 4102444800.0},
                        expected_version=made["version"])  # a number DynamoDB writes "...800"
    assert changed["version"] == made["version"] + 1 and table.get("a") == changed
    dynamo_nemesis.lose_next = 1
    assert table.delete("a", expected_version=changed["version"])
    assert table.get("a") is None
    assert dynamo_nemesis.injected["lost"] == 3
    # What another writer did stays a conflict, lost answer or not.
    other = table.put({"id": "b", "owner": "o"}, expected_version=ABSENT)
    table.put({**other, "owner": "q"}, expected_version=other["version"])
    for stale, expected in (({**other, "owner": "r"}, other["version"]),
                            ({"id": "b", "owner": "q"}, ABSENT)):
        dynamo_nemesis.lose_next = 1
        with pytest.raises(ConflictError):
            table.put(stale, expected_version=expected)
        dynamo_nemesis.lose_next = 1
        with pytest.raises(ConflictError):
            table.delete("b", expected_version=other["version"])
    assert (table.get("b") or {})["owner"] == "q"


def test_another_writers_identical_write_is_a_conflict_after_a_failed_attempt(
        backend: DynamoBackend, dynamo_nemesis: Nemesis) -> None:
    """Two replicas that read one version and write the same data (one more slot of a
    budget): the one whose first attempt failed with a 500 meets the other's write on its
    retry. It is a conflict (it counts again), not its own write: else both took the slot."""
    table = backend.table(SPEC)
    made = table.put({"id": "c", "owner": "o", "n": 1}, expected_version=ABSENT)
    theirs = table.put({**made, "n": 2}, expected_version=made["version"])
    dynamo_nemesis.failures, dynamo_nemesis.only = ("internal",), ("UpdateItem",)
    dynamo_nemesis.fail_rate, dynamo_nemesis.max_streak = 1 - 1e-9, 1  # the first attempt
    # fails, the retry goes through (the cap holds under a rate below 1)
    with pytest.raises(ConflictError):
        table.put({**made, "n": 2}, expected_version=made["version"])
    assert dynamo_nemesis.injected["internal"] == 1
    assert table.get("c") == theirs


def test_the_usual_weather_fails_no_request_more_times_in_a_row_than_its_cap(
        backend: DynamoBackend, dynamo_nemesis: Nemesis) -> None:
    """The nemesis' faults under ``fail_rate`` 1 fail the same request at most ``max_streak``
    times in a row (the tests' usual weather must not make a request give up by chance)."""
    table = backend.table(SPEC)
    stored = table.put({"id": "a", "owner": "o"})
    dynamo_nemesis.failures, dynamo_nemesis.only = ("internal",), ("GetItem",)
    dynamo_nemesis.fail_rate, dynamo_nemesis.max_streak = 0.9, 4
    for _ in range(20):  # uncapped, five in a row at 0.9 would end 59% of these reads
        assert table.get("a") == stored
    assert dynamo_nemesis.injected["internal"] >= 40  # within the client's retry quota


def test_retries_stop_when_the_quota_is_spent_and_come_back_with_successes(
        backend: DynamoBackend, dynamo_nemesis: Nemesis) -> None:
    """botocore's retry quota: most requests failing stops the retries (an outage fails fast
    rather than piling up attempts); each request that goes through gives some back."""
    table = backend.table(SPEC)
    dynamo_nemesis.failures, dynamo_nemesis.fail_rate = ("internal",), 1.0
    calls = QUOTA // (4 * RETRY_COST)  # each failing call spends four retries
    for _ in range(calls):
        with pytest.raises(StoreError):
            table.get("a")
    assert dynamo_nemesis.injected["internal"] == 5 * calls
    with pytest.raises(StoreError):
        table.get("a")
    assert dynamo_nemesis.injected["internal"] == 5 * calls + 1, "no retry left"
    dynamo_nemesis.fail_rate = 0.0
    for _ in range(RETRY_COST):
        table.get("a")
    dynamo_nemesis.fail_rate = 1.0
    with pytest.raises(StoreError):
        table.get("a")
    assert dynamo_nemesis.injected["internal"] == 5 * calls + 3, "one retry again"


def test_an_endpoint_nobody_answers_is_a_store_error(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dynamo_wire, "backoff", lambda attempt: 0.0)
    client = boto3.client("dynamodb", endpoint_url=f"http://127.0.0.1:{free_port()}",
                          region_name="us-east-1", config=client_config())
    backend = DynamoBackend(client)
    try:
        with pytest.raises(StoreError, match="get_item on edge_x: Could not connect"):
            DynamoTable(backend._client, "edge_x", SPEC).get("a")  # not opened: not asked
    finally:
        backend.close()


def wire_client(endpoint: str, **options: Any) -> WireClient:
    return WireClient(endpoint, "us-east-1", Credentials("x", "y"), user_agent=USER_AGENT,
                      **options)


def own_dynalite(port: int, log: Path, *options: str) -> ManagedProcess:
    """A dynalite of the test's own on ``port`` (started again there, or over TLS)."""
    return ManagedProcess("dynalite", [*dynalite_command(port, None), *options], log)


def test_an_idle_connection_the_server_closed_is_not_reused(tmp_path: Path) -> None:
    """dynalite restarted on its port between two requests: the second finds its kept
    connection closed and opens another, at its first attempt (no retry spent)."""
    port = free_port()
    client = wire_client(f"http://127.0.0.1:{port}")
    try:
        for n in range(2):
            server = own_dynalite(port, tmp_path / f"dynalite{n}.log")
            try:
                wait_for_port(port, process=server)
                with pytest.raises(ClientError, match="ResourceNotFoundException"):
                    client.describe_table(TableName="never_created")
            finally:
                server.stop()
        assert client._quota == QUOTA, "no request was retried"
    finally:
        client.close()


def test_a_connection_that_timed_out_is_closed_and_the_next_request_gets_its_own_answer(
        dynamo_nemesis: Nemesis, nemesis: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reused, it would hand the next request the late answer of the one that timed out."""
    monkeypatch.setattr(dynamo_wire, "backoff", lambda attempt: 0.0)
    dynamo_nemesis.fail_rate = 0.0
    client = wire_client(nemesis, read_timeout=0.3, max_attempts=1)
    try:
        dynamo_nemesis.slow_rate, dynamo_nemesis.slow = 1.0, 0.6
        with pytest.raises(ReadTimeoutError):
            client.describe_table(TableName="first_never_created")
        dynamo_nemesis.slow_rate = 0.0  # the late answer is still to come
        with pytest.raises(ClientError, match="second_never_created"):
            client.describe_table(TableName="second_never_created")
    finally:
        client.close()


def refused_over_tls(tmp_path: Path) -> int:
    """A request to dynalite over TLS with its own self-signed certificate, refused (never
    sent); dynalite's port."""
    port = free_port()
    server = own_dynalite(port, tmp_path / "dynalite.log", "--ssl")
    client = wire_client(f"https://127.0.0.1:{port}", max_attempts=1)
    try:
        wait_for_port(port, process=server)
        with pytest.raises(SSLError, match="CERTIFICATE_VERIFY_FAILED"):
            client.describe_table(TableName="never_created")
    finally:
        client.close()
        server.stop()
    return port


def test_tls_is_verified_against_the_system_store(tmp_path: Path) -> None:
    refused_over_tls(tmp_path)


@pytest.fixture
def proxy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
          request: pytest.FixtureRequest) -> Iterator[Path]:
    """tinyproxy on loopback, named by the environment as an operator's proxy is (both
    schemes, nothing spared; with ``user:password@`` when the test's parameter asks for a
    proxy that wants them): its log, where each request it carried shows."""
    log = tmp_path / "tinyproxy.log"
    login = getattr(request, "param", "")

    def start(port: int) -> ManagedProcess:
        config = tmp_path / "tinyproxy.conf"
        config.write_text(f'Port {port}\nListen 127.0.0.1\nTimeout 30\nLogFile "{log}"\n'
                          "LogLevel Info\nMaxClients 20\nAllow 127.0.0.1\n"
                          + (f"BasicAuth {login.replace(':', ' ')}\n" if login else ""))
        return ManagedProcess("tinyproxy", ["tinyproxy", "-d", "-c", str(config)],
                              tmp_path / "tinyproxy.out")
    process, port = start_listening(start)
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(name, f"http://{login + '@' if login else ''}127.0.0.1:{port}")
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    try:
        yield log
    finally:
        process.stop()


@pytest.mark.parametrize("proxy", ["", "operator:s3cret"], indirect=True)
def test_the_proxy_the_environment_names_carries_the_requests_unless_spared(
        proxy: Path, dynalite: str, monkeypatch: pytest.MonkeyPatch) -> None:
    client = wire_client(dynalite)
    try:
        with pytest.raises(ClientError, match="ResourceNotFoundException"):
            client.describe_table(TableName="through_the_proxy")
    finally:
        client.close()
    assert f"POST {dynalite}/ HTTP/1.1" in proxy.read_text()
    carried = proxy.read_text().count("POST ")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    client = wire_client(dynalite)
    try:
        with pytest.raises(ClientError, match="ResourceNotFoundException"):
            client.describe_table(TableName="spared")
    finally:
        client.close()
    assert proxy.read_text().count("POST ") == carried, "NO_PROXY spares the host"


@pytest.mark.parametrize("proxy", ["", "operator:s3cret"], indirect=True)
def test_tls_goes_through_the_proxy_in_a_tunnel(proxy: Path, tmp_path: Path) -> None:
    """The handshake reaches dynalite's own certificate through ``CONNECT`` (and refuses it)."""
    port = refused_over_tls(tmp_path)
    assert f"CONNECT 127.0.0.1:{port} HTTP/1.1" in proxy.read_text()


@pytest.mark.parametrize("proxy", ["operator:s3cret"], indirect=True)
def test_a_tunnel_the_proxy_refuses_is_a_connection_error_that_says_why(
        proxy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = os.environ["https_proxy"].replace("s3cret", "wrong")
    monkeypatch.setenv("https_proxy", wrong)
    monkeypatch.setenv("HTTPS_PROXY", wrong)
    client = wire_client(f"https://127.0.0.1:{free_port()}", max_attempts=1)
    try:
        with pytest.raises(EndpointConnectionError) as caught:
            client.describe_table(TableName="never_created")
        assert "refused to reach" in str(caught.value.kwargs["error"])  # tinyproxy: 401
    finally:
        client.close()


def tls_in_front(tmp_path: Path,
                 backends: dict[str, str]) -> tuple[ManagedProcess, dict[str, int]]:
    """HAProxy terminating TLS in front of each backend (name -> its host:port), each with a
    certificate for 127.0.0.1 from a CA made here (its file: ``tmp_path / "ca.pem"``):
    (HAProxy, name -> its TLS port)."""
    ca = LocalCA()
    (tmp_path / "ca.pem").write_text(ca.pem)
    ports = {name: free_port() for name in backends}
    config = tmp_path / "haproxy.cfg"
    config.write_text("defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n"
                      "    timeout server 30s\n")
    for name, backend in backends.items():
        (tmp_path / f"{name}.pem").write_text("".join(ca.issue(["127.0.0.1"])))
        with config.open("a") as out:
            out.write(f"listen {name}\n    bind 127.0.0.1:{ports[name]} ssl crt "
                      f"{tmp_path / f'{name}.pem'}\n    server {name} {backend}\n")
    haproxy = ManagedProcess("haproxy", ["haproxy", "-db", "-f", str(config)],
                             tmp_path / "haproxy.log")
    try:
        for port in ports.values():
            wait_for_port(port, process=haproxy)
    except BaseException:
        haproxy.stop()
        raise
    return haproxy, ports


def test_an_endpoint_is_verified_against_the_ca_bundle_botocore_is_given(
        dynalite: str, settings: Settings, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``AWS_CA_BUNDLE`` (a private CA's, or a TLS-inspecting proxy's) in place of the
    system's store, as botocore reads it."""
    haproxy, ports = tls_in_front(tmp_path, {"store": urlsplit(dynalite).netloc})
    try:
        monkeypatch.setenv("AWS_CA_BUNDLE", str(tmp_path / "ca.pem"))
        backend = DynamoBackend.from_settings(dataclasses.replace(
            settings, storage_backend="dynamodb",
            dynamodb_endpoint_url=f"https://127.0.0.1:{ports['store']}",
            dynamodb_table_prefix=f"ca{free_port()}_"))
        try:
            table = backend.table(SPEC)
            stored = table.put({"id": "a", "owner": "o"})
            assert table.get("a") == stored
        finally:
            backend.close()
    finally:
        haproxy.stop()


@pytest.fixture
def tls_proxy(proxy: Path, dynalite: str, tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str]]:
    """The ``proxy`` fixture's tinyproxy behind HAProxy's TLS, named ``https://`` by the
    environment, and dynalite behind HAProxy's TLS as an https endpoint, their CA trusted
    (``SSL_CERT_FILE``): (tinyproxy's log, the https endpoint)."""
    named = urlsplit(os.environ["https_proxy"])
    haproxy, ports = tls_in_front(tmp_path, {"proxy": f"127.0.0.1:{named.port}",
                                             "store": urlsplit(dynalite).netloc})
    try:
        login = f"{named.username}:{named.password}@" if named.username else ""
        for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
            monkeypatch.setenv(name, f"https://{login}127.0.0.1:{ports['proxy']}")
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
        yield proxy, f"https://127.0.0.1:{ports['store']}"
    finally:
        haproxy.stop()


@pytest.mark.parametrize("proxy", ["", "operator:s3cret"], indirect=True)
def test_an_https_proxy_is_reached_over_tls_for_either_endpoint(
        tls_proxy: tuple[Path, str], dynalite: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """An http endpoint's requests go to the proxy inside TLS; an https endpoint's TLS runs
    inside the proxy's, through its tunnel, and answers; the tunnel is kept for the next
    request. (tinyproxy closes a connection after each request it forwarded, while its answer
    says HTTP/1.1 with no ``close``: a request may meet that close and be retried.)"""
    monkeypatch.setattr(dynamo_wire, "backoff", lambda attempt: 0.0)
    log, https_endpoint = tls_proxy
    for endpoint in (dynalite, https_endpoint):
        client = wire_client(endpoint)
        try:
            for _ in range(2):
                with pytest.raises(ClientError, match="ResourceNotFoundException"):
                    client.describe_table(TableName="through_a_tls_proxy")
        finally:
            client.close()
    assert log.read_text().count(f"POST {dynalite}/ HTTP/1.1") == 2
    assert log.read_text().count(
        f"CONNECT {https_endpoint.removeprefix('https://')} HTTP/1.1") == 1


def test_an_https_proxy_whose_certificate_is_not_trusted_is_named_in_the_error(
        tls_proxy: tuple[Path, str], dynalite: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(Path(__file__)))  # no certificate in it
    client = wire_client(dynalite, max_attempts=1)
    try:
        with pytest.raises(SSLError, match=r"the proxy 127\.0\.0\.1:\d+: .*CERTIFICATE_VERIFY"):
            client.describe_table(TableName="never_created")
    finally:
        client.close()
