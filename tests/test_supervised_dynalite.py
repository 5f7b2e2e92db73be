"""The chaos tests' dynalite (tests/supervised_dynalite.py): an outage cuts clients off, as a
network cut makes DynamoDB unreachable, and never leaves an index out of step with its table,
which a stopped dynalite does (and DynamoDB never)."""
from __future__ import annotations

import random
import socket
import threading
import time
from pathlib import Path

import boto3
from botocore.config import Config

from tests.supervised_dynalite import SupervisedDynalite

TABLE = "gate_test"


def _client(url: str):  # type: ignore[no-untyped-def]
    return boto3.client("dynamodb", endpoint_url=url, region_name="us-east-1",
                        aws_access_key_id="test", aws_secret_access_key="test",
                        config=Config(retries={"max_attempts": 0}, connect_timeout=1,
                                      read_timeout=5))


def test_outages_cut_writers_off_and_leave_every_index_in_step(tmp_path: Path) -> None:
    store = SupervisedDynalite(tmp_path)
    try:
        client = _client(store.url)
        client.create_table(
            TableName=TABLE, BillingMode="PAY_PER_REQUEST",
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"},
                                  {"AttributeName": "state", "AttributeType": "S"}],
            GlobalSecondaryIndexes=[{"IndexName": "state", "Projection": {"ProjectionType": "ALL"},
                                     "KeySchema": [{"AttributeName": "state", "KeyType": "HASH"}]}])
        while client.describe_table(TableName=TABLE)["Table"]["TableStatus"] != "ACTIVE":
            time.sleep(0.05)
        stop = threading.Event()
        outcomes = {"written": 0, "cut off": 0}
        lock = threading.Lock()

        def writer(n: int) -> None:
            rng = random.Random(n)
            while not stop.is_set():
                try:  # each write moves its item from one index key to another
                    client.put_item(TableName=TABLE, Item={"id": {"S": f"w{n}-{rng.randrange(20)}"},
                                                           "state": {"S": rng.choice("abc")}})
                    outcome = "written"
                except Exception:
                    outcome = "cut off"
                    time.sleep(0.02)
                with lock:
                    outcomes[outcome] += 1

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        outages = 0  # six at least, and writes between them however loaded the machine is
        while outages < 6 or (outcomes["written"] <= 100 and outages < 60):
            time.sleep(random.uniform(0.1, 0.4))
            store.outage(0.3)
            outages += 1
        stop.set()
        for thread in threads:
            thread.join(30)
        assert outcomes["written"] > 100 and outcomes["cut off"] > 0, outcomes

        scanned = client.scan(TableName=TABLE, ConsistentRead=True)["Items"]
        items = {item["id"]["S"]: item for item in scanned}
        listed: dict[str, list[dict]] = {}
        for state in "abc":
            for item in client.query(TableName=TABLE, IndexName="state",
                                     KeyConditionExpression="#s = :s",
                                     ExpressionAttributeNames={"#s": "state"},
                                     ExpressionAttributeValues={":s": {"S": state}})["Items"]:
                listed.setdefault(item["id"]["S"], []).append(item)
        assert items and {k: [v] for k, v in items.items()} == listed
        assert store.restarts == 0
    finally:
        store.stop()


def test_a_client_gone_in_the_middle_of_a_request_does_not_take_dynalite_down(
        tmp_path: Path) -> None:
    """dynalite dies of a request aborted before its body ended; behind the gate it never
    sees one."""
    store = SupervisedDynalite(tmp_path)
    try:
        for _ in range(3):
            sock = socket.create_connection(("127.0.0.1", store.port))
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            sock.close()
        time.sleep(1.0)
        assert store.restarts == 0
        assert "TableNames" in _client(store.url).list_tables()
    finally:
        store.stop()
