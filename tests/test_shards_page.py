"""The dashboard's Shards page (admin/shards_views.py) on the control app: shards with their
nodes and pins, the forms that change them (signed in, CSRF), the sentence each refusal gets,
and the place the shard feeds' figures go."""
from __future__ import annotations

import re

from flask import Flask
from flask.testing import FlaskClient

from admin.shards_views import ShardFigures, ShardLoad
from admin.web import Admin
from control.wiring import Services
from edge.shards import ShardNode
from kit.web import provide, provided
from tests.test_admin_pages import app, csrf, login, services  # noqa: F401  (fixtures)


def signed_in(app: Flask) -> tuple[FlaskClient, dict[str, str]]:  # noqa: F811
    client = app.test_client()
    assert login(client).status_code == 303
    return client, fields(client)


def fields(client: FlaskClient) -> dict[str, str]:
    """The hidden fields of the page's forms as it shows now: CSRF token and revision."""
    page = client.get("/admin/shards").get_data(as_text=True)
    revision = re.search(r'name="revision" value="(\d+)"', page)
    assert revision is not None
    return {"csrf_token": csrf(client, "/admin/shards"), "revision": revision.group(1)}


def test_the_page_without_shards_says_what_that_means(app: Flask) -> None:  # noqa: F811
    client, _ = signed_in(app)
    page = client.get("/admin/shards").get_data(as_text=True)
    assert "No shard configured: one default shard, no router." in page
    assert 'href="/admin/shards"' in client.get("/admin/").get_data(as_text=True)


def test_add_pin_unpin_and_remove_through_the_forms(app: Flask,  # noqa: F811
                                                    services: Services) -> None:  # noqa: F811
    client, form = signed_in(app)
    added = client.post("/admin/shards", data={**form, "name": "eu-1",
                                               "nodes": "10.0.1.5:8443:8080\n[::1]:9443:9080\n"})
    assert added.status_code == 303, added.get_data(as_text=True)
    assert services.shards is not None
    assert services.shards.load().shards["eu-1"] == (ShardNode("10.0.1.5", 8443, 8080),
                                                     ShardNode("::1", 9443, 9080))
    form = fields(client)
    pinned = client.post("/admin/shards/pin", data={**form, "hostname": "Blog.Example.com",
                                                    "shard": "eu-1"})
    assert pinned.status_code == 303
    page = client.get("/admin/shards?done=pinned").get_data(as_text=True)
    assert "Hostname pinned." in page and "blog.example.com" in page
    assert "10.0.1.5:8443:8080" in page
    assert 'class="shard-routes">0<' in page and 'class="shard-moves">0<' in page
    form = fields(client)
    confirm = client.get("/admin/shards/remove?name=eu-1").get_data(as_text=True)
    assert "It is the last shard" in confirm
    wrong = client.post("/admin/shards/remove", data={**form, "name": "eu-1", "confirm": "eu"})
    assert wrong.status_code == 400 and "does not match" in wrong.get_data(as_text=True)
    refused = client.post("/admin/shards/remove", data={**form, "name": "eu-1",
                                                        "confirm": "eu-1"})
    assert refused.status_code == 409
    assert "1 hostname(s) are pinned to shard eu-1" in refused.get_data(as_text=True)
    assert client.post("/admin/shards/unpin", data={**form, "hostname": "blog.example.com"}
                       ).status_code == 303
    form = fields(client)
    assert client.post("/admin/shards/remove", data={**form, "name": "eu-1", "confirm": "eu-1"}
                       ).status_code == 303
    assert "(draining)" in client.get("/admin/shards").get_data(as_text=True)
    assert services.moves is not None
    services.moves.tick()  # the worker's step: nothing to move off it, so it goes
    assert client.get("/admin/shards/remove?name=eu-1").status_code == 404
    assert services.shards.load().shards == {}
    audit = provided(app, Admin).audit
    actions = [entry["action"] for entry in audit.day(audit.today()).items]
    assert {"shard save", "shard pin", "shard unpin", "shard remove"} <= set(actions)


def test_refusals_show_the_sentence_and_keep_what_was_typed(app: Flask) -> None:  # noqa: F811
    client, form = signed_in(app)
    bad = client.post("/admin/shards", data={**form, "name": "eu-1", "nodes": "10.0.0.1:8443"})
    assert bad.status_code == 400
    text = bad.get_data(as_text=True)
    assert "line 1: give a node as HOST:HTTPS_PORT:HTTP_PORT" in text and "10.0.0.1:8443" in text
    port = client.post("/admin/shards", data={**form, "name": "eu-1",
                                              "nodes": "10.0.0.1:8443:99999"})
    assert port.status_code == 400 and "1 to 65535" in port.get_data(as_text=True)
    assert client.post("/admin/shards", data={**form, "name": "eu-1",
                                              "nodes": "10.0.0.1:8443:8080"}).status_code == 303
    stale = client.post("/admin/shards", data={**form, "name": "eu-2",
                                               "nodes": "10.0.0.2:8443:8080"})
    assert stale.status_code == 409 and "changed the shards" in stale.get_data(as_text=True)
    form = fields(client)
    host = client.post("/admin/shards/pin", data={**form, "hostname": "no such host!",
                                                  "shard": "eu-1"})
    assert host.status_code == 400 and "is not a hostname" in host.get_data(as_text=True)
    assert client.post("/admin/shards/pin", data={"revision": form["revision"],
                                                  "hostname": "a.example.com", "shard": "eu-1"}
                       ).status_code == 403  # no CSRF token


def test_the_feeds_figures_show_where_they_are_given(app: Flask,  # noqa: F811
                                                      services: Services) -> None:  # noqa: F811
    assert services.shards is not None
    services.shards.put_shard("eu-1", [ShardNode("10.0.0.1", 8443, 8080)])
    provide(app, ShardFigures(lambda names: {"eu-1": ShardLoad(routes=1234, moves=7)}))
    client, _ = signed_in(app)
    page = client.get("/admin/shards").get_data(as_text=True)
    assert re.search(r'class="shard-routes">1234<', page)
    assert re.search(r'class="shard-moves">7<', page)
