"""The edge shards: their nodes and pinned hostnames, with forms to add or replace a shard,
remove one, pin a hostname and unpin it. Every change names the registry revision the page
showed, so an admin never overwrites a change they did not see (edge/shard_registry.py)."""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

from flask import Blueprint, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from admin.shards_api import hostname_of, registry
from admin.web import admin, audit
from edge.shard_registry import ShardRefused
from edge.shards import ShardNode
from kit.web import find

bp = Blueprint("shards", __name__, url_prefix="/shards")
NOTICES = {"added": "Shard saved.",
           "removed": "Shard draining: its hostnames move off, then it goes.",
           "pinned": "Hostname pinned.",
           "unpinned": "Hostname unpinned: the hash assigns it again."}
Answer = Response | tuple[str, int]


@dataclasses.dataclass(frozen=True)
class ShardLoad:
    routes: int | None = None
    """Routes the shard serves (its size); None: not known."""
    moves: int | None = None
    """Hostnames moving onto or off the shard right now; None: not known."""


def kept_figures(names: list[str]) -> dict[str, ShardLoad]:
    """Each shard's kept route count (one read of its version item) and its moves in flight,
    onto it and off it (one read of the moves' counts): no scan."""
    services = admin().services
    moves = services.moves.in_flight() if services.moves is not None else {}
    return {name: ShardLoad(services.edge_shards.size(name),
                            sum(moves.get(name, {}).values())) for name in names}


@dataclasses.dataclass(frozen=True)
class ShardFigures:
    """Where the page gets each shard's routes and moves: the kept counts
    (:func:`kept_figures`) unless an app provides others (``provide(app, ShardFigures(f))``)."""

    figures: Callable[[list[str]], Mapping[str, ShardLoad]] = kept_figures

    def of(self, names: list[str]) -> dict[str, ShardLoad]:
        known = self.figures(names)
        return {name: known.get(name, ShardLoad()) for name in names}


def _page(error: str = "", form: Mapping[str, str] | None = None) -> str:
    revision, shard_set = registry().current()
    names = sorted(shard_set.shards)
    pinned = {name: sum(1 for s in shard_set.overrides.values() if s == name) for name in names}
    return render_template(
        "admin/shards.html", revision=revision, shards=shard_set.shards, names=names,
        pinned=pinned, overrides=sorted(shard_set.overrides.items()), draining=shard_set.draining,
        load=(find(ShardFigures) or ShardFigures()).of(names), error=error, form=form or {},
        notice=NOTICES.get(request.args.get("done", ""), ""))


@bp.get("")
def index() -> str:
    return _page()


def _revision() -> int | None:
    """The registry revision the page showed (none sent: no check); refused unless digits
    (ASCII: ``int`` takes no superscript '²', though ``isdigit`` says it is one)."""
    sent = request.form.get("revision", "").strip()
    if not sent:
        return None
    if not _number(sent, 20):
        raise ShardRefused("the page's revision is not a number: reload the page and try "
                           "again", "revision")
    return int(sent)


def _number(text: str, digits: int) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= digits


def parse_nodes(text: str) -> list[ShardNode]:
    """One node a line, ``HOST:HTTPS_PORT:HTTP_PORT`` (an IPv6 address in brackets)."""
    nodes = []
    for number, line in enumerate(filter(None, map(str.strip, text.splitlines())), 1):
        host, _, ports = line.rpartition("]") if line.startswith("[") else ("", "", line)
        parts = [host.lstrip("["), *ports.lstrip(":").split(":")] if host \
            else line.rsplit(":", 2)
        if len(parts) != 3 or not all(_number(p, 5) for p in parts[1:]):
            raise ShardRefused(f"line {number}: give a node as HOST:HTTPS_PORT:HTTP_PORT, "
                               "e.g. 10.0.1.5:8443:8080", "nodes")
        nodes.append(ShardNode(parts[0], int(parts[1]), int(parts[2])))
    return nodes


def _change(action: str, target: str, run: Callable[[], object], done: str,
            detail: str = "") -> Answer:
    """Run one change; refused, the page again with the sentence and what was typed."""
    try:
        run()
    except ShardRefused as exc:
        return _page(str(exc), request.form), 409 if exc.status == 409 else 400
    audit(f"shard {action}", target, detail)
    return redirect(url_for(".index", done=done), 303)


@bp.post("")
def add() -> Answer:
    name = request.form.get("name", "").strip()
    nodes = request.form.get("nodes", "")[:10_000]
    return _change("save", name, lambda: registry().put_shard(
        name, parse_nodes(nodes), _revision()), "added", " ".join(nodes.split()))


@bp.get("/remove")
def confirm_remove() -> Answer:
    return _confirm(request.args.get("name", ""))


def _confirm(name: str, wrong: bool = False, error: str = "", status: int = 409) -> Answer:
    revision, shard_set = registry().current()
    if name not in shard_set.shards:
        return _page(f"there is no shard {name[:64]}"), 404
    return render_template("admin/shard_remove.html", name=name, revision=revision,
                           others=len(shard_set.shards) - 1, wrong=wrong,
                           error=error), 400 if wrong else status if error else 200


@bp.post("/remove")
def remove() -> Answer:
    name = request.form.get("name", "").strip()
    if request.form.get("confirm", "").strip() != name:
        return _confirm(name, wrong=True)
    try:
        registry().remove_shard(name, _revision())
    except ShardRefused as exc:
        return _confirm(name, error=str(exc), status=exc.status) if exc.status != 404 \
            else (_page(str(exc)), 404)
    audit("shard remove", name)
    return redirect(url_for(".index", done="removed"), 303)


@bp.post("/pin")
def pin() -> Answer:
    raw, shard = request.form.get("hostname", "")[:1024], request.form.get("shard", "")
    return _change("pin", raw.strip(), lambda: registry().pin(hostname_of(raw), shard,
                                                              _revision()), "pinned", shard)


@bp.post("/unpin")
def unpin() -> Answer:
    raw = request.form.get("hostname", "")[:1024]
    return _change("unpin", raw.strip(), lambda: registry().unpin(hostname_of(raw),
                                                                  _revision()), "unpinned")
