"""`edgectl shards` and the operator API behind it, against a live `edgectl serve` over TLS
(tests/test_operator_cli.py's): add, list, pin, unpin, remove, and the sentence each refusal
gets."""
from __future__ import annotations

import requests

from tests.conftest import wait_until
from tests.test_operator_cli import TOKEN, Served, served  # noqa: F401  (the fixture)


def _api(served: Served, method: str, path: str, json: object = None,
         token: str = TOKEN) -> requests.Response:
    return requests.request(method, f"{served.url}/api/v1/ops{path}", json=json, timeout=10,
                            verify=served.files["ca"],
                            headers={"Authorization": f"Bearer {token}"})


def test_shards_add_list_pin_unpin_and_remove(served: Served) -> None:  # noqa: F811
    assert "no shard configured" in served.run("shards", "list").stdout
    added = served.run("shards", "add", "eu-1", "--node", "10.0.1.5:8443:8080",
                       "--node", "[::1]:9443:9080")
    assert added.returncode == 0, added.stderr
    assert "shard eu-1: 2 node(s)" in added.stdout
    assert served.run("shards", "add", "us-1", "--node", "edge-us.internal:8443:8080"
                      ).returncode == 0
    pinned = served.run("shards", "pin", "Blog.Example.COM", "eu-1")
    assert pinned.returncode == 0 and "pinned to shard eu-1" in pinned.stdout, pinned.stderr
    listed = served.json("shards", "list")
    assert isinstance(listed, dict)
    assert [(s["name"], s["pinned"]) for s in listed["shards"]] == [("eu-1", 1), ("us-1", 0)]
    assert listed["shards"][0]["nodes"][1] == {"host": "::1", "https_port": 9443,
                                               "http_port": 9080}
    assert listed["overrides"] == [{"hostname": "blog.example.com", "shard": "eu-1"}]
    table = served.run("shards", "list").stdout
    assert "10.0.1.5:8443:8080" in table and "blog.example.com" in table

    refused = served.run("shards", "remove", "eu-1")
    assert refused.returncode != 0 and "1 hostname(s) are pinned to shard eu-1" in refused.stderr
    assert served.run("shards", "unpin", "blog.example.com").returncode == 0
    assert served.run("shards", "remove", "eu-1").returncode == 0

    def names() -> list[str]:
        after = served.json("shards", "list")
        assert isinstance(after, dict)
        return [s["name"] for s in after["shards"] if not s["draining"]]

    assert names() == ["us-1"], "eu-1 drains"
    wait_until(lambda: len(served.json("shards", "list")["shards"]) == 1, 60,  # type: ignore
               "the worker to delete eu-1 once nothing moves off it")
    assert served.run("shards", "remove", "us-1").returncode == 0


def test_refusals_are_sentences(served: Served) -> None:  # noqa: F811
    nowhere = served.run("shards", "pin", "news.example.org", "nope")
    assert nowhere.returncode != 0 and "no shard nope; add it first" in nowhere.stderr
    bad = served.run("shards", "add", "EU", "--node", "10.0.0.1:8443:8080")
    assert bad.returncode != 0 and "lowercase letters" in bad.stderr
    port = served.run("shards", "add", "eu-2", "--node", "10.0.0.1:99999:8080")
    assert port.returncode != 0 and "65535" in port.stderr
    assert "is not pinned" in served.run("shards", "unpin", "news.example.org").stderr
    assert served.run("shards", "add", "eu-2", "--node", "oops").returncode == 2


def test_the_api_refuses_bad_input_and_stale_changes(served: Served) -> None:  # noqa: F811
    node = {"host": "10.0.2.1", "https_port": 8443, "http_port": 8080}
    revision = _api(served, "GET", "/shards").json()["revision"]
    made = _api(served, "PUT", "/shards/api-1", json={"nodes": [node], "revision": revision})
    assert made.status_code == 200, made.text
    stale = _api(served, "PUT", "/shards/api-1", json={"nodes": [node], "revision": revision})
    assert stale.status_code == 409 and "changed the shards" in stale.json()["error"]
    typed = _api(served, "PUT", "/shards/api-1", json={"nodes": [{**node, "https_port": "1"}]})
    assert typed.status_code == 400 and typed.json()["field"] == "nodes.0.https_port"
    host = _api(served, "PUT", "/shard-overrides/not a host!", json={"shard": "api-1"})
    assert host.status_code == 400 and host.json()["field"] == "hostname"
    assert "is not a hostname" in host.json()["error"]
    assert _api(served, "DELETE", "/shards/nope").status_code == 404
    assert _api(served, "GET", "/shards", token="wrong").status_code == 401
    assert _api(served, "DELETE", "/shards/api-1").status_code == 200


def test_force_routers_names_the_version_it_forces(served: Served) -> None:  # noqa: F811
    """`edgectl shards force-routers VERSION` reaches the API and says why it is refused
    (tests/test_router_force.py forces a map with entries, and a router takes it)."""
    empty = served.run("shards", "force-routers", "0123456789abcdef")
    assert empty.returncode != 0 and "a router has nothing to take off" in empty.stderr
    assert served.run("shards", "force-routers").returncode == 2, "the version is asked for"
