"""The control app's URL rules compile their builders at the first URL built (kit.web.LazyRule)
and build the URLs werkzeug's own rules build."""
from __future__ import annotations

from flask import Flask, url_for
from werkzeug.routing import Rule

from admin_app import create_app
from control.wiring import Services
from kit.web import LazyRule


def _app(rule_class: type[Rule]) -> Flask:
    app = Flask(__name__)
    app.url_rule_class = rule_class
    app.add_url_rule("/d/<hostname>/events/<int:page>", "events", lambda **_: "")

    def file(name: str) -> str:
        return name
    app.add_url_rule("/f/", "file", file, defaults={"name": "index"})
    app.add_url_rule("/f/<path:name>", "file", file)
    app.add_url_rule("/plain", "plain", lambda: "", subdomain="admin")
    app.config["SERVER_NAME"] = "example.test"
    return app


def _urls(app: Flask) -> list[str]:
    with app.test_request_context():
        return [url_for("events", hostname="a.example.com", page=2),
                url_for("events", hostname="b é", page=3, q="x y", next="/a?b"),
                url_for("file"), url_for("file", name="a/b.css", v=1),
                url_for("plain", _external=True), url_for("plain", _anchor="top", x="1")]


def test_lazy_rules_build_what_werkzeugs_build_and_compile_once() -> None:
    lazy = _app(LazyRule)
    [rule] = lazy.url_map._rules_by_endpoint["events"]
    before = rule._build_unknown
    assert _urls(lazy) == _urls(_app(Rule))
    assert rule._build_unknown is not before, "compiled at the first URL, then kept"
    kept = rule._build_unknown
    _urls(lazy)
    assert rule._build_unknown is kept


def test_the_control_app_builds_every_url_it_serves(services: Services) -> None:
    """Each rule of the control app builds a URL (with a query string) that it matches back."""
    app = create_app(services)
    assert app.url_rule_class is LazyRule
    urls = app.url_map.bind("localhost")
    with app.test_request_context():
        for rule in app.url_map.iter_rules():
            values = {name: "7" for name in rule.arguments}
            url = url_for(rule.endpoint, **values, extra="y")
            path, _, query = url.partition("?")
            method = sorted((rule.methods or {"GET"}) - {"HEAD", "OPTIONS"})[0]
            assert urls.match(path, method=method) == (rule.endpoint, {
                name: rule._converters[name].to_python("7") for name in rule.arguments}), url
            assert query == "extra=y", url
