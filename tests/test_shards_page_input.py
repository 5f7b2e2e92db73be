"""What the Shards page (admin/shards_views.py) takes as a number: ASCII digits only. Python's
``isdigit`` also says yes to superscripts ('²') and other Unicode digits that ``int`` refuses,
so a form could reach ``int`` with one and answer 500; each such field is a 400 that says what
is wrong, and the page shows it."""
from __future__ import annotations

from flask import Flask

from control.wiring import Services
from edge.shards import ShardNode
from tests.test_admin_pages import app, csrf, login, services  # noqa: F401  (fixtures)
from tests.test_shards_page import signed_in


def test_a_revision_or_port_of_unicode_digits_is_a_400_that_says_so(
        app: Flask, services: Services) -> None:  # noqa: F811
    assert services.shards is not None
    services.shards.put_shard("eu-1", [ShardNode("10.0.1.5", 8443, 8080)])
    client, form = signed_in(app)
    app.config["PROPAGATE_EXCEPTIONS"] = False  # an exception is the 500 a visitor would get
    for revision in ("²", "¹²³", "٣", "-1", "1.5", "9" * 40):
        for path, data in (("/admin/shards", {"name": "eu-2", "nodes": "10.0.1.6:8443:8080"}),
                           ("/admin/shards/pin", {"hostname": "a.example.com", "shard": "eu-1"}),
                           ("/admin/shards/unpin", {"hostname": "a.example.com"}),
                           ("/admin/shards/remove", {"name": "eu-1", "confirm": "eu-1"})):
            answer = client.post(path, data={**form, **data, "revision": revision})
            assert answer.status_code == 400, (path, revision, answer.status_code)
            assert "revision is not a number" in answer.get_data(as_text=True), (path, revision)
    for nodes in ("10.0.1.6:8443:8²", "10.0.1.6:٨٤٤٣:8080", "[::1]:9443:9⁰80"):
        answer = client.post("/admin/shards", data={**form, "name": "eu-2", "nodes": nodes})
        assert answer.status_code == 400, (nodes, answer.status_code)
        assert "give a node as HOST:HTTPS_PORT:HTTP_PORT" in answer.get_data(as_text=True)
    assert sorted(services.shards.load().shards) == ["eu-1"]
    assert services.shards.load().overrides == {}
    added = client.post("/admin/shards", data={**form, "name": "eu-2",
                                               "nodes": "[::1]:9443:9080"})
    assert added.status_code == 303, "ASCII digits still do"
